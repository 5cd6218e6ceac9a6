# SPDX-License-Identifier: MIT
"""Measurements of `scripts/bench exec`: tsubame-ci's executor next to the
SSH fan-out tools users pick today, against one loopback sshd fleet.

Run by scripts/bench with the Python of its peer virtualenv (parallel-ssh,
asyncssh, ansible-core); not meant to be run by hand. Every command reads the
settings from the environment (BENCH_*, set by scripts/bench) and adds its
figures to the results file BENCH_RESULTS (JSON), so the steps can run
between executor restarts:

  setup   API token, one server per fleet port (ed25519 key), the jobs
  cold    executor with no idle sessions: fan-out of tsubame and every peer
          (interleaved, repeated), dispatch latency (and bare libssh2),
          output throughput (and ssh, asyncssh), 500 concurrent targets
  warm    executor keeping idle sessions: fan-out, dispatch latency, and
          the warm peers (ssh with ControlMaster, parallel-ssh and asyncssh
          with their connections kept)

Every run is checked (all N targets/hosts answered, exit status 0, the
expected output); a run that fails a check is recorded as an error and its
time is never used. Progress goes to stderr.
"""

import asyncio
import gc
import http.client
import json
import os
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

ENV = os.environ
BASE = ENV.get("BENCH_BASE_URL", "")
RESULTS = ENV.get("BENCH_RESULTS", "")
STATE = ENV.get("BENCH_STATE", "")
WORK = ENV.get("BENCH_WORK", "")
PORTS = [int(p) for p in ENV.get("BENCH_PORTS", "").split(",") if p]
USER = ENV.get("BENCH_SSH_USER", "tsubame-target")
KEY = ENV.get("BENCH_SSH_KEY", "")
NS = [int(n) for n in ENV.get("BENCH_NS", "1,10,50,100").split(",")]
REPEAT = int(ENV.get("BENCH_REPEAT", "3"))
DISPATCH_RUNS = int(ENV.get("BENCH_DISPATCH_RUNS", "200"))
OUTPUT_BYTES = int(ENV.get("BENCH_OUTPUT_BYTES", "200000000"))
CONC_JOBS = int(ENV.get("BENCH_CONC_JOBS", "5"))
WITH_ANSIBLE = ENV.get("BENCH_ANSIBLE", "1") == "1"
# Which parts run (scripts/bench: TSUBAME_BENCH_EXEC_PARTS); all by default.
ALL_PARTS = ("fanout", "dispatch", "output", "concurrency", "warm")
PARTS = {x.strip() for x in ENV.get("BENCH_PARTS", ",".join(ALL_PARTS)).split(",") if x.strip()}
OUTPUT_RUNS = int(ENV.get("BENCH_OUTPUT_RUNS", "1"))
ANSIBLE_BIN = ENV.get("BENCH_ANSIBLE_BIN", "ansible")
PSQL = ENV.get("BENCH_PSQL", "psql")
DB_URL = ENV.get("BENCH_DB_URL", "")
EXECUTOR_PIDFILE = ENV.get("BENCH_EXECUTOR_PIDFILE", "")
FLEET_DIR = ENV.get("BENCH_FLEET_DIR", "")
KEX = "curve25519-sha256"
CMDS = {"true": "true", "echo": "echo hi"}
SSH_OPTS = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", f"KexAlgorithms={KEX}",
            "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no", "-i", KEY]
THROUGHPUT_CMD = f"head -c {OUTPUT_BYTES} /dev/zero | tr '\\0' 'a'"


def log(msg):
    print(f"    {msg}", file=sys.stderr, flush=True)


class CheckFailed(Exception):
    """A run did not do what it should have (a fast failure must not count)."""


# ------------------------------------------------------------ results file
def load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def save(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


RES = load(RESULTS, {}) if RESULTS else {}


def record(section, key, value):
    RES.setdefault(section, {})[key] = value
    save(RESULTS, RES)


def error(where, exc):
    msg = f"{where}: {exc}"
    log("FAILED " + msg)
    RES.setdefault("errors", []).append(msg)
    save(RESULTS, RES)


def median(xs):
    return statistics.median(xs) if xs else None


def pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else None


# ------------------------------------------------------------ tsubame API
class API:
    def __init__(self, base, token=None):
        from urllib.parse import urlsplit
        u = urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.conn = None
        self.headers = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = "Bearer " + token

    def call(self, method, path, body=None, headers=None, want=(200, 201, 202)):
        h = dict(self.headers)
        if body is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        data = None if body is None else json.dumps(body)
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.conn.connect()
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.conn.request(method, path, body=data, headers=h)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        if r.status not in want:
            raise CheckFailed(f"{method} {path}: HTTP {r.status} {raw[:300]!r}")
        return r, (json.loads(raw) if raw else None)


def parse_ts(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def api():
    st = load(STATE, None)
    return API(BASE, st["token"]), st


def run_job(a, job_id):
    """POST /jobs/{id}/run; returns (send time, execution id)."""
    t0 = time.time()
    _, e = a.call("POST", f"/api/v1/jobs/{job_id}/run")
    return t0, e["id"]


def wait_log(a, ex, deadline=120):
    """Follows the log long-poll until the execution is complete; returns (chunks, time seen complete)."""
    after, chunks, end = 0, [], time.time() + deadline
    while True:
        _, r = a.call("GET", f"/api/v1/executions/{ex}/log?after={after}&wait=30&limit=5000")
        chunks += r["chunks"]
        after = r["next_seq"]
        if r["complete"]:
            return chunks, time.time()
        if time.time() > end:
            raise CheckFailed(f"execution {ex} not finished after {deadline}s (status {r['status']})")


def check_execution(a, ex, n, chunks=None, expect=None):
    """Checks that all n targets succeeded (and printed `expect`); returns the execution."""
    _, e = a.call("GET", f"/api/v1/executions/{ex}")
    targets = e["targets"]
    bad = [t for t in targets if t["status"] != "succeeded" or t["exit_code"] != 0]
    if e["status"] != "succeeded" or len(targets) != n or bad:
        sample = bad[0] if bad else None
        raise CheckFailed(f"execution {ex}: status {e['status']}, {len(targets)} targets (want {n}), "
                          f"{len(bad)} not succeeded; first: {sample}")
    if expect is not None:
        out = {}
        for c in chunks or []:
            if c["stream"] == "stdout":
                out[c["server_id"]] = out.get(c["server_id"], "") + c["data"]
        wrong = [s for s in (t["server_id"] for t in targets) if out.get(s) != expect]
        if wrong:
            raise CheckFailed(f"execution {ex}: {len(wrong)} of {n} targets did not print {expect!r} "
                              f"(server {wrong[0]}: {out.get(wrong[0])!r})")
    return e


CONNECTED = re.compile(r"^connected to \S+ as \S+ in (\d+) ms")


def executor_cpu():
    """user + system CPU seconds of the executor so far (0 when unknown)."""
    try:
        with open(f"/proc/{executor_pid()}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def tsubame_fanout_once(a, job_id, n, cmd):
    """Returns (wall seconds, breakdown): wall = the execution's finished_at (set in the
    transaction that records the last target) minus the client's clock before it sent POST /run."""
    cpu0 = executor_cpu()
    t0, ex = run_job(a, job_id)
    posted = time.time()
    chunks, seen = wait_log(a, ex)
    cpu1 = executor_cpu()
    e = check_execution(a, ex, n, chunks, "hi\n" if cmd == "echo" else None)
    wall = parse_ts(e["finished_at"]) - t0
    # The executor's "connected … in N ms" lines: submit to the SSH runner → remote command running.
    connect = sorted(int(m.group(1)) for c in chunks if c["stream"] == "system"
                     for m in [CONNECTED.match(c["data"])] if m)
    claimed = [parse_ts(t["started_at"]) - t0 for t in e["targets"]]
    done = [parse_ts(t["finished_at"]) - t0 for t in e["targets"]]
    return wall, {"observed": seen - t0, "post": posted - t0, "created": parse_ts(e["created_at"]) - t0,
                  "first_claim": min(claimed), "last_claim": max(claimed), "first_done": min(done),
                  "connect_p50_ms": median(connect), "connect_max_ms": max(connect, default=None),
                  "executor_cpu": cpu1 - cpu0}


def tsubame_dispatch_once(a, job_id):
    """Returns (remote start - t0, POST answered - t0, claimed - t0) in seconds."""
    t0, ex = run_job(a, job_id)
    posted = time.time()
    chunks, _ = wait_log(a, ex)
    e = check_execution(a, ex, 1)
    out = "".join(c["data"] for c in chunks if c["stream"] == "stdout").strip()
    try:
        return float(out) - t0, posted - t0, parse_ts(e["targets"][0]["started_at"]) - t0
    except ValueError:
        raise CheckFailed(f"execution {ex}: stdout {out!r} is not a timestamp")


# ------------------------------------------------------------ peers
def pssh_client(n):
    from pssh.clients import ParallelSSHClient
    from pssh.config import HostConfig
    return ParallelSSHClient(["127.0.0.1"] * n, user=USER, pkey=KEY,
                             host_config=[HostConfig(port=p) for p in PORTS[:n]],
                             pool_size=100, num_retries=1, timeout=60)


def pssh_run(client, n, cmd):
    out = client.run_command(CMDS[cmd], stop_on_errors=False)
    client.join(out)
    res = []
    for o in out:
        lines = list(o.stdout) if o.stdout is not None else None  # the exit code is known after EOF
        res.append((o.exception, o.exit_code, lines))
    if len(res) != n:
        raise CheckFailed(f"parallel-ssh: {len(res)} results for {n} hosts")
    for exc, code, lines in res:
        if exc is not None or code != 0 or (cmd == "echo" and lines != ["hi"]):
            raise CheckFailed(f"parallel-ssh: a host answered exception={exc!r} exit={code} stdout={lines!r}")


def pssh_fanout(n, cmd):
    t0 = time.time()
    client = pssh_client(n)
    pssh_run(client, n, cmd)
    dt = time.time() - t0
    del client
    gc.collect()
    return dt


class Async:
    """asyncssh on one event loop, kept for the whole step."""

    def __init__(self):
        import asyncssh
        self.mod = asyncssh
        self.loop = asyncio.new_event_loop()
        self.key = asyncssh.read_private_key(KEY)

    def connect(self, port):
        return self.mod.connect("127.0.0.1", port=port, username=USER, client_keys=[self.key], known_hosts=None,
                                kex_algs=[KEX], agent_path=None, preferred_auth="publickey")

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    @staticmethod
    def check(results, n, cmd):
        if len(results) != n:
            raise CheckFailed(f"asyncssh: {len(results)} results for {n} hosts")
        for r in results:
            if isinstance(r, BaseException):
                raise CheckFailed(f"asyncssh: {r!r}")
            if r.exit_status != 0 or (cmd == "echo" and r.stdout != "hi\n"):
                raise CheckFailed(f"asyncssh: exit={r.exit_status} stdout={r.stdout!r}")

    def fanout(self, n, cmd):
        async def one(port):
            async with self.connect(port) as c:
                return await c.run(CMDS[cmd], check=False)

        async def all_():
            return await asyncio.gather(*(one(p) for p in PORTS[:n]), return_exceptions=True)

        t0 = time.time()
        res = self.run(all_())
        dt = time.time() - t0
        self.check(res, n, cmd)
        return dt

    def open(self, n):
        async def all_():
            return await asyncio.gather(*(self.connect(p) for p in PORTS[:n]))
        return self.run(all_())

    def warm(self, conns, n, cmd):
        async def all_():
            return await asyncio.gather(*(c.run(CMDS[cmd], check=False) for c in conns[:n]), return_exceptions=True)
        t0 = time.time()
        res = self.run(all_())
        dt = time.time() - t0
        self.check(res, n, cmd)
        return dt

    def close(self, conns):
        for c in conns:
            c.close()

        async def wait():
            await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
        self.run(wait())

    def stream(self, port):
        """Reads THROUGHPUT_CMD's stdout to the end; returns (seconds, bytes)."""
        async def go():
            async with self.connect(port) as c:
                async with c.create_process(THROUGHPUT_CMD, encoding=None) as p:
                    total = 0
                    while True:
                        b = await p.stdout.read(1 << 18)
                        if not b:
                            break
                        total += len(b)
                    await p.wait()
                    return total, p.exit_status
        t0 = time.time()
        total, status = self.run(go())
        dt = time.time() - t0
        if total != OUTPUT_BYTES or status != 0:
            raise CheckFailed(f"asyncssh stream: {total} bytes, exit {status}")
        return dt


def xargs_ssh(ports, remote, extra=(), timeout=120):
    """`xargs -P 100 ssh … -p PORT user@127.0.0.1 REMOTE`, one line of input per port."""
    cmd = ["xargs", "-P", "100", "-I{}", "ssh", *SSH_OPTS, *extra, "-p", "{}", f"{USER}@127.0.0.1", remote]
    t0 = time.time()
    p = subprocess.run(cmd, input="".join(f"{x}\n" for x in ports), capture_output=True, text=True, timeout=timeout)
    return time.time() - t0, p


def ssh_fanout(n, cmd, extra=()):
    dt, p = xargs_ssh(PORTS[:n], CMDS[cmd], extra)
    if p.returncode != 0:
        raise CheckFailed(f"ssh: xargs exit {p.returncode}: {p.stderr[-300:]!r}")
    if cmd == "echo" and p.stdout.split("\n") != ["hi"] * n + [""]:
        raise CheckFailed(f"ssh: expected {n} lines 'hi', got {p.stdout[:200]!r}")
    return dt


def ansible_fanout(n, cmd):
    inv = os.path.join(WORK, f"ansible-inventory-{n}.ini")
    if not os.path.exists(inv):
        with open(inv, "w") as f:
            f.write("[fleet]\n")
            for i, p in enumerate(PORTS[:n]):
                f.write(f"h{i:03d} ansible_port={p}\n")
            f.write("[fleet:vars]\nansible_host=127.0.0.1\n"
                    f"ansible_user={USER}\nansible_ssh_private_key_file={KEY}\n"
                    "ansible_python_interpreter=/usr/bin/python3\n"
                    "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                    f"-o KexAlgorithms={KEX} -o IdentitiesOnly=yes'\n")
    cp = tempfile.mkdtemp(prefix="cp-", dir=WORK)
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_SSH_CONTROL_PATH_DIR=cp,
               ANSIBLE_HOME=os.path.join(WORK, "ansible-home"), ANSIBLE_LOCAL_TEMP=os.path.join(WORK, "ansible-tmp"),
               ANSIBLE_CONFIG=os.path.join(WORK, "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False",
               ANSIBLE_RETRY_FILES_ENABLED="False", LC_ALL="C.UTF-8", LANG="C.UTF-8")
    open(env["ANSIBLE_CONFIG"], "a").close()
    t0 = time.time()
    p = subprocess.run([ANSIBLE_BIN, "fleet", "-i", inv, "-m", "command", "-a", CMDS[cmd], "-f", "100", "-o"],
                       capture_output=True, text=True, env=env, timeout=300)
    dt = time.time() - t0
    # Close the ControlPersist masters this run left, so the next run starts cold.
    socks = [os.path.join(cp, s) for s in os.listdir(cp)]
    if socks:
        subprocess.run(["xargs", "-P", "50", "-I{}", "ssh", "-o", "ControlPath={}", "-O", "exit", "x"],
                       input="".join(s + "\n" for s in socks), capture_output=True, text=True, timeout=60)
    shutil.rmtree(cp, ignore_errors=True)
    # `-o`: one line per host, "h007 | CHANGED | rc=0 | (stdout) hi".
    lines = [ln for ln in p.stdout.splitlines() if re.match(r"h\d+ \| ", ln)]
    want = "hi" if cmd == "echo" else ""
    good = {m.group(1) for m in (re.fullmatch(r"(h\d+) \| CHANGED \| rc=0 \| \(stdout\) ?(.*)", ln) for ln in lines)
            if m and m.group(2).strip() == want}
    if p.returncode != 0 or len(good) != n or len(lines) != n:
        raise CheckFailed(f"ansible: exit {p.returncode}, {len(good)} of {n} hosts ok; "
                          f"stdout {p.stdout[-300:]!r} stderr {p.stderr[-300:]!r}")
    return dt


# ------------------------------------------------------------ bare libssh2
def bare_libssh2_once(port):
    """libssh2 (ssh2-python) done the way the product does it: non-blocking, select() on the
    socket in the directions libssh2 asks for, TCP_NODELAY, TCP_QUICKACK re-armed before
    each wait (without it a delayed ACK adds ~40 ms). TCP connect, handshake, key auth,
    open a channel, exec `date +%s.%N`, read to EOF, close. Returns (remote start - t0, total)."""
    from ssh2.error_codes import LIBSSH2_ERROR_EAGAIN as EAGAIN
    from ssh2.session import LIBSSH2_SESSION_BLOCK_INBOUND as IN, LIBSSH2_SESSION_BLOCK_OUTBOUND as OUT, Session

    def wait(sess, s):
        d = sess.block_directions()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        if not d & (IN | OUT):
            return
        r, w, _ = select.select([s] if d & IN else [], [s] if d & OUT else [], [], 10)
        if not r and not w:
            raise CheckFailed("bare libssh2: no answer within 10 s")

    def call(f, *args):
        while True:
            rc = f(*args)
            if not (isinstance(rc, int) and rc == EAGAIN):
                if isinstance(rc, int) and rc < 0:
                    raise CheckFailed(f"bare libssh2: {f.__name__} returned {rc}")
                return rc
            wait(sess, s)

    t0 = time.time()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sess = Session()
    sess.set_blocking(False)
    call(sess.handshake, s)
    call(sess.userauth_publickey_fromfile, USER, KEY)
    ch = call(sess.open_session)
    call(ch.execute, "date +%s.%N")
    out = b""
    while True:
        rc, data = ch.read()
        if rc == EAGAIN:
            wait(sess, s)
            continue
        if rc <= 0:
            break
        out += data
    call(ch.close)
    call(ch.wait_closed)
    status = ch.get_exit_status()
    call(sess.disconnect)
    # Free the session before its socket's fd can be reused by the next connection.
    ch = sess = None
    s.close()
    total = time.time() - t0
    if status != 0:
        raise CheckFailed(f"bare libssh2: exit {status}")
    return float(out.strip()) - t0, total


# ------------------------------------------------------------ executor memory
def executor_pid():
    with open(EXECUTOR_PIDFILE) as f:
        return int(f.read().split()[0])


def vm(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # MiB
    return None


def reset_peak(pid):
    """Resets VmHWM (writing 5 to clear_refs, Linux >= 4.0); False when not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RSSSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, vm(self.pid, "VmRSS") or 0)
            except OSError:
                return
            time.sleep(0.05)


# ------------------------------------------------------------ CPU accounting
TICK = os.sysconf("SC_CLK_TCK")


def machine_busy():
    """CPU seconds the whole machine spent busy so far (all cores)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / TICK


def pidfile(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_groups():
    """CPU seconds so far per group: each group is some root processes with all their
    descendants, counting user+system time and what they reaped (utime, stime, cutime,
    cstime), so processes that ended between two snapshots still count. Groups: the
    fleet's sshd (listeners, connections, the commands they ran), postgres, the executor,
    the pool and nginx (with their workers), and this driver with its children (the
    peers: parallel-ssh and asyncssh run in it, ssh and ansible as its children)."""
    roots = {}
    for name in os.listdir(FLEET_DIR) if FLEET_DIR else []:
        if name.startswith("sshd-") and name.endswith(".pid"):
            pid = pidfile(os.path.join(FLEET_DIR, name))
            if pid:
                roots[pid] = "sshd"
    for path, group in ((os.path.join(WORK, "pg", "postmaster.pid"), "postgres"), (EXECUTOR_PIDFILE, "executor"),
                        (os.path.join(WORK, "run", "pool.pid"), "pool+nginx"),
                        (os.path.join(WORK, "nginx", "nginx.pid"), "pool+nginx")):
        pid = pidfile(path)
        if pid:
            roots[pid] = group
    parent, ticks = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(fields[1])
        ticks[int(d)] = sum(int(x) for x in fields[11:15])
    out = {"sshd": 0, "postgres": 0, "executor": 0, "pool+nginx": 0}
    for pid, t in ticks.items():
        p, seen = pid, 0
        while p > 1 and p not in roots and seen < 64:
            p, seen = parent.get(p, 0), seen + 1
        if p in roots:
            out[roots[p]] += t
    out = {k: v / TICK for k, v in out.items()}
    own, kids = os.times()[:2], os.times()[2:4]
    out["driver"] = sum(own) + sum(kids)
    out["machine"] = machine_busy()
    return out


def cpu_delta(before, after):
    d = {k: round(after[k] - before[k], 2) for k in after}
    d["other"] = round(d["machine"] - sum(v for k, v in d.items() if k != "machine"), 2)
    return d


# ------------------------------------------------------------ steps
def step_setup():
    admin_password = ENV["BENCH_ADMIN_PASSWORD"]
    a = API(BASE)
    r, me = a.call("POST", "/api/v1/auth/login", {"username": "admin", "password": admin_password})
    cookie = r.getheader("Set-Cookie").split(";", 1)[0]
    _, tok = a.call("POST", "/api/v1/tokens", {"name": "bench-exec"}, {"Cookie": cookie, "X-CSRF-Token": me["csrf_token"]})
    a = API(BASE, tok["token"])
    with open(KEY) as f:
        key = f.read()
    servers = []
    for i, port in enumerate(PORTS):
        _, s = a.call("POST", "/api/v1/servers", {
            "name": f"fleet-{i:03d}", "host": "127.0.0.1", "port": port, "username": USER,
            "auth_method": "key", "private_key": key, "description": f"loopback sshd on {port}",
            # The 500-target figure runs 5 targets per server at once; the default limit is 4.
            "max_concurrent": 8})
        servers.append(s["id"])

    def job(name, script, ids, parallel=None):
        _, j = a.call("POST", "/api/v1/jobs", {"name": name, "script": script, "server_ids": ids,
                                               "max_parallel": parallel or len(ids), "timeout_seconds": 600})
        return j["id"]

    jobs = {"fanout": {}, "conc": []}
    for cmd, script in CMDS.items():
        for n in NS:
            jobs["fanout"][f"{cmd}:{n}"] = job(f"fanout-{cmd}-{n}", script, servers[:n])
    jobs["dispatch"] = job("dispatch", "date +%s.%N", servers[:1])
    jobs["throughput"] = job("throughput", THROUGHPUT_CMD, servers[:1])
    per = min(len(servers), 100)
    for k in range(CONC_JOBS):
        jobs["conc"].append(job(f"concurrency-{k}", "sleep 2; echo done", servers[:per], per))
    jobs["all"] = jobs["fanout"][f"true:{max(NS)}"]
    save(STATE, {"token": tok["token"], "servers": servers, "jobs": jobs})
    log(f"{len(servers)} servers (ed25519 key auth), {len(jobs['fanout']) + 2 + CONC_JOBS} jobs")


def fanout_tool(tool, n, cmd, a=None, jobs=None, aio=None):
    if tool == "tsubame":
        return tsubame_fanout_once(a, jobs["fanout"][f"{cmd}:{n}"], n, cmd)
    if tool == "parallel-ssh":
        return pssh_fanout(n, cmd), None
    if tool == "asyncssh":
        return aio.fanout(n, cmd), None
    if tool == "ssh":
        return ssh_fanout(n, cmd), None
    if tool == "ansible":
        return ansible_fanout(n, cmd), None
    raise ValueError(tool)


def measure_fanout(label, tools, a, jobs, aio, reps_for=lambda tool: REPEAT):
    samples = {}  # tool -> cmd -> n -> [seconds]
    breakdown = {}  # tsubame: cmd -> n -> [breakdown]
    cpu = {}  # tool -> cmd -> [CPU seconds per group] of the runs on the most hosts
    for rep in range(max(reps_for(t) for t in tools)):
        for cmd in CMDS:
            for n in NS:
                for tool in tools:
                    if rep >= reps_for(tool):
                        continue
                    cpu0 = cpu_groups() if n == max(NS) else None
                    try:
                        dt, extra = fanout_tool(tool, n, cmd, a, jobs, aio)
                    except Exception as exc:  # noqa: BLE001 - recorded, never counted
                        error(f"{label} fan-out {tool} {cmd} N={n} run {rep + 1}", exc)
                        continue
                    samples.setdefault(tool, {}).setdefault(cmd, {}).setdefault(str(n), []).append(round(dt, 4))
                    if cpu0 is not None:
                        # Cold: the sshd that served the run have exited and been reaped by now.
                        time.sleep(0.3)
                        cpu.setdefault(tool, {}).setdefault(cmd, []).append(cpu_delta(cpu0, cpu_groups()))
                    if extra:
                        breakdown.setdefault(cmd, {}).setdefault(str(n), []).append(
                            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in extra.items()})
                    log(f"{label} {tool:12} {cmd:4} N={n:<3} {dt:7.3f} s")
        record(label, "fanout_samples", samples)
    record(label, "fanout_samples", samples)
    if breakdown:
        record(label, "tsubame_breakdown", breakdown)
    if cpu:
        record(label, "fanout_cpu", cpu)


def measure_dispatch(label, a, jobs):
    lat, posted, claimed = [], [], []
    for i in range(DISPATCH_RUNS):
        try:
            start, post, claim = tsubame_dispatch_once(a, jobs["dispatch"])
            lat.append(start * 1000)
            posted.append(post * 1000)
            claimed.append(claim * 1000)
        except Exception as exc:  # noqa: BLE001
            error(f"{label} dispatch run {i + 1}", exc)
    record(label, "dispatch_ms", {"p50": median(lat), "p99": pct(lat, 0.99), "min": min(lat, default=None),
                                  "max": max(lat, default=None), "runs": len(lat),
                                  "post_answered_p50": median(posted), "claimed_p50": median(claimed)})
    if lat:
        log(f"{label} dispatch: p50 {median(lat):.2f} ms, p99 {pct(lat, 0.99):.2f} ms ({len(lat)} runs)")


def step_cold():
    a, st = api()
    jobs = st["jobs"]
    aio = Async()
    # Untimed: pins the host keys (trust on first use) and warms caches.
    log(f"warm-up run on all servers (pins the host keys); parts: {','.join(p for p in ALL_PARTS if p in PARTS)}")
    tsubame_fanout_once(a, jobs["all"], min(max(NS), len(st["servers"])), "true")
    tsubame_fanout_once(a, jobs["all"], min(max(NS), len(st["servers"])), "true")
    for tool, f in (("parallel-ssh", lambda: pssh_fanout(2, "true")), ("asyncssh", lambda: aio.fanout(2, "true")),
                    ("ssh", lambda: ssh_fanout(2, "true"))):
        try:
            f()
        except Exception as exc:  # noqa: BLE001
            error(f"warm-up {tool}", exc)

    if "fanout" in PARTS:
        tools = ["tsubame", "parallel-ssh", "asyncssh", "ssh"] + (["ansible"] if WITH_ANSIBLE else [])
        measure_fanout("cold", tools, a, jobs, aio, reps_for=lambda t: 1 if t == "ansible" else REPEAT)
    if "dispatch" in PARTS:
        cold_dispatch(a, jobs)
    if "output" in PARTS:
        output_throughput(a, jobs, aio)
    if "concurrency" in PARTS:
        concurrency(a, jobs)
    record("cold", "executor_rss_end_mb", {"VmRSS": vm(executor_pid(), "VmRSS"), "VmHWM": vm(executor_pid(), "VmHWM")})


def cold_dispatch(a, jobs):
    # Dispatch latency without a kept connection, and bare libssh2 doing the same work.
    measure_dispatch("cold", a, jobs)
    bare, bare_total = [], []
    for i in range(DISPATCH_RUNS):
        try:
            s, t = bare_libssh2_once(PORTS[0])
            bare.append(s * 1000)
            bare_total.append(t * 1000)
        except Exception as exc:  # noqa: BLE001
            error(f"bare libssh2 run {i + 1}", exc)
    record("cold", "bare_libssh2_ms", {"p50": median(bare), "p99": pct(bare, 0.99), "runs": len(bare),
                                       "total_p50": median(bare_total)})
    if bare:
        log(f"bare libssh2 connect+auth+exec: remote start p50 {median(bare):.2f} ms, whole p50 {median(bare_total):.2f} ms")



def output_throughput(a, jobs, aio):
    pid = executor_pid()
    record("cold", "executor_rss_before_throughput_mb", {"VmRSS": vm(pid, "VmRSS"), "VmHWM": vm(pid, "VmHWM")})
    runs = []
    for i in range(OUTPUT_RUNS):
        r = tsubame_output_once(a, jobs, pid)
        if r:
            runs.append(r)
            log(f"tsubame capture: {OUTPUT_BYTES / 1e6:.0f} MB in {r['seconds']:.2f} s = {r['mb_s']:.1f} MB/s, "
                f"{r['chunks']} chunks, executor peak RSS {r['rss_peak_mb'] if r['rss_peak_mb'] is not None else r['rss_sampled_peak_mb']:.1f} MiB; "
                f"CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items() if k not in ("driver", "pool+nginx"))
                + (f" (run {i + 1} of {OUTPUT_RUNS})" if OUTPUT_RUNS > 1 else ""))
    if runs:
        # The median run by time; the highest peak RSS of all runs.
        best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        best = dict(best, runs=len(runs), all_mb_s=[r["mb_s"] for r in runs])
        peaks = [r["rss_peak_mb"] for r in runs if r["rss_peak_mb"] is not None]
        if peaks:
            best["rss_peak_mb"] = max(peaks)
        best["rss_sampled_peak_mb"] = max(r["rss_sampled_peak_mb"] for r in runs)
        record("cold", "throughput", best)
    ssh_times = []
    for i in range(OUTPUT_RUNS):
        try:
            t0 = time.time()
            p = subprocess.run(["ssh", *SSH_OPTS, "-p", str(PORTS[0]), f"{USER}@127.0.0.1", THROUGHPUT_CMD],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
            dt = time.time() - t0
            if p.returncode != 0:
                raise CheckFailed(f"ssh exit {p.returncode}: {p.stderr[-200:]!r}")
            ssh_times.append(dt)
            log(f"ssh > /dev/null: {dt:.2f} s = {OUTPUT_BYTES / 1e6 / dt:.1f} MB/s")
        except Exception as exc:  # noqa: BLE001
            error("ssh throughput", exc)
    if ssh_times:
        dt = median(ssh_times)
        record("cold", "ssh_throughput", {"seconds": round(dt, 3), "mb_s": round(OUTPUT_BYTES / 1e6 / dt, 2),
                                          "runs": len(ssh_times)})
    try:
        dt = aio.stream(PORTS[0])
        record("cold", "asyncssh_throughput", {"seconds": round(dt, 3), "mb_s": round(OUTPUT_BYTES / 1e6 / dt, 2)})
        log(f"asyncssh read: {dt:.2f} s = {OUTPUT_BYTES / 1e6 / dt:.1f} MB/s")
    except Exception as exc:  # noqa: BLE001
        error("asyncssh throughput", exc)


def tsubame_output_once(a, jobs, pid):
    """One run of the output job; its figures, or None when it failed (recorded as an error)."""
    reset_ok = reset_peak(pid)
    sampler = RSSSampler(pid)
    sampler.start()
    try:
        cpu0 = cpu_groups()
        t0, ex = run_job(a, jobs["throughput"])
        end = time.time() + 600
        while True:
            _, e = a.call("GET", f"/api/v1/executions/{ex}")
            if e["status"] not in ("queued", "running"):
                break
            if time.time() > end:
                raise CheckFailed(f"execution {ex} still {e['status']} after 600 s")
            time.sleep(0.1)
        # CPU seconds per group for the run (up to ~0.1 s after it finished; before the checks below).
        cpu = cpu_delta(cpu0, cpu_groups())
        sampler.stop.set()
        sampler.join()
        wall = parse_ts(e["finished_at"]) - t0
        check_execution(a, ex, 1)
        q = subprocess.run([PSQL, "-X", "-q", "-t", "-A", "-F", " ", "-d", DB_URL, "-c",
                            "SELECT coalesce(sum(octet_length(data)), 0), count(*), "
                            f"coalesce(bool_and(translate(data, 'a', '') = ''), false) FROM log_chunks "
                            f"WHERE execution_id = {int(ex)} AND stream = 'stdout'"],
                           capture_output=True, text=True, check=True).stdout.split()
        stored, nchunks, only_a = int(q[0]), int(q[1]), q[2] == "t"
        if stored != OUTPUT_BYTES or not only_a or e["output_truncated"]:
            raise CheckFailed(f"throughput: stored {stored} bytes in {nchunks} chunks (want {OUTPUT_BYTES}), "
                              f"only 'a': {only_a}, truncated: {e['output_truncated']}")
        hwm = vm(pid, "VmHWM") if reset_ok else None
        return {"seconds": round(wall, 3), "mb_s": round(OUTPUT_BYTES / 1e6 / wall, 2),
                "stored_bytes": stored, "chunks": nchunks, "rss_peak_mb": hwm,
                "rss_sampled_peak_mb": round(sampler.peak, 1), "peak_reset": reset_ok, "cpu": cpu}
    except Exception as exc:  # noqa: BLE001
        sampler.stop.set()
        error("tsubame throughput", exc)
        return None


def concurrency(a, jobs):
    # 500 targets at once.
    pid = executor_pid()
    try:
        reset_ok = reset_peak(pid)
        n_each = len(load(STATE, {})["servers"][:100])
        t0 = time.time()
        exs = [a.call("POST", f"/api/v1/jobs/{j}/run")[1]["id"] for j in jobs["conc"]]
        posted = time.time() - t0
        finished, claimed, done, connect = [], [], [], []
        for ex in exs:
            chunks, _ = wait_log(a, ex, 120)
            e = check_execution(a, ex, n_each, chunks, "done\n")
            finished.append(parse_ts(e["finished_at"]))
            claimed += [parse_ts(t["started_at"]) - t0 for t in e["targets"]]
            done += [parse_ts(t["finished_at"]) - t0 for t in e["targets"]]
            connect += [int(m.group(1)) for c in chunks if c["stream"] == "system"
                        for m in [CONNECTED.match(c["data"])] if m]
        wall = max(finished) - t0
        record("cold", "concurrency", {
            "targets": n_each * len(exs), "seconds": round(wall, 3), "post_seconds": round(posted, 3), "lost": 0,
            "first_claim": round(min(claimed), 3), "last_claim": round(max(claimed), 3),
            "first_done": round(min(done), 3), "median_done": round(median(done), 3),
            "connect_p50_ms": median(connect), "connect_max_ms": max(connect, default=None),
            "rss_peak_mb": vm(pid, "VmHWM") if reset_ok else None})
        log(f"concurrency: {n_each * len(exs)} targets of 'sleep 2; echo done' finished in {wall:.2f} s")
    except Exception as exc:  # noqa: BLE001
        error("concurrency", exc)


def step_warm():
    a, st = api()
    jobs = st["jobs"]
    # Opens (and keeps) one session per server.
    log("warm-up run on all servers (opens the sessions the executor keeps)")
    tsubame_fanout_once(a, jobs["all"], max(NS), "true")
    tsubame_fanout_once(a, jobs["all"], max(NS), "true")
    measure_fanout("warm", ["tsubame"], a, jobs, None)
    measure_dispatch("warm", a, jobs)

    # ssh with a ControlMaster already open per host.
    samples, cpu = {}, {}
    cm = tempfile.mkdtemp(prefix="cm-", dir=WORK)
    path = os.path.join(cm, "%p")
    try:
        subprocess.run(["xargs", "-P", "25", "-I{}", "ssh", *SSH_OPTS, "-o", "ControlMaster=yes", "-o", f"ControlPath={path}",
                        "-o", "ControlPersist=yes", "-N", "-f", "-p", "{}", f"{USER}@127.0.0.1"],
                       input="".join(f"{p}\n" for p in PORTS), capture_output=True, text=True, timeout=120, check=True)
        if len(os.listdir(cm)) != len(PORTS):
            raise CheckFailed(f"ssh ControlMaster: {len(os.listdir(cm))} masters for {len(PORTS)} hosts")
        extra = ["-o", "ControlMaster=no", "-o", f"ControlPath={path}"]
        ssh_fanout(max(NS), "true", extra)  # untimed
        for rep in range(REPEAT):
            for cmd in CMDS:
                for n in NS:
                    try:
                        cpu0 = cpu_groups()
                        dt = ssh_fanout(n, cmd, extra)
                        if n == max(NS):
                            time.sleep(0.3)
                            cpu.setdefault("ssh-controlmaster", {}).setdefault(cmd, []).append(cpu_delta(cpu0, cpu_groups()))
                        samples.setdefault("ssh-controlmaster", {}).setdefault(cmd, {}).setdefault(str(n), []).append(round(dt, 4))
                        log(f"warm ssh-controlmaster {cmd:4} N={n:<3} {dt:7.3f} s")
                    except Exception as exc:  # noqa: BLE001
                        error(f"warm ssh-controlmaster {cmd} N={n}", exc)
    except Exception as exc:  # noqa: BLE001
        error("ssh ControlMaster set-up", exc)
    finally:
        socks = [os.path.join(cm, s) for s in os.listdir(cm)]
        subprocess.run(["xargs", "-P", "50", "-I{}", "ssh", "-o", "ControlPath={}", "-O", "exit", "x"],
                       input="".join(s + "\n" for s in socks), capture_output=True, text=True, timeout=60)
        shutil.rmtree(cm, ignore_errors=True)

    # parallel-ssh and asyncssh with their connections kept between runs.
    try:
        clients = {n: pssh_client(n) for n in NS}
        for n, c in clients.items():
            pssh_run(c, n, "true")  # untimed: connects
        aio = Async()
        conns = aio.open(max(NS))
        for rep in range(REPEAT):
            for cmd in CMDS:
                for n in NS:
                    for tool in ("parallel-ssh", "asyncssh"):
                        try:
                            cpu0 = cpu_groups()
                            if tool == "parallel-ssh":
                                t0 = time.time()
                                pssh_run(clients[n], n, cmd)
                                dt = time.time() - t0
                            else:
                                dt = aio.warm(conns, n, cmd)
                            if n == max(NS):
                                time.sleep(0.3)
                                cpu.setdefault(tool, {}).setdefault(cmd, []).append(cpu_delta(cpu0, cpu_groups()))
                            samples.setdefault(tool, {}).setdefault(cmd, {}).setdefault(str(n), []).append(round(dt, 4))
                            log(f"warm {tool:12} {cmd:4} N={n:<3} {dt:7.3f} s")
                        except Exception as exc:  # noqa: BLE001
                            error(f"warm {tool} {cmd} N={n}", exc)
        aio.close(conns)
        del clients
        gc.collect()
    except Exception as exc:  # noqa: BLE001
        error("warm parallel-ssh/asyncssh", exc)
    record("warm", "peer_samples", samples)
    record("warm", "peer_cpu", cpu)


if __name__ == "__main__":
    steps = {"setup": step_setup, "cold": step_cold, "warm": step_warm}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(steps)}")
    steps[sys.argv[1]]()
