// SPDX-License-Identifier: Apache-2.0
// Dashboard: counts, success rate, the last 14 days by status, durations of
// recent runs, running executions (live, from the events long-poll) and
// recent failures with one click to their log.

import { get } from "../api.js";
import { h, replace, s } from "../dom.js";
import { elapsedMs, fmtAgo, fmtDuration, fmtPercent, fmtTime, FINISHED, statusLabel } from "../format.js";
import { follow } from "../longpoll.js";
import { badge, empty, loading, pageHead, toastError } from "../ui.js";

const CHART_STATUSES = ["succeeded", "failed", "timed_out", "cancelled"];

export async function render({ main, signal, can }) {
  document.title = "Dashboard · tsubame-ci";
  const tiles = h("div", { class: "tiles" }, loading());
  const chart = h("div", { class: "chart" }, loading());
  const durations = h("div", { class: "chart" }, loading());
  const runningList = h("div", null, loading());
  const failures = h("div", null, loading());
  const liveNote = h("span", { class: "muted", "aria-live": "polite" });
  main.append(
    pageHead("Dashboard", "What ran, what runs now, what failed.",
      can("operator") ? h("a", { class: "button primary", href: "#/jobs/new", text: "New job" }) : null),
    tiles,
    h("div", { class: "grid two" },
      h("section", { class: "card", "aria-labelledby": "dash-chart" },
        h("h2", { id: "dash-chart", text: "Last 14 days" }), chart),
      h("section", { class: "card", "aria-labelledby": "dash-running" },
        h("div", { class: "card-head" }, h("h2", { id: "dash-running", text: "Running now" }), liveNote), runningList)),
    h("div", { class: "grid two" },
      h("section", { class: "card", "aria-labelledby": "dash-dur" },
        h("h2", { id: "dash-dur", text: "Durations of recent runs" }), durations),
      h("section", { class: "card", "aria-labelledby": "dash-fail" },
        h("div", { class: "card-head" }, h("h2", { id: "dash-fail", text: "Recent failures" }),
          h("a", { href: "#/executions?status=failed", text: "All failures" })),
        failures)),
  );

  const running = new Map();
  let cursor = 0;
  const refreshStats = debounce(() => loadStats(tiles, chart, signal).catch(toastError), 800);
  const refreshRecent = debounce(() => loadRecent(durations, failures, signal).catch(toastError), 800);

  // The events cursor first, then the lists: nothing between is missed.
  try {
    cursor = (await get("/api/v1/events", { wait: 0 }, signal)).next;
  } catch (err) {
    toastError(err);
  }
  await Promise.all([
    loadStats(tiles, chart, signal),
    loadRecent(durations, failures, signal),
    loadRunning(running, signal),
  ]);
  drawRunning(runningList, running);

  const ticker = setInterval(() => drawRunning(runningList, running), 1000);
  follow({
    signal,
    fetchPage: (sig) => get("/api/v1/events", { after: cursor, wait: 25 }, sig),
    onPage: (page) => {
      cursor = page.next;
      let finished = false;
      for (const event of page.events) {
        const e = event.execution;
        if (!e) continue;
        if (FINISHED.has(e.status)) {
          running.delete(e.id);
          finished = true;
        } else {
          running.set(e.id, e);
        }
      }
      if (page.events.length) {
        drawRunning(runningList, running);
        refreshStats();
        if (finished) refreshRecent();
      }
      liveNote.textContent = "live";
    },
    onError: (err, ms) => {
      liveNote.textContent = `reconnecting in ${Math.round(ms / 1000)} s…`;
    },
  });
  return () => clearInterval(ticker);
}

// ------------------------------------------------------------------ stats

async function loadStats(tiles, chart, signal) {
  const stats = await get("/api/v1/stats", { days: 14 }, signal);
  const tile = (label, value, href) => h("div", { class: "tile" },
    h("a", { href }, h("div", { class: "label", text: label }), h("div", { class: "value", text: value })));
  replace(tiles,
    tile("Servers", stats.servers, "#/servers"),
    tile("Jobs", stats.jobs, "#/jobs"),
    tile("Running now", stats.running, "#/executions?status=running"),
    tile("Success rate (14 days)", fmtPercent(stats.success_rate), "#/executions"));
  replace(chart, dailyChart(stats.daily || []));
}

/** Stacked bars per day, built with DOM APIs; a hidden table for screen readers. */
function dailyChart(days) {
  if (!days.length) return empty("No runs in the last 14 days.");
  const W = 640, H = 220, left = 34, bottom = 24, top = 8;
  const max = Math.max(1, ...days.map((d) => CHART_STATUSES.reduce((n, k) => n + (d[k] || 0), 0)));
  const step = niceStep(max);
  const yMax = Math.ceil(max / step) * step;
  const plotH = H - bottom - top;
  const slot = (W - left) / days.length;
  const barW = Math.max(4, slot * 0.62);
  const y = (v) => top + plotH - (v / yMax) * plotH;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Executions per day, last 14 days, by status" });
  for (let v = 0; v <= yMax; v += step) {
    svg.append(s("line", { class: "grid-line", x1: left, x2: W, y1: y(v), y2: y(v) }),
      s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", text: v }));
  }
  days.forEach((d, i) => {
    const x = left + i * slot + (slot - barW) / 2;
    let base = 0;
    for (const k of CHART_STATUSES) {
      const n = d[k] || 0;
      if (!n) continue;
      svg.append(s("rect", { class: `b-${k}`, x, width: barW, y: y(base + n), height: Math.max(1, y(base) - y(base + n)) },
        s("title", { text: `${d.date}: ${n} ${statusLabel(k).toLowerCase()}` })));
      base += n;
    }
    if (i % 2 === days.length % 2 || days.length <= 7) {
      svg.append(s("text", { x: left + i * slot + slot / 2, y: H - 6, "text-anchor": "middle", text: d.date.slice(5) }));
    }
  });
  svg.append(s("line", { class: "axis", x1: left, x2: W, y1: y(0), y2: y(0) }));
  const table = h("table", { class: "sr-only" },
    h("caption", { text: "Executions per day" }),
    h("thead", null, h("tr", null, h("th", { text: "Date" }), CHART_STATUSES.map((k) => h("th", { text: statusLabel(k) })))),
    h("tbody", null, days.map((d) => h("tr", null, h("td", { text: d.date }), CHART_STATUSES.map((k) => h("td", { text: d[k] || 0 }))))));
  const legend = h("ul", { class: "legend" }, CHART_STATUSES.map((k) => h("li", { class: `k-${k}`, text: statusLabel(k) })));
  return [svg, legend, table];
}

function niceStep(max) {
  const raw = max / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return Math.max(1, (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag);
}

// ------------------------------------------------------------------ recent runs

async function loadRecent(durations, failures, signal) {
  const [recent, failed, timedOut] = await Promise.all([
    get("/api/v1/executions", { limit: 60 }, signal),
    get("/api/v1/executions", { status: "failed", limit: 6 }, signal),
    get("/api/v1/executions", { status: "timed_out", limit: 6 }, signal),
  ]);
  const finished = recent.items.filter((e) => FINISHED.has(e.status) && e.duration_ms !== null).slice(0, 24).reverse();
  replace(durations, finished.length ? durationChart(finished) : empty("Durations appear here once runs finish."));
  const fails = [...failed.items, ...timedOut.items]
    .sort((a, b) => (b.created_at > a.created_at ? 1 : -1)).slice(0, 6);
  replace(failures, fails.length
    ? h("ul", { class: "list" }, fails.map((e) => h("li", null,
      h("span", { class: "what" },
        h("a", { href: `#/executions/${e.id}`, text: `${e.job_name} #${e.id}`, "aria-label": `Log of ${e.job_name} run ${e.id}` }),
        h("br"), h("span", { class: "muted", text: `${fmtAgo(e.finished_at || e.created_at)} · exit ${e.exit_code ?? "—"}`, title: fmtTime(e.finished_at) })),
      badge(e.status),
      h("a", { class: "button small", href: `#/executions/${e.id}`, text: "Open log" }))))
    : empty("No failures recently. Nice."));
}

function durationChart(runs) {
  const W = 640, H = 200, left = 58, bottom = 10, top = 8;
  const max = Math.max(1, ...runs.map((e) => e.duration_ms));
  const plotH = H - bottom - top;
  const slot = (W - left) / runs.length;
  const barW = Math.max(4, slot * 0.66);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Durations of the last ${runs.length} finished runs` });
  for (const frac of [0, 0.5, 1]) {
    const yy = top + plotH - frac * plotH;
    svg.append(s("line", { class: "grid-line", x1: left, x2: W, y1: yy, y2: yy }),
      s("text", { x: left - 6, y: yy + 4, "text-anchor": "end", text: shortDuration(max * frac) }));
  }
  runs.forEach((e, i) => {
    const hgt = Math.max(2, (e.duration_ms / max) * plotH);
    const label = `${e.job_name} #${e.id}: ${fmtDuration(e.duration_ms)}, ${statusLabel(e.status).toLowerCase()}`;
    svg.append(s("a", { href: `#/executions/${e.id}`, "aria-label": label },
      s("rect", { class: ["b-duration", e.status !== "succeeded" && "failed"], x: left + i * slot + (slot - barW) / 2,
        y: top + plotH - hgt, width: barW, height: hgt }, s("title", { text: label }))));
  });
  return svg;
}

// ------------------------------------------------------------------ running now

async function loadRunning(running, signal) {
  const [r, q] = await Promise.all([
    get("/api/v1/executions", { status: "running", limit: 50 }, signal),
    get("/api/v1/executions", { status: "queued", limit: 50 }, signal),
  ]);
  for (const e of [...q.items, ...r.items]) running.set(e.id, e);
}

function drawRunning(list, running) {
  if (!running.size) {
    replace(list, empty("Nothing is running right now.", h("a", { class: "button", href: "#/jobs", text: "Run a job" })));
    return;
  }
  const items = [...running.values()].sort((a, b) => b.id - a.id).slice(0, 12);
  replace(list, h("ul", { class: "list" }, items.map((e) => h("li", null,
    h("span", { class: "what" }, h("a", { href: `#/executions/${e.id}`, text: `${e.job_name} #${e.id}` }),
      h("br"), h("span", { class: "muted", text: e.status === "queued"
        ? (e.waiting_reason || "waiting to start")
        : `running for ${fmtDuration(elapsedMs(e.started_at, null))} on ${e.targets?.length ?? 0} server(s)` })),
    badge(e.status)))),
  running.size > 12 ? h("p", { class: "muted", text: `and ${running.size - 12} more` }) : null);
}

/** Axis labels: 0, 850 ms, 12 s, 3.6 min, 1.2 h. */
function shortDuration(ms) {
  if (ms === 0) return "0";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${Math.round(ms / 1000)} s`;
  if (ms < 3600000) return `${(ms / 60000).toFixed(1)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}
