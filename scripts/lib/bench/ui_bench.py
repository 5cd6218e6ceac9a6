# SPDX-License-Identifier: Apache-2.0
"""scripts/bench ui: the web UI in Debian's Chromium (Playwright), against a stack scripts/bench started.

Figures (not tests):
  open_100mb_log_ms  navigation -> the last line of a finished 100 MB log visible (median of 5 page loads;
                     400 chunks of 256 KiB, written in SQL with repeat() as Tests/http/test_12_live.py does)
  follow_*           a running execution getting 10,000 lines a second (a chunk of 1,000 lines every 0.1 s,
                     appended in SQL with NOTIFY, as the executor does) for 60 s while a tab follows it:
                     the tab's memory (PSS of its renderer process; also its JS heap, and for reference all of
                     Chromium's processes, which idle at about 400 MB here) and the lag from a chunk's commit
                     to its last line being in the page, early vs late
  dashboard_bytes    first load of the dashboard (empty cache): bytes of every response body, uncompressed;
                     requests to other origins are counted (must be 0)
Prints a table and, as its last line, one JSON object. No executor runs: nothing connects anywhere.

Environment: BENCH_BASE_URL, BENCH_ADMIN_PASSWORD, BENCH_PSQL, BENCH_DB_URL, BENCH_FOLLOW_SECONDS (60),
BENCH_FOLLOW_RATE (10000 lines/s), BENCH_LOG_CHUNKS (400), BENCH_CHROMIUM (/usr/bin/chromium).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from playwright.sync_api import expect, sync_playwright

BASE = os.environ["BENCH_BASE_URL"].rstrip("/")
PSQL = [os.environ["BENCH_PSQL"], "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", os.environ["BENCH_DB_URL"]]
FOLLOW_SECONDS = int(os.environ.get("BENCH_FOLLOW_SECONDS", "60"))
RATE = int(os.environ.get("BENCH_FOLLOW_RATE", "10000"))
CHUNKS = int(os.environ.get("BENCH_LOG_CHUNKS", "400"))
CHROMIUM = os.environ.get("BENCH_CHROMIUM", "/usr/bin/chromium")
MARKER = "end of the 100 MB log"
# One 100-byte line; 2,621 of them make a 256 KiB chunk.
LINE = "chunk %s: the quick brown fox jumps over the lazy dog while the build keeps printing output...."


def log(msg: str) -> None:
    print(f"==> ui: {msg}", file=sys.stderr, flush=True)


def psql(sql: str) -> str:
    r = subprocess.run(PSQL + ["-t", "-A"], input=sql, text=True, capture_output=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"psql failed: {r.stderr}\n{sql[:500]}")
    return r.stdout.strip()


class Api:
    def __init__(self, password: str) -> None:
        self.s = requests.Session()
        r = self.s.post(BASE + "/api/v1/auth/login", json={"username": "admin", "password": password}, timeout=30)
        r.raise_for_status()
        self.s.headers.update({"X-CSRF-Token": r.json()["csrf_token"], "Cookie": r.headers["Set-Cookie"].split(";", 1)[0]})

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        r = self.s.request(method, BASE + path, json=body, timeout=60)
        if r.status_code >= 300:
            sys.exit(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else {}


def seed(api: Api) -> tuple[int, int]:
    # Never connected to: no executor runs in this benchmark.
    server = api.call("POST", "/api/v1/servers", {"name": f"bench-ui-{os.getpid()}", "host": "127.0.0.1", "port": 9, "username": "nobody",
                                                  "auth_method": "password", "password": "unused-password"})
    job = api.call("POST", "/api/v1/jobs", {"name": f"bench-ui-log-{os.getpid()}", "script": "true\n", "server_ids": [server["id"]]})
    big = api.call("POST", f"/api/v1/jobs/{job['id']}/run", {})["id"]
    live = api.call("POST", f"/api/v1/jobs/{job['id']}/run", {})["id"]
    log(f"seeding execution {big} with {CHUNKS} chunks of 256 KiB")
    started = time.monotonic()
    psql(f"""
        BEGIN;
        UPDATE execution_targets SET status = 'succeeded', exit_code = 0, started_at = now() - interval '5 min',
               finished_at = now() WHERE execution_id = {big};
        INSERT INTO log_chunks (execution_id, seq, server_id, stream, data)
        SELECT {big}, g, {server['id']}, 'stdout',
               repeat(format('{LINE}' || E'\\n', lpad(g::text, 4, '0')), 2621)
               || CASE WHEN g = {CHUNKS} THEN '{MARKER}' || E'\\n' ELSE '' END
        FROM generate_series(1, {CHUNKS}) AS g;
        UPDATE executions SET last_seq = {CHUNKS}, status = 'succeeded', exit_code = 0,
               output_bytes = (SELECT sum(octet_length(data)) FROM log_chunks WHERE execution_id = {big}),
               started_at = now() - interval '5 min', finished_at = now() WHERE id = {big};
        COMMIT;
        """)
    size = int(psql(f"SELECT sum(octet_length(data)) FROM log_chunks WHERE execution_id = {big}"))
    log(f"seeded {size / 1e6:.1f} MB in {time.monotonic() - started:.1f} s")
    psql(f"""
        UPDATE execution_targets SET status = 'running', executor_id = 'bench-ui', lease_expires_at = now() + interval '1 hour',
               started_at = now(), attempt = 1 WHERE execution_id = {live};
        UPDATE executions SET status = 'running', started_at = now() WHERE id = {live};
        """)
    return big, live


# ------------------------------------------------------------------ memory of the browser's processes


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            out.append(c)
            todo.append(c)
    return out


def chromium_memory() -> tuple[float, dict[int, float]]:
    """PSS in MB of every Chromium process under this one, and of each renderer process by pid."""
    total = 0.0
    renderers: dict[int, float] = {}
    for pid in descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"chrom" not in cmd.split(b"\0")[0].split(b" ")[0]:
                continue
            pss = next(int(l.split()[1]) for l in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if l.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
        total += pss / 1024
        # Chromium rewrites its children's command lines into one string: search the raw bytes.
        if b"--type=renderer" in cmd:
            renderers[pid] = pss / 1024
    return total, renderers


# ------------------------------------------------------------------ measurements


def dashboard_bytes(browser, state: dict) -> dict:
    ctx = browser.new_context(base_url=BASE, storage_state=state, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    seen: dict[str, int] = {}
    foreign: list[str] = []

    def finished(request) -> None:
        if not request.url.startswith(BASE):
            return
        response = request.response()
        if response is not None:
            seen[request.url] = seen.get(request.url, 0) + len(response.body())

    page.on("requestfinished", finished)
    page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(BASE) and not r.url.startswith("data:") else None)
    page.goto("/")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible(timeout=15000)
    expect(page.locator("main .loading")).to_have_count(0, timeout=15000)
    page.wait_for_timeout(500)
    ctx.close()
    static = sum(v for k, v in seen.items() if "/api/" not in k)
    return {"dashboard_bytes": sum(seen.values()), "dashboard_static_bytes": static,
            "dashboard_requests": len(seen), "external_requests": len(set(foreign))}


LAST_LINE_VISIBLE = """m => {
  const log = document.querySelector('.log');
  const last = log && log.lastElementChild;
  if (!last || last.textContent !== m) return false;
  const r = last.getBoundingClientRect(), b = document.querySelector('.log-scroll').getBoundingClientRect();
  return r.bottom <= b.bottom + 1 && r.top >= b.top - 1;
}"""


def open_big_log(page, eid: int) -> dict:
    loads, navs = [], []
    for _ in range(5):
        page.goto("about:blank")
        t0 = time.perf_counter()
        page.goto(f"{BASE}/#/executions/{eid}")
        page.wait_for_function(LAST_LINE_VISIBLE, arg=MARKER, polling="raf", timeout=30000)
        loads.append((time.perf_counter() - t0) * 1000)
    for _ in range(5):  # in-app: from the executions list, as a click does
        page.goto(f"{BASE}/#/executions")
        expect(page.get_by_role("heading", name="Executions", level=1)).to_be_visible()
        t0 = time.perf_counter()
        page.evaluate(f"location.hash = '#/executions/{eid}'")
        page.wait_for_function(LAST_LINE_VISIBLE, arg=MARKER, polling="raf", timeout=30000)
        navs.append((time.perf_counter() - t0) * 1000)
    lines = page.evaluate("document.querySelector('.log').childElementCount")
    return {"open_100mb_log_ms": round(statistics.median(loads)), "open_100mb_log_max_ms": round(max(loads)),
            "open_100mb_log_in_app_ms": round(statistics.median(navs)), "open_100mb_rendered_lines": lines}


class Appender(threading.Thread):
    """Appends RATE lines a second to an execution, a chunk every 0.1 s, through one psql session."""

    def __init__(self, eid: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.eid, self.seconds = eid, seconds
        self.batches = 0
        self.late = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        per = RATE // 10
        proc = subprocess.Popen(PSQL, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        start = time.monotonic()
        n = 0
        while not self.stop.is_set() and time.monotonic() - start < self.seconds:
            due = start + self.batches * 0.1
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.late = max(self.late, -delay)
            first = n + 1
            n += per
            proc.stdin.write(f"""
BEGIN;
WITH u AS (UPDATE executions SET last_seq = last_seq + 1 WHERE id = {self.eid} RETURNING last_seq)
INSERT INTO log_chunks (execution_id, seq, server_id, stream, data)
SELECT {self.eid}, u.last_seq, NULL, 'stdout',
       (SELECT string_agg(format('%s  line %s of the follow benchmark: compiling module %s ... ok', to_char(clock_timestamp(), 'HH24:MI:SS.MS'), i, i % 97), E'\\n')
        FROM generate_series({first}, {n - 1}) AS i)
       || E'\\ntick ' || (extract(epoch FROM clock_timestamp()) * 1000)::bigint || E'\\n'
FROM u;
COMMIT;
SELECT pg_notify('tsubame_log', id || ':' || last_seq) FROM executions WHERE id = {self.eid};
""")
            proc.stdin.flush()
            self.batches += 1
        proc.stdin.close()
        proc.wait(timeout=60)


class RawTab:
    """A tab Playwright does not drive: Playwright enables the DevTools Network domain on its pages, and Blink
    then keeps every fetch response body for the inspector (up to 100 MB), which is not the page's memory. This
    tab lives in a browser context made over the browser's own CDP session and is reached with
    Target.sendMessageToTarget; only Runtime.evaluate is used in it."""

    def __init__(self, browser, cookie: tuple[str, str], url: str) -> None:
        self.cdp = browser.new_browser_cdp_session()
        self.context = self.cdp.send("Target.createBrowserContext")["browserContextId"]
        host = BASE.split("//", 1)[1].split(":", 1)[0]
        self.cdp.send("Storage.setCookies", {"browserContextId": self.context, "cookies": [
            {"name": cookie[0], "value": cookie[1], "domain": host, "path": "/", "httpOnly": True}]})
        self.before = set(chromium_memory()[1])
        target = self.cdp.send("Target.createTarget", {"url": url, "browserContextId": self.context})["targetId"]
        self.session = self.cdp.send("Target.attachToTarget", {"targetId": target, "flatten": False})["sessionId"]
        self.answers: dict[int, dict] = {}
        self.next_id = 0
        self.cdp.on("Target.receivedMessageFromTarget", self._message)

    def _message(self, event: dict) -> None:
        message = json.loads(event["message"])
        if "id" in message:
            self.answers[message["id"]] = message

    def evaluate(self, expression: str, timeout: float = 10):
        self.next_id += 1
        mid = self.next_id
        self.cdp.send("Target.sendMessageToTarget", {"sessionId": self.session, "message": json.dumps({
            "id": mid, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": True, "awaitPromise": True}})})
        deadline = time.monotonic() + timeout
        while mid not in self.answers:
            if time.monotonic() > deadline:
                raise TimeoutError(expression)
            self.cdp.send("Browser.getVersion")  # lets Playwright deliver the events that arrived
            time.sleep(0.005)
        answer = self.answers.pop(mid)
        if "exceptionDetails" in answer.get("result", {}):
            raise RuntimeError(f"{expression}: {answer['result']['exceptionDetails']}")
        return answer["result"]["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(expression)
            time.sleep(0.05)

    def renderer(self) -> int:
        """Which new renderer process hosts the page (a new context also brings a spare one): the one that grows
        when the page holds 64 MB more for a moment."""
        candidates = set(chromium_memory()[1]) - self.before
        base = chromium_memory()[1]
        self.evaluate("window.__probe = new Uint8Array(64 << 20).fill(1), 1")
        grown = chromium_memory()[1]
        self.evaluate("delete window.__probe, gc(), 1")
        pid = max(candidates, key=lambda p: grown.get(p, 0) - base.get(p, 0))
        assert grown.get(pid, 0) - base.get(pid, 0) > 48, (base, grown)
        return pid

    def close(self) -> None:
        self.cdp.send("Target.disposeBrowserContext", {"browserContextId": self.context})


SAMPLE = """(() => {
  const log = document.querySelector('.log');
  const last = log && log.lastElementChild;
  const text = last ? last.textContent : '';
  const tick = text.startsWith('tick ') ? Number(text.slice(5)) : null;
  return {lines: log ? log.childElementCount : 0, lag: tick ? Date.now() - tick : null,
          heap_mb: performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null,
          nodes: document.getElementsByTagName('*').length};
})()"""


def follow(browser, cookie: tuple[str, str], eid: int) -> dict:
    tab = RawTab(browser, cookie, f"{BASE}/#/executions/{eid}")
    tab.wait_for("document.title.startsWith('bench-ui-log-') && !!document.querySelector('.log')")
    pid = tab.renderer()
    log(f"the tab's renderer process: {pid}")
    appender = Appender(eid, FOLLOW_SECONDS)
    appender.start()
    samples = []
    start = time.monotonic()
    while True:
        time.sleep(1)
        if not appender.is_alive():
            break
        s = tab.evaluate(SAMPLE)
        total, renderers = chromium_memory()
        s.update(t=time.monotonic() - start, total_mb=total, renderer_mb=renderers.get(pid, 0.0))
        samples.append(s)
        log(f"follow t={s['t']:4.0f}s lines={s['lines']} lag={s['lag']} ms tab={s['renderer_mb']:.0f} MB "
            f"heap={s['heap_mb']:.1f} MB nodes={s['nodes']} (all of Chromium: {total:.0f} MB)")
    appender.join()
    tab.close()
    lags = [s for s in samples if s["lag"] is not None]
    early = [s["lag"] for s in lags if s["t"] <= 15]
    late = [s["lag"] for s in lags if s["t"] > samples[-1]["t"] - 15]
    return {
        "follow_seconds": FOLLOW_SECONDS, "follow_rate_lines_s": RATE, "follow_batches": appender.batches,
        "follow_appender_late_ms": round(appender.late * 1000),
        "follow_peak_mb": round(max(s["renderer_mb"] for s in samples), 1),
        "follow_start_mb": round(samples[0]["renderer_mb"], 1), "follow_end_mb": round(samples[-1]["renderer_mb"], 1),
        "follow_js_heap_peak_mb": round(max(s["heap_mb"] or 0 for s in samples), 1),
        "chromium_all_processes_peak_mb": round(max(s["total_mb"] for s in samples), 1),
        "follow_max_lines": max(s["lines"] for s in samples),
        "follow_max_nodes": max(s["nodes"] for s in samples),
        "follow_lag_p50_early_ms": round(statistics.median(early)) if early else None,
        "follow_lag_p50_late_ms": round(statistics.median(late)) if late else None,
        "follow_lag_max_ms": max(s["lag"] for s in lags) if lags else None,
    }


def main() -> None:
    api = Api(os.environ["BENCH_ADMIN_PASSWORD"])
    big, live = seed(api)
    results: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--enable-precise-memory-info", "--js-flags=--expose-gc"])
        ctx = browser.new_context(base_url=BASE, viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        page.goto("/")
        page.get_by_label("Username", exact=True).fill("admin")
        page.get_by_label("Password", exact=True).fill(os.environ["BENCH_ADMIN_PASSWORD"])
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        state = ctx.storage_state()
        log("dashboard first load")
        results.update(dashboard_bytes(browser, state))
        log("opening the 100 MB log")
        results.update(open_big_log(page, big))
        ctx.close()
        log(f"following {RATE} lines/s for {FOLLOW_SECONDS} s")
        cookie = next((c["name"], c["value"]) for c in state["cookies"] if c["name"] == "tsubame_session")
        results.update(follow(browser, cookie, live))
        browser.close()
    psql(f"""
        UPDATE execution_targets SET status = 'cancelled', finished_at = now() WHERE execution_id = {live};
        UPDATE executions SET status = 'cancelled', finished_at = now() WHERE id = {live};
        """)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
