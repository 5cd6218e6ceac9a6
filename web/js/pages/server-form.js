// SPDX-License-Identifier: Apache-2.0
// Add or edit a server (admin): password or key (pasted or from a file),
// passphrase; test the connection; delete (409 explained). Others see the
// server's details and may test it (operator).

import { del, get, patch, post } from "../api.js";
import { h, nextId, replace } from "../dom.js";
import { fmtTime } from "../format.js";
import {
  busy, clearFieldErrors, confirmDialog, field, input, pageHead, showFieldErrors, splitTags, tagList, toast, toastError,
} from "../ui.js";
import { testButton } from "./server-test.js";

export async function render({ main, params, signal, can, go }) {
  const id = params[0] ? Number(params[0]) : null;
  const srv = id ? await get(`/api/v1/servers/${id}`, null, signal) : null;
  document.title = `${srv ? srv.name : "Add server"} · tsubame-ci`;
  const crumbs = h("div", { class: "crumbs" }, h("a", { href: "#/servers", text: "Servers" }), " / ");
  if (!can("admin")) {
    main.append(crumbs, details(srv, can));
    return;
  }
  const form = serverForm(srv, go);
  const aside = srv ? sideCard(srv, can, go) : null;
  main.append(crumbs,
    pageHead(srv ? `Edit ${srv.name}` : "Add server", srv ? `${srv.username}@${srv.host}:${srv.port}` : "An SSH target for jobs."),
    h("div", { class: "grid two" }, h("section", { class: "card" }, form), aside));
  form.elements.name.focus();
}

function details(srv, can) {
  const out = h("div");
  return h("div", null,
    pageHead(srv.name, srv.description || null),
    h("section", { class: "card" },
      h("dl", { class: "facts" },
        h("dt", { text: "Address" }), h("dd", { class: "mono", text: `${srv.username}@${srv.host}:${srv.port}` }),
        h("dt", { text: "Authentication" }), h("dd", { text: srv.auth_method }),
        h("dt", { text: "Runs at once" }), h("dd", { text: `at most ${srv.max_concurrent} target${srv.max_concurrent === 1 ? "" : "s"}, over all jobs` }),
        h("dt", { text: "Tags" }), h("dd", null, tagList(srv.tags)),
        h("dt", { text: "Host key" }), h("dd", { class: "fingerprint", text: srv.host_key ? `${srv.host_key.algorithm} ${srv.host_key.fingerprint_sha256}` : "not pinned yet" })),
      can("operator") ? h("div", { class: "form-actions" }, testButton(srv, out, { canTrust: false })) : null, out));
}

function serverForm(srv, go) {
  const editing = Boolean(srv);
  const authName = nextId("auth");
  const radio = (value, label) => {
    const r = h("input", { type: "radio", name: "auth_method", value, checked: (srv?.auth_method || "password") === value, id: nextId("r") });
    return h("label", { class: "check", for: r.id }, r, h("span", { text: label }));
  };
  const keepHint = (has) => (editing && has ? "Set. Leave empty to keep it; type to replace it." : null);
  const password = input("password", "", { type: "password", autocomplete: "new-password" });
  const privateKey = h("textarea", { name: "private_key", class: "code", rows: 6, spellcheck: "false",
    placeholder: editing && srv.has_private_key ? "Set. Paste a new key to replace it." : "-----BEGIN OPENSSH PRIVATE KEY-----" });
  const keyFile = h("input", { type: "file", name: "key_file", accept: ".pem,.key,text/plain,application/x-pem-file" });
  keyFile.addEventListener("change", async () => {
    const file = keyFile.files[0];
    if (!file) return;
    if (file.size > 64 * 1024) {
      toast("That file is too large to be a private key.", "error");
      return;
    }
    privateKey.value = await file.text();
    keyFile.value = "";
    toast(`Key read from ${file.name}.`);
  });
  const passphrase = input("passphrase", "", { type: "password", autocomplete: "off" });
  const passwordBox = h("div", { "data-auth": "password" }, field("Password", password, keepHint(srv?.has_password)));
  const keyBox = h("div", { "data-auth": "key", class: "form" },
    field("Private key (ed25519 or ECDSA; PEM or OpenSSH)", privateKey, keepHint(srv?.has_private_key)),
    field("…or read it from a file", keyFile),
    field("Passphrase (if the key has one)", passphrase, keepHint(srv?.has_passphrase)));

  const form = h("form", { class: "form", novalidate: true },
    h("p", { class: "form-error", role: "alert", "data-ref": "form-error", tabindex: "-1", hidden: true }),
    field("Name", input("name", srv?.name, { required: true, maxlength: 100, autocomplete: "off" })),
    h("div", { class: "row" },
      field("Host", input("host", srv?.host, { required: true, spellcheck: "false", autocapitalize: "none" }), "Name or IP address."),
      field("Port", input("port", srv?.port ?? 22, { type: "number", min: 1, max: 65535, required: true })),
      field("Username", input("username", srv?.username, { required: true, spellcheck: "false", autocapitalize: "none" }))),
    h("fieldset", { "data-field": "auth_method" }, h("legend", { text: "Authentication" }),
      h("div", { class: "inline", role: "radiogroup", "aria-labelledby": authName }, radio("password", "With a password"), radio("key", "With a private key")),
      passwordBox, keyBox),
    field("Runs at once", input("max_concurrent", srv?.max_concurrent ?? 4, { type: "number", min: 1, max: 1000, required: true }),
      "Targets that may run on this server at the same time, over all jobs; more wait (“server busy”)."),
    field("Description", h("textarea", { name: "description", rows: 2, maxlength: 2000, value: srv?.description || "" })),
    field("Tags", input("tags", (srv?.tags || []).join(", "), { spellcheck: "false" }), "Separated by commas or spaces, e.g. prod, web."),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "primary", text: editing ? "Save changes" : "Add server" }),
      h("a", { class: "button", href: editing ? `#/servers/${srv.id}` : "#/servers", text: "Cancel" })));
  form.querySelector("legend").id = authName;

  const syncAuth = () => {
    const method = form.elements.auth_method.value;
    passwordBox.hidden = method !== "password";
    keyBox.hidden = method !== "key";
  };
  form.addEventListener("change", (e) => e.target.name === "auth_method" && syncAuth());
  syncAuth();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const body = collect(form, srv);
    try {
      const saved = await busy(form.querySelector('[type="submit"]'), () => (editing
        ? patch(`/api/v1/servers/${srv.id}`, body) : post("/api/v1/servers", body)));
      toast(editing ? `Saved ${saved.name}.` : `Added ${saved.name}. Test the connection to pin its host key.`);
      go(`/servers/${saved.id}`, null, { replaceEntry: !editing });
    } catch (err) {
      showFieldErrors(form, err);
    }
  });
  return form;
}

function collect(form, srv) {
  const f = form.elements;
  const body = {
    name: f.name.value.trim(),
    host: f.host.value.trim(),
    port: Number(f.port.value),
    username: f.username.value.trim(),
    auth_method: f.auth_method.value,
    description: f.description.value,
    tags: splitTags(f.tags.value),
  };
  if (!f.port.value || !Number.isInteger(body.port)) body.port = f.port.value; // the API explains
  body.max_concurrent = Number(f.max_concurrent.value);
  if (!f.max_concurrent.value || !Number.isInteger(body.max_concurrent)) body.max_concurrent = f.max_concurrent.value;
  if (body.auth_method === "password") {
    if (f.password.value || !srv) body.password = f.password.value;
  } else {
    if (f.private_key.value.trim() || !srv) body.private_key = f.private_key.value;
    if (f.passphrase.value) body.passphrase = f.passphrase.value;
  }
  return body;
}

function sideCard(srv, can, go) {
  const out = h("div");
  const hostKey = h("dd", { class: "fingerprint" });
  const showKey = (key) => replace(hostKey, key ? `${key.algorithm} ${key.fingerprint_sha256}` : "not pinned yet (pinned on the first connection)");
  showKey(srv.host_key);
  const remove = h("button", { type: "button", class: "ghost-danger", text: "Delete server" });
  remove.addEventListener("click", async () => {
    const ok = await confirmDialog({ title: `Delete ${srv.name}?`, message: "Jobs can no longer run on it. Past executions keep its name.", ok: "Delete server" });
    if (!ok) return;
    try {
      await busy(remove, () => del(`/api/v1/servers/${srv.id}`));
      toast(`Deleted ${srv.name}.`);
      go("/servers", null, { replaceEntry: true });
    } catch (err) {
      if (err.status === 409) {
        toast(`${srv.name} cannot be deleted while jobs target it: remove it from those jobs first. (${err.message})`, "error");
      } else {
        toastError(err);
      }
    }
  });
  const refresh = async () => {
    try {
      showKey((await get(`/api/v1/servers/${srv.id}`)).host_key);
    } catch (err) {
      toastError(err);
    }
  };
  return h("section", { class: "card", "aria-labelledby": "srv-conn" },
    h("h2", { id: "srv-conn", text: "Connection" }),
    h("dl", { class: "facts" },
      h("dt", { text: "Host key" }), hostKey,
      h("dt", { text: "Created" }), h("dd", { text: fmtTime(srv.created_at) }),
      h("dt", { text: "Updated" }), h("dd", { text: fmtTime(srv.updated_at) })),
    h("div", { class: "form-actions test-result" }, testButton(srv, out, { canTrust: can("admin"), onChange: refresh }),
      h("a", { class: "button", href: `#/executions?server_id=${srv.id}`, text: "Executions on this server" })),
    out,
    h("hr"),
    h("p", { class: "muted", text: "Deleting is refused while a job targets this server." }),
    remove);
}
