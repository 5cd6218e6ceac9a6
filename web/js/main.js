// SPDX-License-Identifier: Apache-2.0
// Entry module: the session, the hash router (#/jobs/12) and the header.
// Each screen is a module in pages/, loaded on first use, exporting
// render(ctx) which fills ctx.main and may return a cleanup function.

import { ApiError, get, isAbort, onUnauthorized, post, setCsrf } from "./api.js";
import { h, ref, replace } from "./dom.js";
import { empty, toast, toastError } from "./ui.js";

/** Routes: pattern over the hash path, page module, nav item, minimum role. */
const ROUTES = [
  [/^\/$/, "dashboard", "dashboard"],
  [/^\/servers$/, "servers", "servers"],
  [/^\/servers\/new$/, "server-form", "servers", "admin"],
  [/^\/servers\/(\d+)$/, "server-form", "servers"],
  [/^\/jobs$/, "jobs", "jobs"],
  [/^\/jobs\/new$/, "job-form", "jobs", "operator"],
  [/^\/jobs\/(\d+)$/, "job-form", "jobs"],
  [/^\/executions$/, "executions", "executions"],
  [/^\/executions\/(\d+)$/, "execution", "executions"],
  [/^\/users$/, "users", "users", "admin"],
  [/^\/tokens$/, "tokens", "tokens"],
  [/^\/audit$/, "audit", "audit", "admin"],
  [/^\/login$/, "login", null],
];
const RANK = { viewer: 0, operator: 1, admin: 2 };

const main = document.getElementById("main");
const topbar = document.querySelector('[data-ref="topbar"]');

/** The signed-in user ({id, username, role}) or null. */
export const session = { user: null };

/** True when the signed-in user has at least `role`. */
export function can(role) {
  return session.user !== null && RANK[session.user.role] >= RANK[role];
}

/** Parses location.hash: "#/executions?job_id=3" -> {path: "/executions", query: URLSearchParams}. */
function currentRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, qs] = raw.split("?", 2);
  return { path: path || "/", query: new URLSearchParams(qs || ""), raw };
}

/** Navigates to a hash route ("/jobs/3", {q: "x"}), optionally replacing the history entry. */
export function go(path, query, { replaceEntry = false } = {}) {
  const qs = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v !== "" && v != null)).toString() : "";
  const hash = `#${path}${qs ? `?${qs}` : ""}`;
  if (location.hash === hash) {
    render();
  } else if (replaceEntry) {
    history.replaceState(null, "", hash);
    render();
  } else {
    location.hash = hash;
  }
}

function setSession(data) {
  session.user = data ? data.user : null;
  setCsrf(data ? data.csrf_token : null);
  topbar.hidden = !session.user;
  if (!session.user) return;
  ref(topbar, "username").textContent = session.user.username;
  ref(topbar, "role").textContent = session.user.role;
  for (const a of topbar.querySelectorAll("[data-role]")) a.hidden = !can(a.dataset.role);
}

let current = { controller: null, cleanup: null };
let renderCount = 0;

async function render() {
  current.controller?.abort();
  if (typeof current.cleanup === "function") current.cleanup();
  const controller = new AbortController();
  current = { controller, cleanup: null };
  const route = currentRoute();
  const id = ++renderCount;

  if (!session.user && route.path !== "/login") {
    history.replaceState(null, "", `#/login?next=${encodeURIComponent(route.raw)}`);
    return render();
  }
  const match = ROUTES.map(([re, page, nav, role]) => ({ m: route.path.match(re), page, nav, role })).find((r) => r.m);
  for (const a of topbar.querySelectorAll("[data-nav]")) {
    if (match && a.dataset.nav === match.nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  main.setAttribute("aria-busy", "true");
  try {
    if (!match) {
      document.title = "Not found · tsubame-ci";
      replace(main, empty("There is no such page.", h("a", { class: "button", href: "#/", text: "Go to the dashboard" })));
      return;
    }
    if (match.role && !can(match.role)) {
      document.title = "Not allowed · tsubame-ci";
      replace(main, empty(`This page needs the ${match.role} role; you are signed in as ${session.user.role}.`,
        h("a", { class: "button", href: "#/", text: "Go to the dashboard" })));
      return;
    }
    const module = await import(`./pages/${match.page}.js`);
    if (id !== renderCount) return;
    replace(main);
    current.cleanup = await module.render({
      main, params: match.m.slice(1), query: route.query, signal: controller.signal,
      user: session.user, can, go, setSession, reload: render,
    });
    if (id !== renderCount && typeof current.cleanup === "function") current.cleanup();
  } catch (err) {
    if (isAbort(err) || id !== renderCount) return;
    if (err instanceof ApiError && err.status === 401) return;
    replace(main, h("div", { class: "notice bad", role: "alert" },
      h("strong", { text: err instanceof ApiError && err.status === 404 ? "Not found" : "This page could not be shown" }),
      err.message));
  } finally {
    if (id === renderCount) main.setAttribute("aria-busy", "false");
  }
}

/** Moves focus to the new page's heading after a navigation (not on first load). */
function focusHeading() {
  const heading = main.querySelector("h1");
  if (heading) heading.focus({ preventScroll: true });
}

// The session ended (expired, revoked, signed out elsewhere): back to sign-in,
// remembering where the user was.
onUnauthorized(() => {
  if (!session.user) return;
  const { raw, path } = currentRoute();
  setSession(null);
  toast("Your session has ended. Sign in again to continue.", "error");
  if (path !== "/login") go("/login", { next: raw, expired: "1" }, { replaceEntry: true });
});

async function signOut() {
  try {
    await post("/api/v1/auth/logout");
  } catch (err) {
    if (err.status !== 401) {
      toastError(err);
      return;
    }
  }
  setSession(null);
  toast("Signed out.");
  go("/login", null, { replaceEntry: true });
}

document.querySelector('[data-action="sign-out"]').addEventListener("click", signOut);
document.querySelector('[data-action="skip"]').addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
let firstRender = true;
window.addEventListener("hashchange", async () => {
  await render();
  if (!firstRender) focusHeading();
});

async function boot() {
  // The screen's module loads while the session is checked.
  const first = ROUTES.find(([re]) => re.test(currentRoute().path));
  if (first) import(`./pages/${first[1]}.js`).catch(() => {});
  try {
    setSession(await get("/api/v1/auth/me"));
  } catch (err) {
    setSession(null);
    if (err.status !== 401) toastError(err);
  }
  await render();
  firstRender = false;
}

boot();
