// SPDX-License-Identifier: Apache-2.0
// One execution: status, per-server targets (exit codes, durations), the
// live log, Cancel, Re-run and Re-run failed servers only, and the
// notifications it caused.

import { get, post } from "../api.js";
import { h, replace } from "../dom.js";
import { elapsedMs, fmtDuration, fmtTime, FINISHED, statusLabel } from "../format.js";
import { LogView, tailRequest } from "../log-view.js";
import { badge, busy, confirmDialog, pageHead, toast, toastError } from "../ui.js";
import { deliveryLog } from "./notify.js";

export async function render({ main, params, signal, can, go }) {
  const id = Number(params[0]);
  // The end of the log is asked for together with the execution: a big log shows at once.
  const tail = tailRequest(`/api/v1/executions/${id}/log`, signal);
  tail.catch(() => {}); // reported by the log view
  let e = await get(`/api/v1/executions/${id}`, null, signal);
  document.title = `${e.job_name} #${e.id} · tsubame-ci`;

  const head = h("div");
  const facts = h("section", { class: "card", "aria-labelledby": "exe-targets" });
  const announce = h("p", { class: "sr-only", role: "status", "aria-live": "polite" });
  const notifications = deliveryLog({ execution_id: id }, signal, { showExecution: false,
    emptyText: "No notifications for this execution: its job has none for what happened so far." });
  let notifyTimer = null;
  const log = new LogView({
    executionId: id, targets: e.targets, signal,
    onStatus: (status) => {
      if (status !== e.status) {
        announce.textContent = `Execution ${statusLabel(status).toLowerCase()}.`;
        refresh();
        // A status change may have queued notifications; they are usually sent within a second or two.
        notifications.reload();
        clearTimeout(notifyTimer);
        notifyTimer = setTimeout(() => notifications.reload(), 3000);
      }
    },
    onSystem: () => refresh(),
  });
  main.append(
    h("div", { class: "crumbs" }, h("a", { href: "#/executions", text: "Executions" }), " / "),
    head, announce, facts,
    h("section", { class: "card", "aria-labelledby": "exe-log" },
      h("h2", { id: "exe-log", text: "Output" }), log.node),
    notifications.node);

  const draw = () => {
    replace(head, header(e, can, go, () => refresh()));
    replace(facts, ...targetsTable(e));
  };
  let pending = null;
  let timer = null;
  const refresh = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (pending) return;
      try {
        pending = get(`/api/v1/executions/${id}`, null, signal);
        e = await pending;
        draw();
      } catch (err) {
        toastError(err);
      } finally {
        pending = null;
      }
    }, 150);
  };
  draw();
  log.start(tail);
  // Durations of what still runs tick every second.
  const ticker = setInterval(() => {
    for (const td of main.querySelectorAll('[data-end=""]')) {
      if (td.dataset.start) td.textContent = fmtDuration(elapsedMs(td.dataset.start, null));
    }
  }, 1000);
  return () => {
    clearInterval(ticker);
    clearTimeout(timer);
    clearTimeout(notifyTimer);
  };
}

function header(e, can, go, refresh) {
  const actions = [];
  if (can("operator")) {
    if (!FINISHED.has(e.status)) {
      const cancel = h("button", { type: "button", class: "danger", text: "Cancel execution" });
      cancel.addEventListener("click", async () => {
        if (!await confirmDialog({ title: `Cancel ${e.job_name} #${e.id}?`, message: "Running scripts are stopped on every server.", ok: "Cancel execution" })) return;
        try {
          await busy(cancel, () => post(`/api/v1/executions/${e.id}/cancel`));
          toast(`Cancelling #${e.id}…`);
          refresh();
        } catch (err) {
          toastError(err);
        }
      });
      actions.push(cancel);
    } else {
      const rerun = (onlyFailed) => {
        const b = h("button", { type: "button", class: onlyFailed ? null : "primary", text: onlyFailed ? "Re-run failed servers" : "Re-run" });
        b.addEventListener("click", async () => {
          try {
            const next = await busy(b, () => post(`/api/v1/executions/${e.id}/rerun`, onlyFailed ? { only_failed: true } : {}));
            toast(`Started #${next.id}.`);
            go(`/executions/${next.id}`);
          } catch (err) {
            toastError(err);
          }
        });
        return b;
      };
      if (e.job_id) actions.push(rerun(false));
      if (e.job_id && e.targets.some((t) => t.status !== "succeeded")) actions.push(rerun(true));
    }
  }
  const when = e.started_at ? `started ${fmtTime(e.started_at)}` : `queued ${fmtTime(e.created_at)}`;
  const head = pageHead(`${e.job_name} #${e.id}`, null, ...actions);
  const status = badge(e.status);
  status.dataset.ref = "exe-status";
  const sub = h("p", { class: "sub" }, status, " ",
    `${when} · ${e.trigger}${e.triggered_by ? ` by ${e.triggered_by.username}` : ""}`,
    e.started_at ? [" · ", h("span", { dataset: { start: e.started_at, end: e.finished_at || "" },
      text: fmtDuration(elapsedMs(e.started_at, e.finished_at)) })] : "",
    e.exit_code !== null ? ` · exit code ${e.exit_code}` : "",
    e.parent_id ? [" · re-run of ", h("a", { href: `#/executions/${e.parent_id}`, text: `#${e.parent_id}` })] : "",
    e.job_id ? [" · ", h("a", { href: `#/jobs/${e.job_id}`, text: "job" })] : "");
  head.firstElementChild.appendChild(sub);
  const notes = [];
  if (e.waiting_reason) {
    notes.push(h("p", { class: "notice warn", text: `${e.status === "queued" ? "Waiting" : "Some servers are waiting"}: ${e.waiting_reason}` }));
  }
  if (e.output_truncated) notes.push(h("p", { class: "notice warn", text: "The output reached the storage cap; the rest was dropped while the job ran on." }));
  return [head, ...notes];
}

function targetsTable(e) {
  return [h("h2", { id: "exe-targets", text: "Servers" }),
    h("div", { class: "table-wrap" }, h("table", null,
      h("thead", null, h("tr", null, ["Server", "Status", "Exit code", "Duration", "Attempt", "Details"].map((t, i) =>
        h("th", { class: [(i === 2 || i === 3) && "num", i === 4 && "hide-sm"], text: t })))),
      h("tbody", null, e.targets.map((t) => h("tr", null,
        h("td", { class: "name-cell" }, t.server_id ? h("a", { href: `#/servers/${t.server_id}`, text: t.server_name }) : t.server_name),
        h("td", null, badge(t.status)),
        h("td", { class: "num", text: t.exit_code ?? "—" }),
        h("td", { class: "num", dataset: { start: t.started_at || "", end: t.finished_at || "" },
          text: fmtDuration(elapsedMs(t.started_at, t.finished_at)) }),
        h("td", { class: "hide-sm", text: t.attempt }),
        h("td", { class: "wrap-anywhere" }, t.error || t.waiting_reason || ""))))))];
}
