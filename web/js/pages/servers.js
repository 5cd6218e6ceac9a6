// SPDX-License-Identifier: Apache-2.0
// Servers: the list with search and tag filter, "Test connection" per row.

import { get } from "../api.js";
import { h, replace } from "../dom.js";
import { empty, field, input, loading, pageHead, tagList } from "../ui.js";
import { testButton } from "./server-test.js";

export async function render({ main, query, signal, can, go }) {
  document.title = "Servers · tsubame-ci";
  const q = query.get("q") || "";
  const tag = query.get("tag") || "";
  const search = input("q", q, { type: "search", placeholder: "name, host or description" });
  const tagInput = input("tag", tag, { placeholder: "e.g. prod" });
  const form = h("form", { class: "filters", role: "search" },
    field("Search", search), field("Tag", tagInput),
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Filter" }),
      q || tag ? h("a", { class: "button", href: "#/servers", text: "Clear" }) : null));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("/servers", { q: search.value.trim(), tag: tagInput.value.trim() });
  });
  const body = h("div", null, loading("Loading servers…"));
  main.append(
    pageHead("Servers", "The SSH targets jobs run on.",
      can("admin") ? h("a", { class: "button primary", href: "#/servers/new", text: "Add server" }) : null),
    h("section", { class: "card" }, form, body));

  const items = [];
  let cursor = null;
  do {
    const page = await get("/api/v1/servers", { q, tag, limit: 200, cursor }, signal);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < 2000);

  if (!items.length) {
    replace(body, q || tag
      ? empty("No server matches this filter.", h("a", { class: "button", href: "#/servers", text: "Show all servers" }))
      : empty("No servers yet. Add the first SSH target to run jobs on.",
        can("admin") ? h("a", { class: "button primary", href: "#/servers/new", text: "Add server" }) : null));
    return;
  }
  const byTag = (t) => go("/servers", { tag: t });
  replace(body, h("div", { class: "table-wrap" }, h("table", null,
    h("caption", { class: "sr-only", text: "Servers" }),
    h("thead", null, h("tr", null,
      ["Name", "Address", "Auth", "Tags", "Host key", ""].map((t, i) => h("th", { class: i === 2 || i === 4 ? "hide-sm" : null, text: t })))),
    h("tbody", null, items.map((srv) => {
      const result = h("div", { class: "test-result" });
      return h("tr", null,
        h("td", { class: "name-cell" }, h("a", { href: `#/servers/${srv.id}`, text: srv.name }),
          srv.description ? h("div", { class: "sub", text: srv.description }) : null),
        h("td", { class: "mono wrap-anywhere", text: `${srv.username}@${srv.host}:${srv.port}` }),
        h("td", { class: "hide-sm", text: srv.auth_method === "key" ? "key" : "password" }),
        h("td", null, tagList(srv.tags, byTag)),
        h("td", { class: "hide-sm" }, srv.host_key
          ? h("span", { class: "fingerprint", title: srv.host_key.fingerprint_sha256, text: shortFingerprint(srv.host_key.fingerprint_sha256) })
          : h("span", { class: "muted", text: "not pinned yet" })),
        h("td", null, can("operator") ? testButton(srv, result, { compact: true, canTrust: can("admin") }) : null, result));
    })))));
}

export function shortFingerprint(fp) {
  return fp && fp.length > 22 ? `${fp.slice(0, 19)}…` : fp || "";
}
