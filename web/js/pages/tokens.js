// SPDX-License-Identifier: Apache-2.0
// API tokens: create (the token is shown once, with a copy button), list, revoke.

import { del, get, post } from "../api.js";
import { h, replace } from "../dom.js";
import { fmtAgo, fmtTime } from "../format.js";
import { busy, clearFieldErrors, confirmDialog, empty, field, input, loading, pageHead, showFieldErrors, toast, toastError } from "../ui.js";

export async function render({ main, signal, can }) {
  document.title = "API tokens · tsubame-ci";
  const shown = h("div", { "aria-live": "polite" });
  const list = h("div", null, loading("Loading tokens…"));
  const form = h("form", { class: "form", novalidate: true },
    h("p", { class: "form-error", role: "alert", "data-ref": "form-error", tabindex: "-1", hidden: true }),
    field("Token name", input("name", "", { autocomplete: "off", placeholder: "e.g. deploy script", required: true }),
      "Scripts send it as Authorization: Bearer TOKEN. It acts with your role."),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary", text: "Create token" })), shown);
  const loadList = () => load(list, signal, can).catch(toastError);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    try {
      const t = await busy(form.querySelector("button[type=submit]"), () => post("/api/v1/tokens", { name: form.elements.name.value.trim() }));
      form.elements.name.value = "";
      replace(shown, secretBox(t));
      loadList();
    } catch (err) {
      showFieldErrors(form, err);
    }
  });
  main.append(pageHead("API tokens", can("admin") ? "Tokens of every user (you are an admin)." : "Your tokens for scripts and the CLI."),
    h("section", { class: "card", "aria-labelledby": "new-token" }, h("h2", { id: "new-token", text: "New token" }), form),
    h("section", { class: "card", "aria-labelledby": "tokens" }, h("h2", { id: "tokens", text: "Tokens" }), list));
  await load(list, signal, can);
}

function secretBox(t) {
  const code = h("code", { text: t.token });
  const copy = h("button", { type: "button", class: "small", text: "Copy" });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(t.token);
      copy.textContent = "Copied";
      toast("Token copied to the clipboard.");
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      toast("Copying was refused: the token is selected, press Ctrl+C.", "error");
    }
  });
  return h("div", { class: "notice warn" },
    h("strong", { text: `Token "${t.name}" created. Copy it now: it is not shown again.` }),
    h("div", { class: "secret-box" }, code, copy));
}

async function load(list, signal, can) {
  const items = [];
  let cursor = null;
  do {
    const page = await get("/api/v1/tokens", { limit: 200, cursor }, signal);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  if (!items.length) {
    replace(list, empty("No tokens yet. Create one above for a script or the CLI."));
    return;
  }
  replace(list, h("div", { class: "table-wrap" }, h("table", null,
    h("caption", { class: "sr-only", text: "API tokens" }),
    h("thead", null, h("tr", null, ["Name", can("admin") ? "User" : null, "Created", "Last used", ""].filter((x) => x !== null).map((t) => h("th", { text: t })))),
    h("tbody", null, items.map((t) => {
      const revoke = h("button", { type: "button", class: "small ghost-danger", text: "Revoke", "aria-label": `Revoke token ${t.name}` });
      revoke.addEventListener("click", async () => {
        if (!await confirmDialog({ title: `Revoke ${t.name}?`, message: "Scripts using it stop working at once.", ok: "Revoke token" })) return;
        try {
          await busy(revoke, () => del(`/api/v1/tokens/${t.id}`));
          toast(`Revoked ${t.name}.`);
          revoke.closest("tr").remove();
        } catch (err) {
          toastError(err);
        }
      });
      return h("tr", null,
        h("td", { class: "name-cell", text: t.name }),
        can("admin") ? h("td", { text: t.username }) : null,
        h("td", { title: fmtTime(t.created_at), text: fmtAgo(t.created_at) }),
        h("td", { title: fmtTime(t.last_used_at), text: t.last_used_at ? fmtAgo(t.last_used_at) : "never" }),
        h("td", null, revoke));
    })))));
}
