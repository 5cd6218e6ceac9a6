// SPDX-License-Identifier: Apache-2.0
// Audit log (admin): who did what, when, from where; keyset paging.

import { get } from "../api.js";
import { h, replace } from "../dom.js";
import { fmtAgo, fmtTime } from "../format.js";
import { busy, empty, loading, pageHead, toastError } from "../ui.js";

export async function render({ main, signal }) {
  document.title = "Audit · tsubame-ci";
  const body = h("div", null, loading("Loading the audit log…"));
  main.append(pageHead("Audit", "Who did what, when, from where."), h("section", { class: "card" }, body));
  const tbody = h("tbody");
  const more = h("button", { type: "button", text: "Load more" });
  let cursor = null;
  const loadPage = async () => {
    const page = await get("/api/v1/audit", { limit: 100, cursor }, signal);
    cursor = page.next_cursor;
    tbody.append(...page.items.map(row));
    more.hidden = !cursor;
    return page;
  };
  more.addEventListener("click", () => busy(more, loadPage).catch(toastError));
  const first = await loadPage();
  if (!first.items.length) {
    replace(body, empty("Nothing recorded yet."));
    return;
  }
  replace(body, h("div", { class: "table-wrap" }, h("table", null,
    h("caption", { class: "sr-only", text: "Audit log" }),
    h("thead", null, h("tr", null, ["When", "Who", "Action", "Target", "From", "Details"].map((t) => h("th", { text: t })))),
    tbody)), h("div", { class: "form-actions" }, more));
}

function row(a) {
  const at = a.at || a.created_at;
  const detail = a.detail && typeof a.detail === "object" && Object.keys(a.detail).length ? JSON.stringify(a.detail) : "";
  return h("tr", null,
    h("td", { title: fmtTime(at), text: fmtAgo(at) }),
    h("td", { text: a.username || "—" }),
    h("td", null, h("code", { text: a.action })),
    h("td", { class: "wrap-anywhere", text: a.target || "" }),
    h("td", { class: "mono", text: a.address || "" }),
    h("td", { class: "mono wrap-anywhere", text: detail }));
}
