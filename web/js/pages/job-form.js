// SPDX-License-Identifier: Apache-2.0
// A job: the editor (operator) or its details (viewer), its recent runs,
// Run, Delete. The editor has the script, servers by tag, env and secret
// env, limits, the schedule with its next 5 runs, notifications (and the
// log of their deliveries).

import { ApiError, del, get, patch, post } from "../api.js";
import { h, replace } from "../dom.js";
import { fmtAgo, fmtDuration, fmtTime, fmtTimeIn } from "../format.js";
import {
  badge, busy, checkbox, clearFieldErrors, confirmDialog, empty, field, input, pageHead, select, showFieldErrors,
  splitTags, tagList, toast, toastError,
} from "../ui.js";
import { envEditor, secretEditor } from "./env-editor.js";
import { deliveryLog, describeNotify, notifyEditor } from "./notify.js";
import { runButton } from "./run-dialog.js";

const PRESETS = [["", "Presets…"], ["*/5 * * * *", "Every 5 minutes"], ["@hourly", "Every hour"],
  ["0 2 * * *", "Every day at 02:00"], ["0 6 * * 1-5", "Weekdays at 06:00"], ["0 3 * * 0", "Sundays at 03:00"],
  ["@monthly", "First day of the month"]];

export async function render({ main, params, signal, can, go, reload }) {
  const id = params[0] ? Number(params[0]) : null;
  const [job, servers, jobs] = await Promise.all([
    id ? get(`/api/v1/jobs/${id}`, null, signal) : null,
    listAll("/api/v1/servers", signal),
    listAll("/api/v1/jobs", signal),
  ]);
  document.title = `${job ? job.name : "New job"} · tsubame-ci`;
  const crumbs = h("div", { class: "crumbs" }, h("a", { href: "#/jobs", text: "Jobs" }), " / ");
  const runs = job ? recentRuns(job, signal) : null;
  const deliveries = job ? deliveryLog({ job_id: job.id }, signal, {
    emptyText: job.notify.length ? "No notifications sent yet: they are sent when a run starts, ends or runs long."
      : "This job sends no notifications.",
  }).node : null;
  if (!can("operator")) {
    main.append(crumbs, pageHead(job.name, job.description || null), details(job, servers), runs, deliveries);
    return;
  }
  if (!servers.length && !job) {
    main.append(crumbs, pageHead("New job"), h("section", { class: "card" },
      empty("A job runs on servers, and there are none yet.",
        can("admin") ? h("a", { class: "button primary", href: "#/servers/new", text: "Add a server first" })
          : h("span", { text: "Ask an admin to add one." }))));
    return;
  }
  const editor = jobForm(job, servers, jobs.filter((j) => j.id !== id), go, reload);
  main.append(crumbs,
    pageHead(job ? job.name : "New job", job ? `Job #${job.id}` : "A shell script to run on your servers.",
      job ? runButton(job, go) : null, job ? deleteButton(job, go) : null),
    editor.form, runs, deliveries);
  editor.form.elements.name.focus({ preventScroll: true });
  return editor.cleanup;
}

async function listAll(path, signal) {
  const items = [];
  let cursor = null;
  do {
    const page = await get(path, { limit: 200, cursor }, signal);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < 5000);
  return items;
}

function deleteButton(job, go) {
  const b = h("button", { type: "button", class: "ghost-danger", text: "Delete" });
  b.addEventListener("click", async () => {
    if (!await confirmDialog({ title: `Delete ${job.name}?`, message: "Its schedule stops. Past executions and their logs stay.", ok: "Delete job" })) return;
    try {
      await busy(b, () => del(`/api/v1/jobs/${job.id}`));
      toast(`Deleted ${job.name}.`);
      go("/jobs", null, { replaceEntry: true });
    } catch (err) {
      toastError(err, err.status === 409 ? "Cannot delete" : "");
    }
  });
  return b;
}

// ------------------------------------------------------------------ details (viewer)

function details(job, servers) {
  const names = new Map(servers.map((s) => [s.id, s.name]));
  return h("section", { class: "card" },
    h("dl", { class: "facts" },
      h("dt", { text: "Servers" }), h("dd", { text: job.server_ids.map((i) => names.get(i) || `#${i}`).join(", ") }),
      h("dt", { text: "Schedule" }), h("dd", { text: job.schedule ? `${job.schedule} (${job.timezone})` : "manual only" }),
      h("dt", { text: "Next runs" }), h("dd", { text: job.next_runs.map((t) => fmtTimeIn(t, job.timezone)).join(" · ") || "—" }),
      h("dt", { text: "Timeout" }), h("dd", { text: fmtDuration(job.timeout_seconds * 1000) }),
      h("dt", { text: "Retries" }), h("dd", { text: job.retries }),
      h("dt", { text: "Environment" }), h("dd", { class: "mono", text: Object.keys(job.env).join(", ") || "—" }),
      h("dt", { text: "Secrets" }), h("dd", { class: "mono", text: job.secret_env_names.join(", ") || "—" }),
      h("dt", { text: "Tags" }), h("dd", null, tagList(job.tags)),
      h("dt", { text: "Notifications" }), h("dd", { text: job.notify.map(describeNotify).join(" · ") || "—" }),
      h("dt", { text: "Enabled" }), h("dd", { text: job.enabled ? "yes" : "no" })),
    h("h2", { text: "Script" }), h("pre", { class: "log-scroll mono", text: job.script }));
}

function recentRuns(job, signal) {
  const list = h("div", null, h("p", { class: "loading", text: "Loading runs…" }));
  get("/api/v1/executions", { job_id: job.id, limit: 10 }, signal).then((page) => {
    replace(list, page.items.length
      ? h("ul", { class: "list" }, page.items.map((e) => h("li", null,
        h("span", { class: "what" }, h("a", { href: `#/executions/${e.id}`, text: `#${e.id}` }),
          h("span", { class: "muted", text: ` · ${e.trigger} · ${fmtAgo(e.created_at)} · ${fmtDuration(e.duration_ms)}`, title: fmtTime(e.created_at) })),
        badge(e.status))))
      : empty("This job has not run yet."));
  }).catch(toastError);
  return h("section", { class: "card", "aria-labelledby": "job-runs" },
    h("div", { class: "card-head" }, h("h2", { id: "job-runs", text: "Recent runs" }),
      h("a", { href: `#/executions?job_id=${job.id}`, text: "All runs of this job" })),
    list);
}

// ------------------------------------------------------------------ editor

function jobForm(job, servers, otherJobs, go, reload) {
  const editing = Boolean(job);
  const env = envEditor(job?.env || {});
  const secrets = secretEditor(job?.secret_env_names || []);
  const picker = serverPicker(servers, new Set(job?.server_ids || []));
  const schedule = scheduleEditor(job);
  const notify = notifyEditor(job?.notify || [], job?.id ?? null);
  const runAfter = h("select", { name: "run_after", multiple: true, size: Math.min(6, Math.max(3, otherJobs.length)) },
    otherJobs.map((j) => h("option", { value: j.id, text: j.name, selected: (job?.run_after || []).includes(j.id) })));

  const form = h("form", { class: "form", novalidate: true },
    h("p", { class: "form-error", role: "alert", "data-ref": "form-error", tabindex: "-1", hidden: true }),
    h("section", { class: "card form" },
      h("h2", { text: "General" }),
      h("div", { class: "row" },
        field("Name", input("name", job?.name, { required: true, maxlength: 100, autocomplete: "off" })),
        field("Tags", input("tags", (job?.tags || []).join(", "), { spellcheck: "false" }), "Separated by commas or spaces.")),
      field("Description", h("textarea", { name: "description", rows: 2, maxlength: 2000, value: job?.description || "" })),
      checkbox("enabled", "Enabled (a disabled job neither runs on schedule nor after other jobs)", job ? job.enabled : true)),
    h("section", { class: "card form" },
      field("Script", h("textarea", { name: "script", class: "code", rows: 14, spellcheck: "false", required: true,
        value: job?.script ?? "#!/bin/sh\nset -eu\n\necho \"hello from $(hostname)\"\n" }),
      "Runs with /bin/sh on every selected server; exit code 0 means success.")),
    h("section", { class: "card form" }, h("h2", { text: "Servers" }), picker.node),
    h("section", { class: "card form" }, h("h2", { text: "Environment" }), env.node, secrets.node),
    h("section", { class: "card form" }, h("h2", { text: "Limits" }),
      h("div", { class: "row" },
        field("Timeout (seconds)", input("timeout_seconds", job?.timeout_seconds ?? 3600, { type: "number", min: 1, max: 86400 })),
        field("Retries", input("retries", job?.retries ?? 0, { type: "number", min: 0, max: 10 }), "Failed targets are retried."),
        field("Max parallel servers", input("max_parallel", job?.max_parallel ?? 10, { type: "number", min: 1, max: 1000 })),
        field("If still running", select("concurrency", [["allow", "start another run"], ["skip", "skip the new run"], ["queue", "queue the new run"]], job?.concurrency || "allow")))),
    h("section", { class: "card form" }, h("h2", { text: "Schedule" }), schedule.node,
      otherJobs.length ? h("div", { class: "row" },
        field("Run after these jobs", runAfter, "Ctrl/Cmd-click to pick several; each of their runs can start this job."),
        field("When their run", select("run_after_condition", [["success", "succeeded"], ["failure", "failed or timed out"],
          ["always", "ended, whatever the outcome"]], job?.run_after_condition || "success"))) : null),
    h("section", { class: "card form" }, h("h2", { text: "Notifications" }), notify.node),
    h("div", { class: "form-actions" },
      h("button", { type: "submit", class: "primary", text: editing ? "Save job" : "Create job" }),
      h("a", { class: "button", href: "#/jobs", text: "Cancel" })));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const f = form.elements;
    const num = (el) => (el.value === "" ? undefined : Number(el.value));
    const body = {
      name: f.name.value.trim(),
      description: f.description.value,
      script: f.script.value,
      server_ids: picker.value(),
      env: env.value(),
      timeout_seconds: num(f.timeout_seconds),
      retries: num(f.retries),
      max_parallel: num(f.max_parallel),
      concurrency: f.concurrency.value,
      tags: splitTags(f.tags.value),
      enabled: f.enabled.checked,
      notify: notify.value(),
      ...schedule.value(),
    };
    if (otherJobs.length) {
      body.run_after = [...runAfter.selectedOptions].map((o) => Number(o.value));
      body.run_after_condition = f.run_after_condition.value;
    }
    const secretEnv = secrets.value();
    if (Object.keys(secretEnv).length) body.secret_env = secretEnv;
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    try {
      const saved = await busy(form.querySelector('[type="submit"]'),
        () => (editing ? patch(`/api/v1/jobs/${job.id}`, body) : post("/api/v1/jobs", body)));
      toast(editing ? `Saved ${saved.name}.` : `Created ${saved.name}.`);
      if (editing) reload();
      else go(`/jobs/${saved.id}`, null, { replaceEntry: true });
    } catch (err) {
      showFieldErrors(form, err);
    }
  });
  return { form, cleanup: schedule.cleanup };
}

/** Checkboxes of every server, filtered by a tag or name (selected ones stay visible). */
function serverPicker(servers, selected) {
  const filter = input("server_filter", "", { type: "search", placeholder: "tag or name", "aria-controls": "server-picker" });
  const items = servers.map((srv) => {
    const box = h("input", { type: "checkbox", value: srv.id, checked: selected.has(srv.id), id: `srv-pick-${srv.id}` });
    const row = h("label", { class: "check", for: box.id }, box,
      h("span", null, srv.name, " ", h("span", { class: "meta", text: `${srv.host}${srv.tags.length ? ` · ${srv.tags.join(", ")}` : ""}` })));
    return { srv, box, row };
  });
  const list = h("div", { class: "server-picker", id: "server-picker", role: "group", "aria-label": "Servers to run on" }, items.map((i) => i.row));
  const count = h("span", { class: "muted", "aria-live": "polite" });
  const update = () => {
    const needle = filter.value.trim().toLowerCase();
    for (const i of items) {
      const match = !needle || i.srv.name.toLowerCase().includes(needle) || i.srv.tags.some((t) => t.toLowerCase() === needle);
      i.row.hidden = !match && !i.box.checked;
    }
    count.textContent = `${items.filter((i) => i.box.checked).length} of ${items.length} selected`;
  };
  filter.addEventListener("input", update);
  list.addEventListener("change", update);
  const selectShown = h("button", { type: "button", class: "small", text: "Select all shown", on: {
    click: () => {
      items.filter((i) => !i.row.hidden).forEach((i) => { i.box.checked = true; });
      update();
    },
  } });
  update();
  const node = h("fieldset", { "data-field": "server_ids" }, h("legend", { text: "Run on" }),
    h("div", { class: "inline" }, field("Filter by tag or name", filter), selectShown, count),
    servers.length ? list : empty("No servers yet.", h("a", { href: "#/servers/new", text: "Add a server" })));
  return { node, value: () => items.filter((i) => i.box.checked).map((i) => i.srv.id) };
}

/** Cron expression, time zone, misfire policy and the next 5 runs from the server. */
function scheduleEditor(job) {
  const tzList = h("datalist", { id: "tz-list" }, ["UTC", ...(Intl.supportedValuesOf?.("timeZone") || [])].map((z) => h("option", { value: z })));
  const expr = input("schedule", job?.schedule || "", { placeholder: "e.g. */15 * * * * (empty: manual only)", spellcheck: "false",
    class: "mono", autocomplete: "off", "aria-describedby": "schedule-hint schedule-preview" });
  const tz = input("timezone", job?.timezone || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC", { list: "tz-list", spellcheck: "false", autocomplete: "off" });
  const presets = select("preset", PRESETS, "", { "aria-label": "Schedule presets" });
  const misfire = select("misfire", [["run_once", "run once"], ["skip", "skip them"]], job?.misfire || "run_once");
  const preview = h("div", { "aria-live": "polite", id: "schedule-preview" });
  let timer = null;
  let seq = 0;
  const refresh = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++seq;
      const schedule = expr.value.trim();
      expr.removeAttribute("aria-invalid");
      if (!schedule) {
        replace(preview, h("p", { class: "muted", text: "No schedule: the job runs when started by hand, through the API or after other jobs." }));
        return;
      }
      try {
        const r = await get("/api/v1/schedule/preview", { schedule, timezone: tz.value.trim() || "UTC" });
        if (mine !== seq) return;
        replace(preview, h("p", { class: "label", text: `Next runs (${r.timezone}):` }),
          h("ol", { class: "next-runs" }, r.next_runs.map((t) => h("li", { text: fmtTimeIn(t, r.timezone) }))));
      } catch (err) {
        if (mine !== seq || !(err instanceof ApiError)) return;
        const msgs = err.errors.length ? err.errors.map((e) => `${e.field}: ${e.message}`) : [err.message];
        replace(preview, h("p", { class: "field-error", id: "schedule-preview-error", text: msgs.join("; ") }));
        if (err.errors.some((e) => e.field === "schedule")) expr.setAttribute("aria-invalid", "true");
      }
    }, 350);
  };
  expr.addEventListener("input", refresh);
  tz.addEventListener("input", refresh);
  presets.addEventListener("change", () => {
    if (presets.value) expr.value = presets.value;
    presets.value = "";
    refresh();
    expr.focus();
  });
  refresh();
  const node = h("div", { class: "form" },
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { for: expr.id = "job-schedule", text: "Cron expression" }),
        h("div", { class: "inline" }, expr, presets),
        h("p", { class: "hint", id: "schedule-hint", text: "minute hour day-of-month month day-of-week, or @hourly, @daily, @weekly, @monthly." })),
      field("Time zone", tz), tzList,
      field("Slots missed while nothing ran", misfire)),
    preview);
  return {
    node,
    value: () => ({ schedule: expr.value.trim() || null, timezone: tz.value.trim() || "UTC", misfire: misfire.value }),
    cleanup: () => clearTimeout(timer),
  };
}
