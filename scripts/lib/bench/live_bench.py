# SPDX-License-Identifier: MIT
"""Measurements of `scripts/bench live`: lines printed on SSH targets reaching
thousands of long-polling watchers through nginx, and what parked watchers
cost the rest of the API.

Run by scripts/bench with the stack, a 10-sshd loopback fleet and one
executor already started; not meant to be run by hand. Settings come from
the environment (BENCH_*). Standard library only. Progress goes to stderr;
the last line on stdout is one JSON object with the figures.

latency   For N in BENCH_WAITERS (1, 100, 1000, 2000): min(N, 10) executions
          of a job that prints `date +%s.%N` on its target every PERIOD
          seconds; N clients (asyncio, one keep-alive HTTP/1.1 connection
          each, spread round-robin over the executions) follow the log with
          `after=<next_seq>&wait=30`. For every line a client receives, its
          latency is the time the response was read minus the time the
          target printed it (same machine, same clock). Lines printed
          before every client was parked are not counted.
crud      wrk on GET /api/v1/jobs?limit=50 (bearer token) for BENCH_DURATION
          seconds with no watcher, then with BENCH_CRUD_WAITERS (2000)
          watchers parked on executions that print nothing.
resources PostgreSQL backends of the database and the workers' RSS, idle
          and with the watchers parked.
"""

import asyncio
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

ENV = os.environ
BASE = ENV["BENCH_BASE_URL"]
U = urlsplit(BASE)
PORTS = [int(p) for p in ENV["BENCH_PORTS"].split(",") if p][:10]
USER = ENV["BENCH_SSH_USER"]
KEY = ENV["BENCH_SSH_KEY"]
WAITERS = [int(n) for n in ENV.get("BENCH_WAITERS", "1,100,1000,2000").split(",")]
CRUD_WAITERS = int(ENV.get("BENCH_CRUD_WAITERS", "2000"))
DURATION = int(ENV.get("BENCH_DURATION", "15"))
CONNECTIONS = int(ENV.get("BENCH_CONNECTIONS", "64"))
THREADS = int(ENV.get("BENCH_THREADS", "2"))
PSQL = ENV["BENCH_PSQL"]
DB_URL = ENV["BENCH_DB_URL"]
MEASURE = float(ENV.get("BENCH_MEASURE_SECONDS", "8"))
# Watcher processes at most (one per 250 watchers): one Python event loop serving 2,000 watchers adds its own delay.
PROCESSES = int(ENV.get("BENCH_WATCHER_PROCESSES", "4"))
ERRORS = []


def log(msg):
    print(f"    {msg}", file=sys.stderr, flush=True)


def pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else None


class API:
    def __init__(self, token=None):
        self.conn = http.client.HTTPConnection(U.hostname, U.port, timeout=60)
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = "Bearer " + token

    def call(self, method, path, body=None, headers=None, want=(200, 201, 202)):
        h = dict(self.headers, **(headers or {}))
        if body is not None:
            h["Content-Type"] = "application/json"
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=h)
        r = self.conn.getresponse()
        raw = r.read()
        if r.status not in want:
            raise RuntimeError(f"{method} {path}: HTTP {r.status} {raw[:300]!r}")
        return r, (json.loads(raw) if raw else None)


def setup():
    a = API()
    r, me = a.call("POST", "/api/v1/auth/login", {"username": "admin", "password": ENV["BENCH_ADMIN_PASSWORD"]})
    cookie = r.getheader("Set-Cookie").split(";", 1)[0]
    _, tok = a.call("POST", "/api/v1/tokens", {"name": "bench-live"}, {"Cookie": cookie, "X-CSRF-Token": me["csrf_token"]})
    a = API(tok["token"])
    key = open(KEY).read()
    servers = []
    for i, port in enumerate(PORTS):
        _, s = a.call("POST", "/api/v1/servers", {"name": f"live-{i:02d}", "host": "127.0.0.1", "port": port,
                                                  "username": USER, "auth_method": "key", "private_key": key})
        servers.append(s["id"])
    return a, tok["token"], servers


def job(a, name, script, server):
    _, j = a.call("POST", "/api/v1/jobs", {"name": name, "script": script, "server_ids": [server], "timeout_seconds": 600})
    return j["id"]


def ticker(period, seconds):
    return (f"end=$(( $(date +%s) + {int(seconds)} ))\n"
            f"while [ \"$(date +%s)\" -lt \"$end\" ]; do date +%s.%N; sleep {period}; done\n")


def start_runs(a, jobs):
    ids = [a.call("POST", f"/api/v1/jobs/{j}/run")[1]["id"] for j in jobs]
    deadline = time.time() + 30
    while True:
        states = [a.call("GET", f"/api/v1/executions/{e}")[1]["status"] for e in ids]
        if all(s == "running" for s in states):
            return ids
        if time.time() > deadline or any(s not in ("queued", "running") for s in states):
            raise RuntimeError(f"executions did not all start: {states}")
        time.sleep(0.1)


def cancel(a, ids):
    for e in ids:
        a.call("POST", f"/api/v1/executions/{e}/cancel", want=(202, 409))


# ------------------------------------------------------------ watchers
class Watchers:
    """N long-polling clients; latencies of lines printed after `counting_from`."""

    def __init__(self, token, executions, n, starts, first=0, step=1, counting_from=None):
        self.token, self.executions, self.n, self.starts = token, executions, n, starts
        # Client k of this process is watcher first + k * step of all processes (it follows execution index % count).
        self.first, self.step, self.fixed_start = first, step, counting_from
        self.latencies = []
        self.counting_from = float("inf")
        self.parked = 0
        self.errors = 0
        self.stop = False

    async def request(self, reader, writer, path):
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {U.netloc}\r\nAuthorization: Bearer {self.token}\r\n"
                      "Accept: application/json\r\n\r\n").encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length, chunked = None, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            if k.lower() == "content-length":
                length = int(v)
            elif k.lower() == "transfer-encoding" and "chunked" in v:
                chunked = True
        if chunked:
            body = b""
            while True:
                size = int((await reader.readline()).strip(), 16)
                if size == 0:
                    await reader.readline()
                    break
                body += await reader.readexactly(size)
                await reader.readline()
        else:
            body = await reader.readexactly(length or 0)
        return status, body

    async def client(self, i):
        execution = self.executions[(self.first + i * self.step) % len(self.executions)]
        after = self.starts[execution]
        reader, writer = await asyncio.open_connection(U.hostname, U.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = True
        try:
            while not self.stop:
                task = asyncio.ensure_future(self.request(reader, writer, f"/api/v1/executions/{execution}/log?after={after}&wait=30"))
                if first:
                    self.parked += 1
                    first = False
                status, body = await task
                got = time.time()
                if status != 200:
                    self.errors += 1
                    await asyncio.sleep(0.5)
                    continue
                page = json.loads(body)
                for c in page["chunks"]:
                    if c["stream"] != "stdout":
                        continue
                    for line in c["data"].splitlines():
                        try:
                            printed = float(line)
                        except ValueError:
                            continue
                        if printed >= self.counting_from:
                            self.latencies.append((got - printed) * 1000)
                after = page["next_seq"]
                if page["complete"]:
                    break
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.errors += 1
        finally:
            writer.close()

    async def run(self, seconds, during=None):
        tasks = []
        for i in range(self.n):
            tasks.append(asyncio.ensure_future(self.client(i)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # the FastCGI socket's backlog is 1024: connect in waves
        if self.fixed_start is None:
            await asyncio.sleep(1.5)
            self.counting_from = time.time()
        else:
            self.counting_from = self.fixed_start
            await asyncio.sleep(max(0.0, self.fixed_start - time.time()))
        result = await during() if during else None
        if not during:
            await asyncio.sleep(seconds)
        self.stop = True
        return tasks, result


def last_seqs(a, executions):
    return {e: a.call("GET", f"/api/v1/executions/{e}/log?tail=1")[1]["next_seq"] for e in executions}


# ------------------------------------------------------------ resources
GROUPS = {"tsubame-worker": "workers", "tsubame-pool": "workers", "nginx": "nginx", "postgres": "postgres",
          "tsubame-executo": "executor", "sshd": "sshd", "sh": "sshd", "date": "sshd", "sleep": "sshd"}


def cpu_by_group():
    """CPU seconds so far of this stack's process groups (by command name), of this driver, and of the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {g: 0.0 for g in set(GROUPS.values())}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        group = GROUPS.get(name)
        if group:
            out[group] += (int(fields[11]) + int(fields[12])) / tick
    usage = os.times()
    out["driver"] = usage.user + usage.system + usage.children_user + usage.children_system
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    out["machine"] = (sum(cpu[:8]) - cpu[3] - cpu[4]) / tick
    return out


def cpu_share(before, after, seconds):
    """Per group: cores used on average over the interval (2.0 = both cores)."""
    d = {k: after[k] - before[k] for k in after}
    d["other"] = d["machine"] - sum(v for k, v in d.items() if k != "machine")
    return {k: round(max(v, 0) / seconds, 2) for k, v in d.items()}


def pg_backends():
    r = subprocess.run([PSQL, "-X", "-q", "-t", "-A", "-d", DB_URL, "-c",
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.strip())


def worker_rss_mb():
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "tsubame-worker":
                    continue
            with open(f"/proc/{pid}/status") as f:
                total += int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M)[1])
        except (OSError, TypeError):
            continue
    return round(total / 1024, 1)


async def wrk(token):
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency",
           "-H", f"Authorization: Bearer {token}", f"{BASE}/api/v1/jobs?limit=50"]
    p = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    out = (await p.communicate())[0].decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    bad = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    if bad:
        ERRORS.append(f"wrk: {bad} non-2xx responses")
    return rps, out


# ------------------------------------------------------------ main
def main():
    a, token, servers = setup()
    tick_jobs = {period: [job(a, f"tick-{period}-{i}", ticker(period, 600), s) for i, s in enumerate(servers)]
                 for period in sorted({"0.2", "1", ENV.get("BENCH_PERIOD") or "1"})}
    silent = [job(a, f"silent-{i}", "sleep 600\n", s) for i, s in enumerate(servers)]
    out = {"p50_ms": {}, "p99_ms": {}, "samples": {}, "errors_by_waiters": {}, "cores": {}}

    for n in WAITERS:
        period = ENV.get("BENCH_PERIOD") or ("0.2" if n <= 100 else "1")
        count = min(n, len(servers))
        runs = start_runs(a, tick_jobs[period][:count])
        starts = last_seqs(a, runs)
        procs = min(PROCESSES, max(1, n // 250))
        log(f"latency: {n} watchers on {count} executions printing a line every {period} s, {MEASURE:.0f} s, "
            f"{procs} client process(es)")
        c0, t0 = cpu_by_group(), time.time()
        lat, errors = watch_in_processes(token, runs, n, starts, procs)
        out.setdefault("cores", {})[str(n)] = cpu_share(c0, cpu_by_group(), time.time() - t0)
        cancel(a, runs)
        w = type("W", (), {"errors": errors})
        out["p50_ms"][str(n)] = round(pct(lat, 0.5), 2) if lat else None
        out["p99_ms"][str(n)] = round(pct(lat, 0.99), 2) if lat else None
        out["samples"][str(n)] = len(lat)
        out["errors_by_waiters"][str(n)] = w.errors
        if w.errors or not lat:
            ERRORS.append(f"{n} watchers: {w.errors} errors, {len(lat)} samples")
        log(f"  {len(lat)} lines received: p50 {out['p50_ms'][str(n)]} ms, p99 {out['p99_ms'][str(n)]} ms, errors {w.errors}")
        time.sleep(1)

    log(f"crud: wrk GET /api/v1/jobs?limit=50, {DURATION} s, no watcher")
    out["crud_rps_idle"], _ = asyncio.run(wrk(token))
    # After wrk, so that every accept thread has opened its connection (they connect on first use).
    out["pg_connections_idle"] = pg_backends()
    out["worker_rss_mb_idle"] = worker_rss_mb()
    runs = start_runs(a, silent)
    w = Watchers(token, runs, CRUD_WAITERS, last_seqs(a, runs))
    log(f"crud: the same with {CRUD_WAITERS} watchers parked on {len(runs)} silent executions")

    async def during():
        out["pg_connections_with_waiters"] = pg_backends()
        out["worker_rss_mb_with_waiters"] = worker_rss_mb()
        out["parked_before_wrk"] = w.parked
        rps, _ = await wrk(token)
        return rps

    _, out["crud_rps_with_waiters"] = asyncio.run(_measure(w, 0, during))
    cancel(a, runs)
    if w.errors:
        ERRORS.append(f"parked watchers: {w.errors} errors")
    out["crud_ratio"] = round(out["crud_rps_with_waiters"] / out["crud_rps_idle"], 3)
    out["errors"] = ERRORS
    print(json.dumps(out))


def watch_in_processes(token, runs, n, starts, procs):
    """n watchers split over `procs` forked processes (so the watchers' own CPU is spread over the cores);
    returns every latency and the error count."""
    counting_from = time.time() + 1.5 + n / 2000
    children = []
    for k in range(procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            share = len(range(k, n, procs))
            watchers = Watchers(token, runs, share, starts, first=k, step=procs, counting_from=counting_from)
            asyncio.run(_measure(watchers, MEASURE))
            with os.fdopen(w, "w") as f:
                json.dump({"latencies": watchers.latencies, "errors": watchers.errors}, f)
            os._exit(0)
        os.close(w)
        children.append((pid, r))
    latencies, errors = [], 0
    for pid, r in children:
        with os.fdopen(r) as f:
            data = f.read()
        os.waitpid(pid, 0)
        try:
            got = json.loads(data)
        except ValueError:
            errors += 1
            continue
        latencies += got["latencies"]
        errors += got["errors"]
    return latencies, errors


async def _measure(w, seconds, during=None):
    tasks, result = await w.run(seconds, during)
    # Let every client see its next answer (the executions are cancelled next); do not wait for 30 s expiries.
    await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return tasks, result


if __name__ == "__main__":
    main()
