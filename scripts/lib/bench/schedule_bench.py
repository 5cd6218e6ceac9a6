# SPDX-License-Identifier: MIT
"""Measurements of `scripts/bench schedule`: many schedules firing every
minute, fired by executors that run nothing (TSUBAME_EXECUTOR_CAPACITY=0),
next to cron (busybox crond with a private crontab) firing as many lines.

Run by scripts/bench with the stack started; not meant to be run by hand.
Settings come from the environment (BENCH_*). Standard library only.
Progress goes to stderr; the last line on stdout is one JSON object.

seed      Signs in, makes an API token, one server (never contacted: nothing
          runs) and one job `* * * * *` through the API, then copies that job
          in SQL to BENCH_JOBS jobs (time zones spread over BENCH_ZONES: all
          fire every minute, but each (schedule, zone) is a separate cron
          evaluation), each with the same one server.
measure   With the executors already started (BENCH_EXECUTOR_PIDS): waits
          until every job has its first slot (next_run_at), then measures
          BENCH_MINUTES whole minutes of slots, S1 .. SM. For each execution
          of those slots: lag = the commit of the transaction that inserted
          it (track_commit_timestamp: the moment executors can see it) minus
          its slot, and created_at minus its slot. CPU (utime+stime from
          /proc) of each executor and of PostgreSQL (the postmaster and its
          backends, also those that ended) and of the API pool (master and
          workers, whose LISTEN connections get every execution.created
          event) over [S1 - 2 s, S1 - 2 s + 60 M).
          Checks that every job has exactly one execution per slot, each with
          one target. Then stops the executors and, with BENCH_CRON=1, lets
          busybox crond (BENCH_CROND) fire BENCH_JOBS crontab lines at the
          next minute: each line runs a script that appends `date +%s.%N` to
          a file; lag = that time minus the minute; crond's own CPU and its
          children's (the scripts) are read from /proc.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit
import http.client

ENV = os.environ
PSQL = ENV["BENCH_PSQL"]
DB_URL = ENV["BENCH_DB_URL"]
JOBS = int(ENV.get("BENCH_JOBS", "10000"))
MINUTES = int(ENV.get("BENCH_MINUTES", "3"))
ZONES = ENV.get("BENCH_ZONES", "UTC,Europe/Berlin,Asia/Tokyo,America/New_York,Asia/Kolkata").split(",")
TICK = os.sysconf("SC_CLK_TCK")
ERRORS = []


def log(msg):
    print(f"    {msg}", file=sys.stderr, flush=True)


def pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else None


def psql(sql, *, rows=True):
    p = subprocess.run([PSQL, "-X", "-q", "-t", "-A", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", DB_URL, "-c", sql],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"psql failed: {p.stderr.strip()[:500]}")
    return [line.split("\t") for line in p.stdout.splitlines() if line] if rows else p.stdout


def proc_cpu(pid, children=False):
    """utime+stime (+ cutime+cstime of reaped children) of one process in seconds, None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    own = int(fields[11]) + int(fields[12])
    kids = int(fields[13]) + int(fields[14])
    return ((own + kids) if children else own) / TICK


def group_cpu(root):
    """CPU seconds of a process and its direct children, plus what it reaped (PostgreSQL: postmaster + backends)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        if int(pid) == root or int(fields[1]) == root:
            total += sum(int(x) for x in fields[11:15])
    return total / TICK


def machine_cpu():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return sum(cpu[:8]) / TICK, (cpu[3] + cpu[4]) / TICK


def sleep_until(t):
    while True:
        d = t - time.time()
        if d <= 0:
            return
        time.sleep(min(d, 5))


# ------------------------------------------------------------ seed
def seed():
    base = urlsplit(ENV["BENCH_BASE_URL"])
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=60)

    def call(method, path, body=None, headers=None):
        h = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            h["Content-Type"] = "application/json"
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=h)
        r = conn.getresponse()
        raw = r.read()
        if r.status not in (200, 201):
            raise RuntimeError(f"{method} {path}: HTTP {r.status} {raw[:300]!r}")
        return r, json.loads(raw) if raw else None

    r, me = call("POST", "/api/v1/auth/login", {"username": "admin", "password": ENV["BENCH_ADMIN_PASSWORD"]})
    session = {"Cookie": r.getheader("Set-Cookie").split(";", 1)[0], "X-CSRF-Token": me["csrf_token"]}
    _, tok = call("POST", "/api/v1/tokens", {"name": "bench"}, session)
    bearer = {"Authorization": "Bearer " + tok["token"]}
    # 192.0.2.0/24 (TEST-NET-1): never contacted, the executors run nothing.
    _, server = call("POST", "/api/v1/servers", {"name": "sched-target", "host": "192.0.2.10", "port": 22, "username": "deploy",
                                                 "auth_method": "password", "password": "not-used-by-the-bench"}, bearer)
    _, job = call("POST", "/api/v1/jobs", {"name": "every-minute-00001", "script": "date\n", "server_ids": [server["id"]],
                                           "env": {"APP": "bench"}, "schedule": "* * * * *", "timezone": ZONES[0],
                                           "concurrency": "allow", "misfire": "skip", "tags": ["bench"]}, bearer)
    # The other jobs are copies of the one the API made (same columns, same server), in one statement.
    zones = "ARRAY[" + ",".join("'" + z.replace("'", "''") + "'" for z in ZONES) + "]"
    t0 = time.monotonic()
    psql(f"""
        INSERT INTO jobs (name, description, script, env, secret_env, secret_key_id, secret_env_names, timeout_seconds, schedule,
                          timezone, misfire, concurrency, max_parallel, retries, tags, enabled, notify)
        SELECT 'every-minute-' || lpad(g::text, 5, '0'), t.description, t.script, t.env, t.secret_env, t.secret_key_id,
               t.secret_env_names, t.timeout_seconds, t.schedule, ({zones})[1 + (g - 1) % {len(ZONES)}], t.misfire, t.concurrency,
               t.max_parallel, t.retries, t.tags, t.enabled, t.notify
        FROM jobs t, generate_series(2, {JOBS}) g WHERE t.id = {job["id"]};
        INSERT INTO job_servers (job_id, server_id, position)
        SELECT j.id, {server["id"]}, 0 FROM jobs j WHERE j.id <> {job["id"]};
        """, rows=False)
    psql("VACUUM ANALYZE jobs", rows=False)
    psql("VACUUM ANALYZE job_servers", rows=False)
    n = int(psql("SELECT count(*) FROM jobs WHERE enabled AND schedule = '* * * * *'")[0][0])
    if n != JOBS:
        raise RuntimeError(f"seeded {n} jobs, wanted {JOBS}")
    log(f"{n} jobs with `* * * * *` over {len(ZONES)} time zones (copied in {time.monotonic() - t0:.1f} s)")


# ------------------------------------------------------------ measure
def read_pid(path):
    with open(path) as f:
        return int(f.read().split()[0])


def stop(pid, label, timeout=20):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A zombie child of ours counts as stopped.
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.05)
    log(f"{label} (pid {pid}) did not stop in {timeout} s; SIGKILL")
    os.kill(pid, signal.SIGKILL)


def measure():
    work = ENV["BENCH_WORK"]
    pidfiles = ENV["BENCH_EXECUTOR_PIDFILES"].split(",")
    executors = {os.path.basename(p).removesuffix(".pid"): read_pid(p) for p in pidfiles}
    pg_pid = read_pid(ENV["BENCH_PG_PIDFILE"])
    pool_pid = read_pid(ENV["BENCH_POOL_PIDFILE"])

    # Every job gets its first slot from the executors' first tick (nothing from the past fires).
    deadline = time.time() + 60
    while True:
        row = psql("""SELECT count(next_run_at), extract(epoch FROM min(next_run_at)), extract(epoch FROM max(next_run_at))
                       FROM jobs WHERE enabled AND schedule IS NOT NULL""")[0]
        if int(row[0]) == JOBS:
            break
        if time.time() > deadline:
            raise RuntimeError(f"only {row[0]} of {JOBS} jobs have a next slot after 60 s")
        time.sleep(0.2)
    first, last = float(row[1]), float(row[2])
    log(f"first slot {time.strftime('%H:%M:%S', time.gmtime(first))} UTC for all jobs: {first == last}")
    if first != last:
        ERRORS.append("the jobs' first slots differ")
    s1 = first
    if s1 - time.time() < 3:
        s1 += 60  # too close to take the CPU snapshot before it: measure from the next one
    slots = [s1 + 60 * i for i in range(MINUTES)]
    start, end = s1 - 2, s1 - 2 + 60 * MINUTES
    log(f"measuring the slots {', '.join(time.strftime('%H:%M', time.gmtime(s)) for s in slots)} "
        f"(CPU from {time.strftime('%H:%M:%S', time.gmtime(start))} for {MINUTES} min)")

    sleep_until(start)
    m0, e0, p0, w0 = machine_cpu(), {k: proc_cpu(p) for k, p in executors.items()}, group_cpu(pg_pid), group_cpu(pool_pid)
    # busybox crond is started before the window ends (it sleeps until the next minute): it fires S(M+1).
    cron = ENV.get("BENCH_CRON", "0") == "1"
    crond = None
    if cron:
        sleep_until(end - 5)
        crond = start_crond(work)
    sleep_until(end)
    m1, e1, p1, w1 = machine_cpu(), {k: proc_cpu(p) for k, p in executors.items()}, group_cpu(pg_pid), group_cpu(pool_pid)
    for k, p in executors.items():
        stop(p, k)
    for k in executors:
        if e0[k] is None or e1[k] is None:
            ERRORS.append(f"{k} was not running through the measurement")
    exec_cpu = {k: round((e1[k] or 0) - (e0[k] or 0), 3) for k in executors}
    pg_cpu = p1 - p0
    # The API's workers get every execution.created event (their LISTEN connection), 10,000 a minute here.
    pool_cpu = w1 - w0
    wall = m1[0] - m0[0]
    busy = wall - (m1[1] - m0[1])

    # The executions of the measured slots.
    rows = psql(f"""
        SELECT e.job_id, extract(epoch FROM e.schedule_slot), extract(epoch FROM e.created_at),
               extract(epoch FROM pg_xact_commit_timestamp(e.xmin)),
               (SELECT count(*) FROM execution_targets t WHERE t.execution_id = e.id AND t.server_id IS NOT NULL AND t.status = 'queued')
        FROM executions e
        WHERE e.trigger = 'schedule' AND e.schedule_slot >= to_timestamp({s1}) AND e.schedule_slot <= to_timestamp({slots[-1]})
        """)
    seen, dups, bad_targets, lag_commit, lag_created, per_slot = set(), 0, 0, [], [], {}
    for job, slot, created, committed, targets in rows:
        key = (int(job), float(slot))
        if key in seen:
            dups += 1
        seen.add(key)
        if int(targets) != 1:
            bad_targets += 1
        lag_commit.append((float(committed) - float(slot)) * 1000)
        lag_created.append((float(created) - float(slot)) * 1000)
        per_slot.setdefault(float(slot), []).append((float(committed) - float(slot)) * 1000)
    missing = JOBS * MINUTES - len(seen)
    off_slot = sum(1 for _, s in seen if s not in slots)
    if dups:
        ERRORS.append(f"{dups} duplicate executions for a (job, slot)")
    if missing:
        ERRORS.append(f"{missing} (job, slot) pairs without an execution")
    if off_slot:
        ERRORS.append(f"{off_slot} executions for a time that is not a slot")
    if bad_targets:
        ERRORS.append(f"{bad_targets} executions without exactly one queued target")

    # What the executors' logs say about the ticks that fired (who led, how many ticks per slot).
    ticks = {k: [] for k in executors}
    for k in executors:
        try:
            with open(os.path.join(work, "log", f"{k}.log")) as f:
                for line in f:
                    if '"scheduled runs queued"' in line:
                        try:
                            x = json.loads(line)
                            ticks[k].append((x["executions"], x.get("tick_ms")))
                        except (ValueError, KeyError):
                            pass
        except OSError:
            pass

    result = {
        "jobs": JOBS, "minutes": MINUTES, "zones": len(ZONES), "executors": len(executors),
        "executions": len(rows), "duplicates": dups, "missing": missing, "bad_targets": bad_targets,
        "lag_p50_ms": pct(lag_commit, 0.5), "lag_p99_ms": pct(lag_commit, 0.99), "lag_max_ms": max(lag_commit, default=None),
        "lag_created_p50_ms": pct(lag_created, 0.5), "lag_created_p99_ms": pct(lag_created, 0.99),
        "per_slot": {time.strftime("%H:%M", time.gmtime(s)): {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": max(v)}
                     for s, v in sorted(per_slot.items())},
        "executor_cpu_s": exec_cpu, "cpu_s_per_min": round(sum(exec_cpu.values()) / MINUTES, 3),
        "pg_cpu_s_per_min": round(pg_cpu / MINUTES, 3),
        "pool_cpu_s_per_min": round(pool_cpu / MINUTES, 3),
        # Of all cores over the window (2.0 = both cores of a 2-core machine busy).
        "machine_busy_cores": round(busy / max(wall, 1e-9) * os.cpu_count(), 2),
        "other_cpu_s_per_min": round(max(busy - sum(exec_cpu.values()) - pg_cpu - pool_cpu, 0) / MINUTES, 3),
        "ticks_fired": {k: len(v) for k, v in ticks.items()},
        "largest_tick": max((n for v in ticks.values() for n, _ in v), default=0),
        # How long the ticks that fired took, in the executor (from its log; older builds do not say).
        "tick_ms_max": max((ms for v in ticks.values() for _, ms in v if ms is not None), default=None),
        "tick_ms_median": pct([ms for v in ticks.values() for _, ms in v if ms is not None], 0.5),
    }
    if cron:
        result["cron"] = measure_cron(work, crond, end)
    result["errors"] = ERRORS
    print(json.dumps(result, separators=(",", ":")))


def start_crond(work):
    crond = ENV["BENCH_CROND"]
    d = os.path.join(work, "cron")
    os.makedirs(os.path.join(d, "tabs"), exist_ok=True)
    out = os.path.join(d, "out")
    stamp = os.path.join(d, "stamp")
    with open(stamp, "w") as f:
        f.write(f"#!/bin/sh\nexec date +%s.%N >> {out}\n")
    os.chmod(stamp, 0o755)
    # busybox crond allows 65,535 lines in root's crontab (256 in another user's).
    with open(os.path.join(d, "tabs", "root"), "w") as f:
        f.write(f"* * * * * {stamp}\n" * JOBS)
    p = subprocess.Popen([crond, "crond", "-f", "-c", os.path.join(d, "tabs"), "-L", os.path.join(d, "crond.log"), "-l", "8"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(ENV["BENCH_CROND_PIDFILE"], "w") as f:
        f.write(f"{p.pid}\n")
    log(f"busybox crond started (pid {p.pid}) with {JOBS} lines `* * * * * {stamp}`")
    return p


def measure_cron(work, crond, after):
    """crond fires the first minute after `after` (the end of tsubame's window); wait for every line's stamp (at most 55 s)."""
    out = os.path.join(work, "cron", "out")
    minute = math.ceil(after / 60) * 60
    m0, c0 = machine_cpu(), proc_cpu(crond.pid)
    c0k = proc_cpu(crond.pid, children=True) - c0
    deadline = minute + 55
    n = 0
    while time.time() < deadline:
        try:
            with open(out) as f:
                n = sum(1 for _ in f)
        except OSError:
            n = 0
        if n >= JOBS:
            break
        time.sleep(0.5)
    time.sleep(2)  # crond reaps its last children (their CPU then counts in its cutime/cstime)
    m1, c1 = machine_cpu(), proc_cpu(crond.pid)
    c1k = proc_cpu(crond.pid, children=True) - c1
    crond.send_signal(signal.SIGTERM)
    try:
        crond.wait(10)
    except subprocess.TimeoutExpired:
        crond.kill()
    stamps = []
    try:
        with open(out) as f:
            stamps = [float(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    lags = [(s - minute) * 1000 for s in stamps if minute - 1 <= s < minute + 60]
    if len(lags) != JOBS:
        ERRORS.append(f"cron: {len(lags)} of {JOBS} lines ran within the minute")
    busy = (m1[0] - m0[0]) - (m1[1] - m0[1])
    return {"lines": len(lags), "lag_p50_ms": pct(lags, 0.5), "lag_p99_ms": pct(lags, 0.99), "lag_min_ms": min(lags, default=None),
            "lag_max_ms": max(lags, default=None), "crond_cpu_s": round(c1 - c0, 3), "children_cpu_s": round(c1k - c0k, 3),
            "machine_cpu_s": round(busy, 2), "minute": time.strftime("%H:%M", time.gmtime(minute))}


if __name__ == "__main__":
    {"seed": seed, "measure": measure}[sys.argv[1]]()
