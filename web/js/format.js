// SPDX-License-Identifier: Apache-2.0
// Times, durations and numbers as the UI shows them (the browser's locale
// and time zone; the API speaks RFC 3339 UTC).

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

/** "29 Nov 2026, 23:14:53" in the browser's zone, or "—". */
export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : dateTime.format(d);
}

/** A time in the given IANA zone (the cron preview), with the zone's name. */
export function fmtTimeIn(iso, timeZone) {
  try {
    return new Intl.DateTimeFormat(undefined, {
      weekday: "short", year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", timeZone, timeZoneName: "short",
    }).format(new Date(iso));
  } catch {
    return fmtTime(iso);
  }
}

/** "3 min ago", "in 2 h". */
export function fmtAgo(iso, now = Date.now()) {
  if (!iso) return "—";
  const seconds = (new Date(iso).getTime() - now) / 1000;
  const abs = Math.abs(seconds);
  if (abs < 45) return relative.format(Math.round(seconds), "second");
  if (abs < 2700) return relative.format(Math.round(seconds / 60), "minute");
  if (abs < 64800) return relative.format(Math.round(seconds / 3600), "hour");
  return relative.format(Math.round(seconds / 86400), "day");
}

/** 850 ms, 12.3 s, 4 min 05 s, 1 h 02 min. */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/** The duration of something that may still run: from start to end, or to now. */
export function elapsedMs(startIso, endIso, now = Date.now()) {
  if (!startIso) return null;
  const end = endIso ? new Date(endIso).getTime() : now;
  return Math.max(0, end - new Date(startIso).getTime());
}

export function fmtPercent(rate) {
  return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(rate === 1 ? 0 : 1)} %`;
}

const STATUS_LABELS = {
  queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed",
  cancelled: "Cancelled", timed_out: "Timed out",
};
export const FINISHED = new Set(["succeeded", "failed", "cancelled", "timed_out"]);
export const STATUSES = Object.keys(STATUS_LABELS);

export function statusLabel(status) {
  return STATUS_LABELS[status] || String(status);
}

/** datetime-local value <-> RFC 3339 UTC. */
export function localInputToIso(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

export function isoToLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
