// SPDX-License-Identifier: Apache-2.0
// Sign in; afterwards back to where the user was (?next=).

import { post } from "../api.js";
import { ref, template } from "../dom.js";
import { busy, clearFieldErrors, showFieldErrors } from "../ui.js";

export function render({ main, query, setSession, go, user }) {
  document.title = "Sign in · tsubame-ci";
  const next = safeNext(query.get("next"));
  if (user) {
    go(next.path, next.query, { replaceEntry: true });
    return;
  }
  const page = template("tpl-signin");
  const form = page.querySelector("form");
  if (query.get("expired")) {
    const reason = ref(page, "reason");
    reason.textContent = "Your session has ended. Sign in again and you will be taken back to where you were.";
    reason.hidden = false;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const username = form.elements.username.value.trim();
    const password = form.elements.password.value;
    const missing = [];
    if (!username) missing.push({ field: "username", message: "Enter your username." });
    if (!password) missing.push({ field: "password", message: "Enter your password." });
    if (missing.length) {
      showFieldErrors(form, { message: "", errors: missing });
      return;
    }
    try {
      const data = await busy(form.querySelector('[type="submit"]'), () => post("/api/v1/auth/login", { username, password }));
      form.elements.password.value = "";
      setSession(data);
      go(next.path, next.query, { replaceEntry: true });
    } catch (err) {
      showFieldErrors(form, err);
    }
  });
  main.appendChild(page);
  form.elements.username.focus();
}

/** Only hash routes of this UI are followed after sign-in. */
function safeNext(raw) {
  if (!raw || !raw.startsWith("/") || raw.startsWith("//") || raw.startsWith("/login")) return { path: "/", query: null };
  const [path, qs] = raw.split("?", 2);
  return { path, query: qs ? Object.fromEntries(new URLSearchParams(qs)) : null };
}
