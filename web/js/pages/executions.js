// SPDX-License-Identifier: Apache-2.0
// Execution history: filters (job, server, status, time range) kept in the
// URL, keyset paging with "Load more".

import { get } from "../api.js";
import { h, replace } from "../dom.js";
import { fmtAgo, fmtDuration, fmtTime, isoToLocalInput, localInputToIso, STATUSES, statusLabel } from "../format.js";
import { badge, busy, empty, field, loading, pageHead, select, toastError } from "../ui.js";

export async function render({ main, query, signal, go }) {
  document.title = "Executions · tsubame-ci";
  const filters = {
    job_id: query.get("job_id") || "", server_id: query.get("server_id") || "", status: query.get("status") || "",
    since: query.get("since") || "", until: query.get("until") || "",
  };
  const body = h("div", null, loading("Loading executions…"));
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter executions" });
  main.append(pageHead("Executions", "Every run of every job, newest first."), h("section", { class: "card" }, form, body));

  const [jobs, servers] = await Promise.all([
    get("/api/v1/jobs", { limit: 200 }, signal), get("/api/v1/servers", { limit: 200 }, signal),
  ]);
  const jobSelect = select("job_id", [["", "All jobs"], ...jobs.items.map((j) => [j.id, j.name])], filters.job_id);
  const serverSelect = select("server_id", [["", "All servers"], ...servers.items.map((s) => [s.id, s.name])], filters.server_id);
  const statusSelect = select("status", [["", "Any status"], ...STATUSES.map((s) => [s, statusLabel(s)])], filters.status);
  const since = h("input", { type: "datetime-local", name: "since", value: isoToLocalInput(filters.since) });
  const until = h("input", { type: "datetime-local", name: "until", value: isoToLocalInput(filters.until) });
  form.append(field("Job", jobSelect), field("Server", serverSelect),
    h("div", { class: "field narrow" }, h("label", { for: statusSelect.id = "filter-status", text: "Status" }), statusSelect),
    field("From", since), field("Until", until),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", text: "Apply filters" }),
      Object.values(filters).some(Boolean) ? h("a", { class: "button", href: "#/executions", text: "Clear" }) : null));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("/executions", {
      job_id: jobSelect.value, server_id: serverSelect.value, status: statusSelect.value,
      since: localInputToIso(since.value), until: localInputToIso(until.value),
    });
  });

  const tbody = h("tbody");
  const more = h("button", { type: "button", text: "Load more" });
  const count = h("p", { class: "muted", "aria-live": "polite" });
  let cursor = null;
  let shown = 0;
  const loadPage = async () => {
    const page = await get("/api/v1/executions", { ...filters, limit: 50, cursor }, signal);
    cursor = page.next_cursor;
    shown += page.items.length;
    tbody.append(...page.items.map(row));
    more.hidden = !cursor;
    count.textContent = `${shown} execution${shown === 1 ? "" : "s"} shown${cursor ? "" : " (all)"}`;
    return page;
  };
  more.addEventListener("click", () => busy(more, loadPage).catch(toastError));
  const first = await loadPage();
  if (!first.items.length) {
    replace(body, Object.values(filters).some(Boolean)
      ? empty("No execution matches these filters.", h("a", { class: "button", href: "#/executions", text: "Clear the filters" }))
      : empty("Nothing has run yet. Start a job and its output appears here live.", h("a", { class: "button primary", href: "#/jobs", text: "Go to the jobs" })));
    return;
  }
  replace(body, h("div", { class: "table-wrap" }, h("table", null,
    h("caption", { class: "sr-only", text: "Executions" }),
    h("thead", null, h("tr", null, ["Run", "Job", "Status", "Trigger", "Started", "Duration", "Exit"].map((t, i) =>
      h("th", { class: [i === 3 && "hide-sm", i >= 5 && "num"], text: t })))),
    tbody)), h("div", { class: "form-actions" }, more, count));
}

function row(e) {
  return h("tr", null,
    h("td", null, h("a", { href: `#/executions/${e.id}`, text: `#${e.id}`, "aria-label": `Execution ${e.id} of ${e.job_name}` })),
    h("td", { class: "name-cell" }, e.job_id ? h("a", { href: `#/jobs/${e.job_id}`, text: e.job_name }) : h("span", { text: e.job_name }),
      h("div", { class: "sub", text: `${e.targets.length} server${e.targets.length === 1 ? "" : "s"}` })),
    h("td", null, badge(e.status), e.waiting_reason ? h("div", { class: "sub waiting", text: e.waiting_reason }) : null),
    h("td", { class: "hide-sm" }, e.trigger, e.triggered_by ? h("div", { class: "sub", text: e.triggered_by.username }) : null),
    h("td", { title: fmtTime(e.started_at || e.created_at), text: fmtAgo(e.started_at || e.created_at) }),
    h("td", { class: "num", text: fmtDuration(e.duration_ms) }),
    h("td", { class: "num", text: e.exit_code ?? "—" }));
}
