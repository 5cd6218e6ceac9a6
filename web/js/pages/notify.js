// SPDX-License-Identifier: Apache-2.0
// Notifications: the editor of a job's notify items (type, URL or address,
// events, running-long factor, the write-only webhook secret, Send test) and
// the delivery log (on the job and on an execution).

import { ApiError, get, post } from "../api.js";
import { h, nextId, replace } from "../dom.js";
import { fmtAgo, fmtTime } from "../format.js";
import { busy, checkbox, empty, select, toastError } from "../ui.js";

const EVENTS = [["started", "started"], ["succeeded", "succeeded"], ["failed", "failed"], ["cancelled", "cancelled"],
  ["timed_out", "timed out"]];
const EVENT_LABELS = { ...Object.fromEntries(EVENTS), running_long: "running long", test: "test" };
const TYPE_LABELS = { webhook: "Webhook", slack: "Slack", email: "E-mail" };

/** "webhook (failed, timed out)" for a read-only view. */
export function describeNotify(n) {
  const on = (n.on || []).map((e) => (e === "running_long" ? `running longer than ${n.factor ?? 3}× the median` : EVENT_LABELS[e] || e));
  return `${TYPE_LABELS[n.type] || n.type} (${on.join(", ")})`;
}

/**
 * Rows of notify items. `jobId` (null for a new job) enables Send test.
 * value() gives the `notify` array of a create or PATCH: a webhook's secret only when typed ("" removes a stored one).
 */
export function notifyEditor(initial, jobId) {
  const rows = h("div", { class: "form" });
  const entries = [];

  const addRow = (n = { type: "webhook", on: ["failed", "timed_out"] }) => {
    const type = select("notify_type", Object.entries(TYPE_LABELS), n.type, { "aria-label": "Notification type" });
    const target = h("input", { type: "text", value: n.url || n.to || "", "aria-label": "URL or e-mail address",
      spellcheck: "false", autocomplete: "off" });
    const boxes = EVENTS.map(([v, label]) => checkbox("notify_on", label, (n.on || []).includes(v), { value: v }));
    const longBox = h("input", { type: "checkbox", name: "notify_on", value: "running_long", checked: (n.on || []).includes("running_long"),
      id: nextId("c") });
    const factor = h("input", { type: "number", class: "factor", min: 1.5, max: 100, step: 0.5, value: n.factor ?? 3,
      "aria-label": "Running long: times the median duration" });
    const long = h("span", { class: "check" }, longBox,
      h("label", { for: longBox.id, text: "running longer than" }), factor, h("span", { text: "× its median duration" }));
    const events = h("div", { class: "events", role: "group", "aria-label": "Notify on" }, boxes, long);

    // The webhook secret: write-only. Stored ones show as set, with Replace and Remove.
    const secret = { stored: Boolean(n.secret_set), removed: false, input: null };
    const secretBox = h("div", { class: "inline notify-secret" });
    const secretInput = (placeholder) => {
      secret.input = h("input", { type: "password", autocomplete: "new-password", placeholder, "aria-label": "Signing secret",
        class: "secret-input" });
      return secret.input;
    };
    const drawSecret = () => {
      secret.input = null;
      if (secret.stored && !secret.removed) {
        replace(secretBox, h("span", { class: "label", text: "Signing secret" }), h("span", { class: "badge on plain", text: "set" }),
          h("button", { type: "button", class: "small", text: "Replace", "aria-label": "Replace the signing secret",
            on: { click: () => { replace(secretBox, h("span", { class: "label", text: "Signing secret" }), secretInput("new secret (8–256 characters)"), undo()); secret.input.focus(); } } }),
          h("button", { type: "button", class: "small ghost-danger", text: "Remove", "aria-label": "Remove the signing secret",
            on: { click: () => { secret.removed = true; replace(secretBox, h("span", { class: "label", text: "Signing secret" }), h("span", { class: "badge off plain", text: "will be removed" }), undo()); } } }));
      } else {
        replace(secretBox, h("span", { class: "label", text: "Signing secret" }), secretInput("optional, 8–256 characters"),
          h("span", { class: "hint muted", text: "Signs each POST (X-Tsubame-Signature); never shown again." }));
      }
    };
    const undo = () => h("button", { type: "button", class: "small", text: "Keep the stored one",
      on: { click: () => { secret.removed = false; drawSecret(); } } });
    drawSecret();

    const result = h("p", { class: "notify-result", role: "status", "aria-live": "polite" });
    const test = h("button", { type: "button", class: "small", text: "Send test", "aria-label": "Send a test notification",
      disabled: !jobId, title: jobId ? null : "Save the job first" });
    const row = h("div", { class: "notify-row" }, type, target, test,
      h("button", { type: "button", class: "small", text: "Remove", "aria-label": "Remove this notification",
        on: { click: () => { row.remove(); entries.splice(entries.indexOf(entry), 1); } } }),
      events, secretBox, result);
    const sync = () => {
      target.placeholder = type.value === "email" ? "ops@example.com" : type.value === "slack"
        ? "https://hooks.slack.com/services/…" : "https://hooks.example.com/…";
      secretBox.hidden = type.value !== "webhook";
    };
    type.addEventListener("change", sync);
    sync();

    const entry = {
      row, type, target, events, factor, secretBox,
      value(i) {
        if (i !== undefined) {
          type.dataset.field = `notify[${i}].type`;
          target.dataset.field = `notify[${i}].${type.value === "email" ? "to" : "url"}`;
          events.dataset.field = `notify[${i}].on`;
          factor.dataset.field = `notify[${i}].factor`;
          if (secret.input) secret.input.dataset.field = `notify[${i}].secret`;
        }
        const on = [...events.querySelectorAll('input[type="checkbox"]:checked')].map((c) => c.value);
        const item = { type: type.value, on };
        if (type.value === "email") item.to = target.value.trim(); else item.url = target.value.trim();
        if (on.includes("running_long") && factor.value !== "") item.factor = Number(factor.value);
        if (type.value === "webhook") {
          if (secret.input && secret.input.value) item.secret = secret.input.value;
          else if (secret.removed) item.secret = "";
        }
        return item;
      },
    };
    test.addEventListener("click", async () => {
      result.className = "notify-result";
      replace(result, "Sending…");
      try {
        const { results } = await busy(test, () => post(`/api/v1/jobs/${jobId}/notify-test`, { item: entry.value() }));
        const r = results[0];
        const code = r.status_code ? ` (${r.type === "email" ? "SMTP" : "HTTP"} ${r.status_code})` : "";
        result.className = `notify-result ${r.ok ? "ok" : "bad"}`;
        replace(result, r.ok ? `Test sent to ${r.destination}${code}.` : `Test to ${r.destination} failed${code}: ${r.error}`);
      } catch (err) {
        result.className = "notify-result bad";
        if (err instanceof ApiError && err.errors.length) replace(result, err.errors.map((e) => `${e.field.replace(/^item\./, "")}: ${e.message}`).join("; "));
        else replace(result, err.message);
      }
    });
    rows.appendChild(row);
    entries.push(entry);
    return type;
  };

  for (const n of initial) addRow(n);
  const node = h("fieldset", { "data-field": "notify" }, h("legend", { text: "Notify" }),
    h("p", { class: "hint muted", text: "Webhook: a JSON POST, signed when it has a secret. Slack: an incoming-webhook URL. "
      + "E-mail: plain text through the server's mail settings. Sent in the background with retries; a run never waits for them." }),
    rows,
    h("div", null, h("button", { type: "button", class: "small", text: "Add notification", on: { click: () => addRow().focus() } })));
  return { node, value: () => entries.map((e, i) => e.value(i)) };
}

const DELIVERY_LABELS = { pending: "Pending", sent: "Sent", failed: "Failed" };

/**
 * The delivery log for `query` ({job_id} or {execution_id}), newest first, with Refresh and Load more.
 * @returns {{node: HTMLElement, reload: () => void}}
 */
export function deliveryLog(query, signal, { title = "Notifications", emptyText, showExecution = true } = {}) {
  const titleId = nextId("dl");
  const body = h("div", null, h("p", { class: "loading", text: "Loading notifications…" }));
  let cursor = null;
  let items = [];
  const more = h("button", { type: "button", class: "small", text: "Load more", hidden: true });
  const draw = () => {
    if (!items.length) {
      replace(body, empty(emptyText || "No notifications yet."));
      return;
    }
    replace(body, h("div", { class: "table-wrap" }, h("table", { "aria-labelledby": titleId },
      h("thead", null, h("tr", null, ["When", "Event", "Type", "Destination", "Status", "Attempts", "Details"].map((t, i) =>
        h("th", { class: [i === 5 && "num", (i === 2 || i === 5) && "hide-sm"], text: t })))),
      h("tbody", null, items.map((d) => h("tr", null,
        h("td", { text: fmtAgo(d.created_at), title: fmtTime(d.created_at) }),
        h("td", null, EVENT_LABELS[d.event] || d.event,
          showExecution && d.execution_id ? [" ", h("a", { href: `#/executions/${d.execution_id}`, text: `#${d.execution_id}` })] : ""),
        h("td", { class: "hide-sm", text: TYPE_LABELS[d.type] || d.type }),
        h("td", { class: "wrap-anywhere mono", text: d.destination }),
        h("td", null, h("span", { class: ["badge", `dl-${d.status}`], text: DELIVERY_LABELS[d.status] || d.status })),
        h("td", { class: "num hide-sm", text: d.attempts }),
        h("td", { class: "wrap-anywhere" }, details(d))))))), more);
  };
  const load = async (reset) => {
    try {
      const page = await get("/api/v1/notifications", { ...query, limit: 20, cursor: reset ? null : cursor }, signal);
      items = reset ? page.items : items.concat(page.items);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      draw();
    } catch (err) {
      toastError(err);
    }
  };
  more.addEventListener("click", () => busy(more, () => load(false)));
  const refresh = h("button", { type: "button", class: "small", text: "Refresh", "aria-label": "Refresh the notifications",
    on: { click: () => busy(refresh, () => load(true)) } });
  load(true);
  const node = h("section", { class: "card", "aria-labelledby": titleId },
    h("div", { class: "card-head" }, h("h2", { id: titleId, text: title }), refresh), body);
  return { node, reload: () => load(true) };
}

function details(d) {
  const code = d.response_code ? `${d.type === "email" ? "SMTP" : "HTTP"} ${d.response_code}` : "";
  if (d.status === "sent") return `${code}${d.sent_at ? ` · ${fmtTime(d.sent_at)}` : ""}`;
  const parts = [];
  if (d.last_error) parts.push(d.last_error);
  if (d.status === "pending") parts.push(d.next_attempt_at ? `next attempt ${fmtAgo(d.next_attempt_at)}` : "sending");
  return parts.join(" · ") || code;
}
