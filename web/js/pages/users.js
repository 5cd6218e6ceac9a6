// SPDX-License-Identifier: Apache-2.0
// Users (admin): create, change role, reset password, disable, delete.

import { del, get, patch, post } from "../api.js";
import { h, replace } from "../dom.js";
import { fmtAgo, fmtTime } from "../format.js";
import {
  busy, clearFieldErrors, confirmDialog, empty, field, input, loading, openDialog, pageHead, select, showFieldErrors, toast, toastError,
} from "../ui.js";

const ROLES = [["viewer", "viewer (reads everything but secrets)"], ["operator", "operator (also edits and runs jobs)"], ["admin", "admin (also servers, users, audit)"]];

export async function render({ main, signal, user, reload }) {
  document.title = "Users · tsubame-ci";
  const list = h("div", null, loading("Loading users…"));
  const form = h("form", { class: "form", novalidate: true },
    h("p", { class: "form-error", role: "alert", "data-ref": "form-error", tabindex: "-1", hidden: true }),
    h("div", { class: "row" },
      field("Username", input("username", "", { autocomplete: "off", spellcheck: "false", autocapitalize: "none", required: true })),
      field("Password", input("password", "", { type: "password", autocomplete: "new-password", required: true }), "At least 10 characters."),
      field("Role", select("role", ROLES, "viewer"))),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary", text: "Create user" })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const f = form.elements;
    try {
      const made = await busy(form.querySelector("button[type=submit]"), () => post("/api/v1/users",
        { username: f.username.value.trim(), password: f.password.value, role: f.role.value }));
      toast(`Created ${made.username} (${made.role}).`);
      reload();
    } catch (err) {
      showFieldErrors(form, err);
    }
  });
  main.append(pageHead("Users", "Who may sign in, and what they may do."),
    h("section", { class: "card", "aria-labelledby": "new-user" }, h("h2", { id: "new-user", text: "New user" }), form),
    h("section", { class: "card", "aria-labelledby": "all-users" }, h("h2", { id: "all-users", text: "All users" }), list));

  const users = [];
  let cursor = null;
  do {
    const page = await get("/api/v1/users", { limit: 200, cursor }, signal);
    users.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  if (!users.length) {
    replace(list, empty("No users yet."));
    return;
  }
  replace(list, h("div", { class: "table-wrap" }, h("table", null,
    h("caption", { class: "sr-only", text: "Users" }),
    h("thead", null, h("tr", null, ["User", "Role", "Status", "Created", "Actions"].map((t, i) => h("th", { class: i === 3 ? "hide-sm" : null, text: t })))),
    h("tbody", null, users.map((u) => userRow(u, user, reload))))));
}

function userRow(u, me, reload) {
  const self = u.id === me.id;
  const role = select("role", ROLES.map(([v]) => [v, v]), u.role, { "aria-label": `Role of ${u.username}`, disabled: self });
  role.addEventListener("change", async () => {
    try {
      await patch(`/api/v1/users/${u.id}`, { role: role.value });
      toast(`${u.username} is now ${role.value}.`);
    } catch (err) {
      role.value = u.role;
      toastError(err);
    }
  });
  const toggle = h("button", { type: "button", class: "small", text: u.disabled ? "Enable" : "Disable", disabled: self,
    "aria-label": `${u.disabled ? "Enable" : "Disable"} ${u.username}` });
  toggle.addEventListener("click", async () => {
    if (!u.disabled && !await confirmDialog({ title: `Disable ${u.username}?`, message: "Their sessions end and their API tokens stop working.", ok: "Disable" })) return;
    try {
      await busy(toggle, () => patch(`/api/v1/users/${u.id}`, { disabled: !u.disabled }));
      toast(`${u.username} ${u.disabled ? "enabled" : "disabled"}.`);
      reload();
    } catch (err) {
      toastError(err);
    }
  });
  const reset = h("button", { type: "button", class: "small", text: "Set password", "aria-label": `Set the password of ${u.username}` });
  reset.addEventListener("click", () => {
    const pw = input("password", "", { type: "password", autocomplete: "new-password" });
    openDialog(`New password for ${u.username}`, h("div", { class: "form" },
      h("p", { class: "form-error", role: "alert", "data-ref": "form-error", tabindex: "-1", hidden: true }),
      field("Password", pw, "At least 10 characters.")), {
      okText: "Set password",
      onSubmit: async (form) => {
        try {
          await patch(`/api/v1/users/${u.id}`, { password: pw.value });
          toast(`Password of ${u.username} changed.`);
          return true;
        } catch (err) {
          showFieldErrors(form, err);
          return false;
        }
      },
    });
  });
  const remove = h("button", { type: "button", class: "small ghost-danger", text: "Delete", disabled: self, "aria-label": `Delete ${u.username}` });
  remove.addEventListener("click", async () => {
    if (!await confirmDialog({ title: `Delete ${u.username}?`, message: "Their sessions and API tokens are removed. This cannot be undone.", ok: "Delete user" })) return;
    try {
      await busy(remove, () => del(`/api/v1/users/${u.id}`));
      toast(`Deleted ${u.username}.`);
      reload();
    } catch (err) {
      toastError(err);
    }
  });
  return h("tr", null,
    h("td", { class: "name-cell" }, u.username, self ? h("span", { class: "muted", text: " (you)" }) : null),
    h("td", null, role),
    h("td", null, h("span", { class: ["badge", "plain", u.disabled ? "off" : "on"], text: u.disabled ? "disabled" : "active" })),
    h("td", { class: "hide-sm", title: fmtTime(u.created_at), text: fmtAgo(u.created_at) }),
    h("td", null, h("div", { class: "actions" }, toggle, reset, remove)));
}
