// SPDX-License-Identifier: Apache-2.0
// Jobs: the list with last status, tags and search; Run from the list.

import { get } from "../api.js";
import { h, replace } from "../dom.js";
import { fmtAgo, fmtTime } from "../format.js";
import { badge, empty, field, input, loading, pageHead, tagList } from "../ui.js";
import { runButton } from "./run-dialog.js";

export async function render({ main, query, signal, can, go }) {
  document.title = "Jobs · tsubame-ci";
  const q = query.get("q") || "";
  const tag = query.get("tag") || "";
  const search = input("q", q, { type: "search", placeholder: "name or description" });
  const tagInput = input("tag", tag, { placeholder: "e.g. nightly" });
  const form = h("form", { class: "filters", role: "search" },
    field("Search", search), field("Tag", tagInput),
    h("div", { class: "actions" }, h("button", { type: "submit", text: "Filter" }),
      q || tag ? h("a", { class: "button", href: "#/jobs", text: "Clear" }) : null));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("/jobs", { q: search.value.trim(), tag: tagInput.value.trim() });
  });
  const body = h("div", null, loading("Loading jobs…"));
  main.append(
    pageHead("Jobs", "Scripts, where they run and when.",
      can("operator") ? h("a", { class: "button primary", href: "#/jobs/new", text: "New job" }) : null),
    h("section", { class: "card" }, form, body));

  const items = [];
  let cursor = null;
  do {
    const page = await get("/api/v1/jobs", { q, tag, limit: 200, cursor }, signal);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < 2000);

  if (!items.length) {
    replace(body, q || tag
      ? empty("No job matches this filter.", h("a", { class: "button", href: "#/jobs", text: "Show all jobs" }))
      : empty("No jobs yet. A job is a shell script that runs on one or more servers.",
        can("operator") ? h("a", { class: "button primary", href: "#/jobs/new", text: "Create a job" }) : null));
    return;
  }
  const byTag = (t) => go("/jobs", { tag: t });
  replace(body, h("div", { class: "table-wrap" }, h("table", null,
    h("caption", { class: "sr-only", text: "Jobs" }),
    h("thead", null, h("tr", null, ["Name", "Last run", "Schedule", "Tags", ""].map((t, i) => h("th", { class: i === 2 ? "hide-sm" : null, text: t })))),
    h("tbody", null, items.map((job) => h("tr", null,
      h("td", { class: "name-cell" }, h("a", { href: `#/jobs/${job.id}`, text: job.name }),
        job.enabled ? null : h("span", { class: "badge off plain", text: "disabled" }),
        job.description ? h("div", { class: "sub", text: job.description }) : null),
      h("td", null, job.last_execution
        ? h("a", { href: `#/executions/${job.last_execution.id}`, "aria-label": `Last run of ${job.name}: ${job.last_execution.status}` },
          badge(job.last_execution.status))
        : h("span", { class: "muted", text: "never ran" }),
      job.last_execution?.finished_at ? h("div", { class: "sub", title: fmtTime(job.last_execution.finished_at), text: fmtAgo(job.last_execution.finished_at) }) : null),
      h("td", { class: "hide-sm" }, job.schedule
        ? [h("code", { text: job.schedule }), h("div", { class: "sub", text: job.timezone })]
        : h("span", { class: "muted", text: "manual" })),
      h("td", null, tagList(job.tags, byTag)),
      h("td", null, can("operator") ? runButton(job, go, { compact: true }) : null)))))));
}
