// SPDX-License-Identifier: Apache-2.0
// Name/value rows for environment variables, and the write-only secret
// variables (shown as set; replace or remove, never read back).

import { h, nextId } from "../dom.js";

/**
 * Editable NAME=value rows.
 * @returns {{node: HTMLElement, value: () => Object<string,string>}}
 */
export function envEditor(initial, { name = "env", addLabel = "Add variable", legend = "Environment variables" } = {}) {
  const rows = h("div", { class: "form" });
  const addRow = (k = "", v = "") => {
    const key = h("input", { type: "text", value: k, placeholder: "NAME", "aria-label": "Variable name",
      spellcheck: "false", autocapitalize: "none", class: "mono" });
    const value = h("input", { type: "text", value: v, placeholder: "value", "aria-label": `Value`, spellcheck: "false" });
    const row = h("div", { class: "kv-row" }, key, value,
      h("button", { type: "button", class: "small", text: "Remove", "aria-label": "Remove this variable",
        on: { click: () => row.remove() } }));
    rows.appendChild(row);
    return key;
  };
  for (const [k, v] of Object.entries(initial || {})) addRow(k, v);
  const add = h("button", { type: "button", class: "small", text: addLabel, on: { click: () => addRow().focus() } });
  const node = h("fieldset", { "data-field": name }, h("legend", { text: legend }), rows, h("div", null, add));
  return {
    node,
    value() {
      const out = {};
      for (const row of rows.children) {
        const [key, value] = row.querySelectorAll("input");
        const k = key.value.trim();
        if (!k) continue;
        key.dataset.field = `${name}.${k}`;
        out[k] = value.value;
      }
      return out;
    },
  };
}

/**
 * Secret variables: stored names with "set" and Replace/Remove; new ones.
 * value() gives the secret_env of a create (strings) or PATCH (string = set, null = remove).
 */
export function secretEditor(names) {
  const stored = h("div", { class: "form" });
  const added = h("div", { class: "form" });
  const removed = new Set();
  const replaced = new Map();
  for (const n of names || []) {
    const status = h("span", { class: "badge on plain", text: "set" });
    const slot = h("span");
    const replaceBtn = h("button", { type: "button", class: "small", text: "Replace", "aria-label": `Replace secret ${n}` });
    const removeBtn = h("button", { type: "button", class: "small ghost-danger", text: "Remove", "aria-label": `Remove secret ${n}` });
    replaceBtn.addEventListener("click", () => {
      const id = nextId("s");
      const input = h("input", { type: "password", id, autocomplete: "off", "aria-label": `New value of ${n}`, placeholder: "new value" });
      replaced.set(n, input);
      removed.delete(n);
      slot.replaceChildren(input);
      status.textContent = "will be replaced";
      input.focus();
    });
    removeBtn.addEventListener("click", () => {
      removed.add(n);
      replaced.delete(n);
      slot.replaceChildren();
      status.textContent = "will be removed";
      status.className = "badge off plain";
    });
    stored.appendChild(h("div", { class: "kv-row" }, h("code", { text: n }), h("span", { class: "inline" }, status, slot),
      h("span", { class: "inline" }, replaceBtn, removeBtn)));
  }
  const addRow = () => {
    const key = h("input", { type: "text", placeholder: "NAME", "aria-label": "Secret name", class: "mono", spellcheck: "false", autocapitalize: "none" });
    const value = h("input", { type: "password", placeholder: "value", "aria-label": "Secret value", autocomplete: "off" });
    const row = h("div", { class: "kv-row" }, key, value,
      h("button", { type: "button", class: "small", text: "Remove", "aria-label": "Remove this secret", on: { click: () => row.remove() } }));
    added.appendChild(row);
    return key;
  };
  const node = h("fieldset", { "data-field": "secret_env" },
    h("legend", { text: "Secret variables" }),
    h("p", { class: "hint muted", text: "Write-only: values are never shown again and are masked as *** in logs." }),
    names?.length ? stored : null, added,
    h("div", null, h("button", { type: "button", class: "small", text: "Add secret", on: { click: () => addRow().focus() } })));
  return {
    node,
    value() {
      const out = {};
      for (const n of removed) out[n] = null;
      for (const [n, input] of replaced) out[n] = input.value;
      for (const row of added.children) {
        const [key, value] = row.querySelectorAll("input");
        const k = key.value.trim();
        if (!k) continue;
        key.dataset.field = `secret_env.${k}`;
        out[k] = value.value;
      }
      return out;
    },
  };
}
