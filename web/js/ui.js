// SPDX-License-Identifier: Apache-2.0
// Shared pieces of every screen: toasts, the confirmation dialog, field
// errors from a 422, loading and empty states, status badges, form fields.

import { isAbort } from "./api.js";
import { h, nextId, ref, template } from "./dom.js";
import { statusLabel } from "./format.js";

// ------------------------------------------------------------------ toasts

/** A short message in the corner; errors stay until dismissed or 10 s. */
export function toast(message, kind = "ok") {
  const region = document.querySelector('[data-ref="toasts"]');
  const close = h("button", { type: "button", "aria-label": "Dismiss", text: "×" });
  const node = h("div", { class: ["toast", kind === "error" && "error"], role: kind === "error" ? "alert" : null },
    h("span", { class: "msg", text: message }), close);
  const remove = () => node.remove();
  close.addEventListener("click", remove);
  region.appendChild(node);
  setTimeout(remove, kind === "error" ? 10000 : 4000);
  return node;
}

/** Reports a failed call (the server's problem detail); silent for aborts and 401 (sign-in takes over). */
export function toastError(err, prefix = "") {
  if (isAbort(err) || err?.status === 401) return;
  console.error(err);
  toast(prefix ? `${prefix}: ${err.message}` : err.message, "error");
}

// ------------------------------------------------------------------ confirm

/**
 * Asks before something destructive. Resolves true when confirmed.
 * @param {{title: string, message: string, ok?: string, danger?: boolean}} o
 */
export function confirmDialog({ title, message, ok = "Delete", danger = true }) {
  const dialog = template("tpl-confirm");
  ref(dialog, "title").textContent = title;
  ref(dialog, "message").textContent = message;
  const okButton = ref(dialog, "ok");
  okButton.textContent = ok;
  if (!danger) okButton.className = "primary";
  document.body.appendChild(dialog);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok");
      dialog.remove();
    });
    dialog.showModal();
    ref(dialog, "cancel").focus();
  });
}

/** A modal with custom content; resolves with the submit button's value or "" on cancel. */
export function openDialog(titleText, body, { okText = "OK", okClass = "primary", onSubmit } = {}) {
  const titleId = nextId("dlg");
  const okButton = h("button", { type: "submit", class: okClass, value: "ok", text: okText });
  const form = h("form", { method: "dialog", class: "form" },
    h("h2", { id: titleId, text: titleText }), body,
    h("div", { class: "form-actions" },
      h("button", { type: "button", value: "cancel", text: "Cancel", on: { click: () => dialog.close("") } }),
      okButton));
  const dialog = h("dialog", { "aria-labelledby": titleId }, form);
  document.body.appendChild(dialog);
  form.addEventListener("submit", async (event) => {
    if (!onSubmit) return;
    event.preventDefault();
    okButton.disabled = true;
    try {
      if ((await onSubmit(form)) !== false) dialog.close("ok");
    } finally {
      okButton.disabled = false;
    }
  });
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue);
      dialog.remove();
    });
    dialog.showModal();
  });
}

// ------------------------------------------------------------------ field errors

/** Removes the messages of showFieldErrors. */
export function clearFieldErrors(form) {
  for (const p of form.querySelectorAll(".field-error")) p.remove();
  for (const c of form.querySelectorAll('[aria-invalid="true"]')) {
    c.removeAttribute("aria-invalid");
    const ids = (c.getAttribute("aria-describedby") || "").split(" ").filter((id) => id && !id.startsWith("err-"));
    if (ids.length) c.setAttribute("aria-describedby", ids.join(" "));
    else c.removeAttribute("aria-describedby");
  }
  const general = form.querySelector('[data-ref="form-error"]');
  if (general) general.hidden = true;
}

/** The control (or fieldset) a 422 error's `field` names: "port", "env.FOO", "notify[0].url", "tags[2]". */
function controlFor(form, field) {
  const candidates = [field, field.replace(/\[\d+\]$/, ""), field.split(/[.[]/)[0]];
  for (const name of candidates) {
    const c = form.querySelector(`[data-field="${CSS.escape(name)}"]`) || form.elements.namedItem(name);
    if (c) return c instanceof RadioNodeList ? c[0] : c;
  }
  return null;
}

/**
 * Shows an ApiError at the fields its `errors` name (and anything else at
 * the top of the form). Focuses the first invalid control.
 */
export function showFieldErrors(form, err) {
  clearFieldErrors(form);
  const general = form.querySelector('[data-ref="form-error"]');
  const leftover = [];
  let first = null;
  for (const e of err.errors || []) {
    const control = controlFor(form, e.field || "");
    if (!control) {
      leftover.push(e.field ? `${e.field}: ${e.message}` : e.message);
      continue;
    }
    const id = nextId("err");
    const message = h("p", { class: "field-error", id, text: e.message });
    const anchor = control.closest(".field, fieldset") || control.parentElement;
    anchor.appendChild(message);
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", `${control.getAttribute("aria-describedby") || ""} ${id}`.trim());
    first = first || control;
  }
  if (general && (leftover.length || !first)) {
    general.textContent = leftover.length ? `${err.message} ${leftover.join("; ")}` : err.message;
    general.hidden = false;
  }
  (first || general)?.focus?.();
  if (!general && !first) toastError(err);
}

// ------------------------------------------------------------------ states

export function loading(text = "Loading…") {
  return h("p", { class: "loading", role: "status", text });
}

/** An empty state that says what to do next. */
export function empty(message, ...actions) {
  return h("div", { class: "empty" }, h("p", { text: message }), actions.length ? h("div", { class: "actions" }, actions) : null);
}

export function badge(status) {
  return h("span", { class: ["badge", `st-${status}`], text: statusLabel(status) });
}

/** Tags as chips; with onClick they are buttons (filter by that tag). */
export function tagList(tags, onClick) {
  return h("span", { class: "tags" }, (tags || []).map((t) => onClick
    ? h("button", { type: "button", class: "tag", text: t, "aria-label": `Filter by tag ${t}`, on: { click: () => onClick(t) } })
    : h("span", { class: "tag", text: t })));
}

/** Runs fn while the button is disabled and marked busy. */
export async function busy(button, fn) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await fn();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// ------------------------------------------------------------------ fields

/**
 * A labelled control in a .field wrapper.
 * @param {string} label
 * @param {HTMLElement} control input/select/textarea (gets an id if it has none)
 * @param {string} [hint]
 */
export function field(label, control, hint) {
  if (!control.id) control.id = nextId("f");
  let hintNode = null;
  if (hint) {
    hintNode = h("p", { class: "hint", id: nextId("hint"), text: hint });
    control.setAttribute("aria-describedby", hintNode.id);
  }
  return h("div", { class: "field" }, h("label", { for: control.id, text: label }), control, hintNode);
}

export function input(name, value = "", attrs = {}) {
  return h("input", { type: "text", name, value: value ?? "", ...attrs });
}

export function select(name, options, value, attrs = {}) {
  return h("select", { name, ...attrs },
    options.map(([v, label]) => h("option", { value: v, text: label, selected: String(v) === String(value ?? "") })));
}

export function checkbox(name, label, checked, attrs = {}) {
  const box = h("input", { type: "checkbox", name, checked, ...attrs });
  box.id = box.id || nextId("c");
  return h("label", { class: "check", for: box.id }, box, h("span", { text: label }));
}

/** "a, b c" -> ["a", "b", "c"]. */
export function splitTags(text) {
  return String(text || "").split(/[\s,]+/).map((t) => t.trim()).filter(Boolean);
}

/** The page heading, focusable so navigation can move focus to it. */
export function pageHead(title, sub, ...actions) {
  return h("div", { class: "page-head" },
    h("div", null, h("h1", { tabindex: "-1", text: title }), sub ? h("p", { class: "sub", text: sub }) : null),
    actions.length ? h("div", { class: "actions" }, actions) : null);
}
