# SPDX-License-Identifier: Apache-2.0
"""Running jobs for real: tsubame-executor against the loopback SSH fleet of scripts/test.

The standing stack runs no executor. This module starts one (and, for a while,
a second) and stops it with SIGTERM at the end. Nothing here may connect
anywhere but 127.0.0.1: before the executor starts, every unfinished
execution left by earlier modules is cancelled and the queue is asserted
empty; every server this module creates is on 127.0.0.1 (the fleet's ports, a
closed port, or a listener of the test's own); at the end, every target an
executor claimed is asserted to have been on 127.0.0.1, and no executor is left
running (test_99's schemathesis queues runs on servers with invented hosts).
No name is ever resolved (a DNS failure is not tested: it would query a resolver).

The fleet's sshd run on this machine, so the tests can read the pids a script
writes into the fleet's shared directory and check that cancel and timeout
killed the remote processes. A script tells the servers apart by the port in
$SSH_CONNECTION. Timing (scripts/test): lease 6 s, poll 0.5 s, SSH connect
timeout 5 s.

Environment: see executor.py and scripts/lib/fleet.sh (TSUBAME_TEST_SSH_*).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from executor import (PIDFILE, ExecutorProcess, Fleet, drain_foreign_work, executors_on, log_tail, pid_alive,
                      pidfile_alive, psql, psql_value)
from helpers import Client, assert_problem, job_body, parse_time, unique

FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}
LOOPBACK = "127.0.0.1"
TRUST_LINE = re.compile(r"^host key (\S+) (SHA256:[A-Za-z0-9+/]+) trusted on first use\n$")
CONNECTED_LINE = re.compile(r"^connected to 127\.0\.0\.1:(\d+) as (\S+) in \d+ ms; running \(attempt (\d+)\)\n$")
EXIT_LINE = re.compile(r"^exit code (-?\d+) after \d+\.\d\d s(; retrying \(attempt (\d+) of (\d+)\))?\n$")
PORT = "${SSH_CONNECTION##* }"  # the server's port, in a script

SAME_ID_REGRESSION = ("executor: an executor restarted with the same TSUBAME_EXECUTOR_ID renews the leases of the targets "
               "its previous process was running (Queue.heartbeat extends every running target with its id, not only "
               "the ones it runs), so they stay `running` forever and cannot even be cancelled")


# -------------------------------------------------------------- the fleet


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    f = Fleet()
    if not f.ports or not f.password:
        pytest.skip("no SSH test fleet (TSUBAME_TEST_SSH_PORTS; scripts/test starts one when run as root)")
    if not os.environ.get("TSUBAME_TEST_BIN_DIR") or not os.environ.get("TSUBAME_TEST_DATABASE_URL"):
        pytest.skip("TSUBAME_TEST_BIN_DIR and TSUBAME_TEST_DATABASE_URL are needed to start tsubame-executor")
    # The one address anything here may connect to.
    assert f.host == LOOPBACK, f"TSUBAME_TEST_SSH_HOST is {f.host!r}: this module only runs against {LOOPBACK}"
    assert len(f.ports) >= 3, f.ports
    assert f.shared.is_dir(), f"{f.shared} is missing"
    return f


class Made:
    """Servers and jobs of this module: only on 127.0.0.1; the jobs are deleted first, then the servers."""

    def __init__(self, client: Client, fleet: Fleet) -> None:
        self.client, self.fleet = client, fleet
        self.servers: list[int] = []
        self.jobs: list[int] = []

    def server(self, port: int | None = None, *, auth: str = "password", **fields: Any) -> dict:
        body: dict[str, Any] = {"name": unique("run"), "host": LOOPBACK, "port": port or self.fleet.ports[0],
                                "username": self.fleet.user, "auth_method": auth}
        if auth == "password":
            body["password"] = self.fleet.password
        body.update(fields)
        assert body["host"] == LOOPBACK, body
        s = self.client.ok("POST", "/api/v1/servers", json=body)
        self.servers.append(s["id"])
        assert s["host"] == LOOPBACK and s["host_key"] is None, s
        return s

    def fleet_servers(self) -> list[dict]:
        return [self.server(p) for p in self.fleet.ports[:3]]

    def job(self, servers: list[dict], script: str, **fields: Any) -> dict:
        j = self.client.ok("POST", "/api/v1/jobs", json=job_body([s["id"] for s in servers], script=script, **fields))
        self.jobs.append(j["id"])
        return j

    def cleanup(self) -> None:
        for jid in reversed(self.jobs):
            self.client.delete(f"/api/v1/jobs/{jid}")
        for sid in reversed(self.servers):
            self.client.delete(f"/api/v1/servers/{sid}")


@pytest.fixture(scope="module")
def made(admin_token: Client, fleet: Fleet) -> Iterator[Made]:
    m = Made(admin_token, fleet)
    yield m
    m.cleanup()


class Executors:
    """The module's executor ("main", restartable; its pid file is the one scripts/test stops on exit) and,
    for one test, a second one."""

    def __init__(self) -> None:
        self.starts = 0
        self.main = ExecutorProcess(self.new_id(), PIDFILE)
        self.second: ExecutorProcess | None = None

    def new_id(self) -> str:
        self.starts += 1
        return f"test11-main-{self.starts}-{uuid.uuid4().hex[:6]}"

    def restart_main(self, *, same_id: bool = False, env: dict[str, str] | None = None) -> None:
        if self.main.running:
            self.main.stop()
        self.main.env = dict(env or {})
        self.main.start(None if same_id else self.new_id())

    def stop_all(self) -> list[str]:
        problems = []
        for ex in (self.second, self.main):
            if ex is None:
                continue
            try:
                rc = ex.stop()
                if rc not in (0, None, -9):
                    problems.append(f"executor {ex.id} exited with {rc}")
            except AssertionError as e:
                problems.append(str(e))
        return problems


@pytest.fixture(scope="module")
def executors(admin_token: Client, fleet: Fleet, made: Made) -> Iterator[Executors]:
    assert PIDFILE, "TSUBAME_TEST_EXECUTOR_PIDFILE is not set"
    other = pidfile_alive(PIDFILE) or executors_on()
    assert not other, f"an executor (pid {other}) is already running on this database: this module starts its own"
    drain_foreign_work(admin_token)
    ex = Executors()
    ex.main.start()
    assert executors_on() == [ex.main.pid], (executors_on(), ex.main.pid)  # what test_99 relies on
    try:
        yield ex
    finally:
        problems = ex.stop_all()
        left = executors_on()
        if left:
            problems.append(f"executors still running after the module: {left}")
        # Every target any executor claimed (none ran before this module) was on the loopback fleet.
        hosts = psql("""
            SELECT DISTINCT coalesce(s.host, '(server deleted)') FROM execution_targets t
            LEFT JOIN servers s ON s.id = t.server_id WHERE t.executor_id IS NOT NULL
            """)
        foreign = {h[0] for h in hosts} - {LOOPBACK}
        assert not foreign, f"targets on other hosts were claimed: {foreign}"
        assert not problems, problems


# -------------------------------------------------------------- helpers


def run(client: Client, job_id: int, **kw: Any) -> dict:
    r = client.post(f"/api/v1/jobs/{job_id}/run", **kw)
    assert r.status_code == 202, f"run of job {job_id}: {r.status_code} {r.text[:500]}"
    return r.json()


def get(client: Client, eid: int) -> dict:
    return client.ok("GET", f"/api/v1/executions/{eid}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\nexecutor log:\n{log_tail()}")
        time.sleep(interval)


def wait_finished(client: Client, eid: int, timeout: float = 30) -> dict:
    last: dict = {}

    def done() -> bool:
        last.clear()
        last.update(get(client, eid))
        return last["status"] in FINISHED

    try:
        wait_for(done, timeout, f"execution {eid} finished")
    except AssertionError as e:
        raise AssertionError(f"{e}\nexecution: {json.dumps(last, indent=1)}") from None
    return last


def wait_running(client: Client, eid: int, timeout: float = 20) -> dict:
    def running() -> dict | None:
        e = get(client, eid)
        assert e["status"] not in FINISHED, e
        return e if all(t["status"] == "running" for t in e["targets"]) else None

    return wait_for(running, timeout, f"execution {eid} running")


def full_log(client: Client, eid: int) -> dict:
    """Every chunk, paging with `after`; the last page's status and complete flag."""
    chunks: list[dict] = []
    after = 0
    for _ in range(1000):
        page = client.ok("GET", f"/api/v1/executions/{eid}/log", params={"after": after, "limit": 5000})
        chunks += page["chunks"]
        after = page["next_seq"]
        if not page["chunks"]:
            return {"chunks": chunks, "status": page["status"], "complete": page["complete"], "next_seq": after}
    raise AssertionError("the log did not end")


def text_of(chunks: list[dict], server_id: int | None, stream: str) -> str:
    return "".join(c["data"] for c in chunks
                   if c["stream"] == stream and (server_id is None or c["server_id"] == server_id))


def system_lines(chunks: list[dict], server_id: int) -> list[str]:
    return [c["data"] for c in chunks if c["stream"] == "system" and c["server_id"] == server_id]


def assert_seq_increasing(chunks: list[dict]) -> None:
    seqs = [c["seq"] for c in chunks]
    assert seqs and seqs[0] >= 1 and all(a < b for a, b in zip(seqs, seqs[1:])), seqs


def log_txt(client: Client, eid: int) -> str:
    r = client.get(f"/api/v1/executions/{eid}/log.txt")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain"), r.text[:300]
    return r.text


def expected_log_txt(e: dict, chunks: list[dict]) -> str:
    names = {t["server_id"]: t["server_name"] for t in e["targets"]}
    return "".join((f"[{names[c['server_id']]}] # " if c["stream"] == "system" else "") + c["data"] for c in chunks)


def pid_file(fleet: Fleet) -> Path:
    return fleet.shared / f"tsb-{uuid.uuid4().hex}.pid"


def sleeper_script(path: Path, seconds: int) -> str:
    """Writes the shell's pid and its sleep's pid to `path` (atomically), then waits for the sleep."""
    return (f"echo $$ > {path}.tmp\nsleep {seconds} &\necho $! >> {path}.tmp\nmv {path}.tmp {path}\n"
            f"echo started\nwait\n")


def read_pids(path: Path) -> list[int]:
    pids = [int(x) for x in path.read_text().split()]
    assert len(pids) == 2, pids
    return pids


def kill_leftovers(pids: list[int]) -> None:
    """Processes a test's job started and the product was not asked to stop (lost executor)."""
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def assert_finished_target(t: dict, status: str, exit_code: int | None, attempt: int = 1) -> None:
    assert t["status"] == status and t["exit_code"] == exit_code and t["attempt"] == attempt, t
    assert t["started_at"] and t["finished_at"] and "waiting_reason" not in t, t
    assert parse_time(t["started_at"]) <= parse_time(t["finished_at"]), t


# -------------------------------------------------------------- 1. a job on the fleet


def test_job_on_three_servers(executors: Executors, made: Made, fleet: Fleet, operator: Client,
                              admin_token: Client, viewer: Client) -> None:
    servers = made.fleet_servers()
    script = (f'port={PORT}\necho "hello from port $port"\necho "warning from port $port" >&2\n'
              f'echo "ünïcødé ✓"\nprintf "no newline at the end %s" "$port"\n')
    job = made.job(servers, script)
    e = run(operator, job["id"])
    assert e["status"] in ("queued", "running") and e["trigger"] == "manual", e
    assert e["triggered_by"] == {"id": operator.user["id"], "username": operator.user["username"]}
    e = wait_finished(viewer, e["id"])
    assert e["status"] == "succeeded" and e["exit_code"] == 0, e
    assert "waiting_reason" not in e
    started, finished = parse_time(e["started_at"]), parse_time(e["finished_at"])
    assert started <= finished and e["duration_ms"] >= 0
    assert abs(e["duration_ms"] - (finished - started) / timedelta(milliseconds=1)) <= 2, e
    assert [t["server_id"] for t in e["targets"]] == [s["id"] for s in servers]
    for t in e["targets"]:
        assert_finished_target(t, "succeeded", 0)
        assert t["error"] is None
        assert started <= parse_time(t["started_at"]) and parse_time(t["finished_at"]) <= finished, (e, t)

    log = full_log(viewer, e["id"])
    assert log["status"] == "succeeded" and log["complete"] is True
    chunks = log["chunks"]
    assert_seq_increasing(chunks)
    assert {c["stream"] for c in chunks} == {"stdout", "stderr", "system"}
    keys = fleet.host_keys()
    pins = {}
    for s in servers:
        port = s["port"]
        assert text_of(chunks, s["id"], "stdout") == \
            f"hello from port {port}\nünïcødé ✓\nno newline at the end {port}"
        assert text_of(chunks, s["id"], "stderr") == f"warning from port {port}\n"
        lines = system_lines(chunks, s["id"])
        assert len(lines) == 3, lines
        trust, connected, exited = TRUST_LINE.match(lines[0]), CONNECTED_LINE.match(lines[1]), EXIT_LINE.match(lines[2])
        assert trust and connected and exited, lines
        assert keys.get(trust[1]) == trust[2], (lines[0], keys)
        assert connected.groups() == (str(port), fleet.user, "1") and exited[1] == "0" and not exited[2], lines
        # The host key is pinned now, as the first-use line said.
        pinned = admin_token.ok("GET", f"/api/v1/servers/{s['id']}")["host_key"]
        assert pinned and (pinned["algorithm"], pinned["fingerprint_sha256"]) == (trust[1], trust[2]), pinned
        assert parse_time(pinned["trusted_at"]) <= finished + timedelta(seconds=1)
        pins[s["id"]] = pinned
    assert log_txt(viewer, e["id"]) == expected_log_txt(e, chunks)

    # Again, with a token (trigger api): the pinned keys are checked, not trusted again.
    e2 = wait_finished(viewer, run(admin_token, job["id"])["id"])
    assert e2["status"] == "succeeded" and e2["trigger"] == "api" and e2["exit_code"] == 0, e2
    chunks2 = full_log(viewer, e2["id"])["chunks"]
    assert not any(TRUST_LINE.match(c["data"]) for c in chunks2 if c["stream"] == "system"), chunks2
    for s in servers:
        assert admin_token.ok("GET", f"/api/v1/servers/{s['id']}")["host_key"] == pins[s["id"]]
        assert text_of(chunks2, s["id"], "stdout") == text_of(chunks, s["id"], "stdout")
    assert admin_token.ok("GET", f"/api/v1/jobs/{job['id']}")["last_execution"] == \
        {"id": e2["id"], "status": "succeeded", "finished_at": e2["finished_at"]}


# -------------------------------------------------------------- 2. key authentication


def test_key_authentication(executors: Executors, made: Made, fleet: Fleet, admin_token: Client) -> None:
    port = fleet.ports[1]
    servers = [
        made.server(port, auth="key", private_key=fleet.key("ed25519")),
        made.server(port, auth="key", private_key=fleet.key("ed25519_passphrase"), passphrase=fleet.passphrase),
        made.server(port, auth="key", private_key=fleet.key("ecdsa")),
    ]
    for s in servers:
        assert s["auth_method"] == "key" and s["has_private_key"] and not s["has_password"], s
    job = made.job(servers, 'echo "I am $(id -un)"\n')
    e = wait_finished(admin_token, run(admin_token, job["id"])["id"])
    assert e["status"] == "succeeded", e
    chunks = full_log(admin_token, e["id"])["chunks"]
    for s in servers:
        assert text_of(chunks, s["id"], "stdout") == f"I am {fleet.user}\n"

    # RSA: OpenSSH >= 8.8 refuses the SHA-1 signatures libssh2 1.10 makes; the error says what to do.
    rsa = made.server(port, auth="key", private_key=fleet.key("rsa"))
    e = wait_finished(admin_token, run(admin_token, made.job([rsa], "echo rsa works\n")["id"])["id"])
    t = e["targets"][0]
    if fleet.openssh >= (8, 8):
        assert e["status"] == "failed" and e["exit_code"] is None, e
        assert_finished_target(t, "failed", None)
        assert "SHA-1" in t["error"] and "ed25519" in t["error"] and "refused the RSA key" in t["error"], t
        chunks = full_log(admin_token, e["id"])["chunks"]
        assert system_lines(chunks, rsa["id"])[-1] == t["error"] + "\n"
        assert text_of(chunks, None, "stdout") == ""
        probe = admin_token.ok("POST", f"/api/v1/servers/{rsa['id']}/test", status=200)
        assert probe["ok"] is False and probe["failure"] == "rsaSHA1Refused" and "ed25519" in probe["error"], probe
    else:
        assert e["status"] == "succeeded", e

    # A wrong passphrase is a clear error, not a crash.
    wrong = made.server(port, auth="key", private_key=fleet.key("ed25519_passphrase"), passphrase="not-the-passphrase")
    probe = admin_token.ok("POST", f"/api/v1/servers/{wrong['id']}/test", status=200)
    assert probe["ok"] is False and probe["failure"] == "authFailed" and "passphrase" in probe["error"], probe


# -------------------------------------------------------------- 3. env and secret_env


def test_env_and_secrets_reach_the_script_and_secrets_are_masked(executors: Executors, made: Made, fleet: Fleet,
                                                                admin_token: Client, viewer: Client) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    other = "tok-" + uuid.uuid4().hex
    quoted = "it's \"quoted\" $HOME `id` \\ ünï"
    script = "\n".join([
        'printf "greeting=%s\\n" "$GREETING"',
        'printf "quoted=%s\\n" "$QUOTED"',
        'printf "secret=%s\\n" "$SECRET"',
        # twice, the second after a pause: two reads
        'printf "%s" "$SECRET"; sleep 0.2; printf "%s\\n" "$SECRET"',
        # split inside the value, across two reads
        'head=${SECRET%????????}; tail=${SECRET#"$head"}',
        'printf "split=%s" "$head"; sleep 0.2; printf "%s\\n" "$tail"',
        'printf "err=%s %s\\n" "$SECRET" "$OTHER" >&2',
        'printf "len=%s sha=%s\\n" "${#SECRET}" "$(printf "%s" "$SECRET" | sha256sum | cut -d" " -f1)"',
        "",
    ])
    job = made.job([made.server(fleet.ports[2])], script, env={"GREETING": "from the job", "QUOTED": quoted},
                   secret_env={"SECRET": secret, "OTHER": other})
    assert sorted(job["secret_env_names"]) == ["OTHER", "SECRET"]
    assert secret not in json.dumps(admin_token.ok("GET", f"/api/v1/jobs/{job['id']}"))
    e = wait_finished(admin_token, run(admin_token, job["id"], json={"env": {"GREETING": "from the run"}})["id"])
    assert e["status"] == "succeeded", e
    log = full_log(viewer, e["id"])
    sha = hashlib.sha256(secret.encode()).hexdigest()
    assert text_of(log["chunks"], None, "stdout") == (
        f"greeting=from the run\nquoted={quoted}\nsecret=***\n******\nsplit=***\nlen={len(secret)} sha={sha}\n")
    assert text_of(log["chunks"], None, "stderr") == "err=*** ***\n"
    text = log_txt(viewer, e["id"])
    everything = [json.dumps(log, ensure_ascii=False), text, json.dumps(get(viewer, e["id"])), log_tail(10_000)]
    work = os.environ.get("TSUBAME_TEST_WORK_DIR")
    if work and Path(work, "log", "pool.log").exists():
        everything.append(Path(work, "log", "pool.log").read_text(errors="replace"))
    for where, blob in zip(("log", "log.txt", "execution", "executor log", "pool log"), everything):
        for value in (secret, other, secret[:-8]):
            assert value not in blob, f"a secret appears in the {where}"


# -------------------------------------------------------------- 4. non-zero exit


def test_non_zero_exit_fails_with_the_first_code_in_server_order(executors: Executors, made: Made,
                                                                 admin_token: Client) -> None:
    s0, s1, s2 = made.fleet_servers()
    codes = {s0["port"]: 3, s1["port"]: 0, s2["port"]: 5}
    cases = "".join(f"{p}) echo 'exit {c}' >&2; exit {c};; " for p, c in codes.items())
    job = made.job([s1, s2, s0], f"case {PORT} in {cases}esac\n")
    e = wait_finished(admin_token, run(admin_token, job["id"])["id"])
    assert e["status"] == "failed" and e["exit_code"] == 5, e  # s1: 0, then s2: 5 (not the smallest, 3)
    by_id = {t["server_id"]: t for t in e["targets"]}
    chunks = full_log(admin_token, e["id"])["chunks"]
    for s in (s0, s1, s2):
        code = codes[s["port"]]
        assert_finished_target(by_id[s["id"]], "succeeded" if code == 0 else "failed", code)
        assert by_id[s["id"]]["error"] is None
        assert EXIT_LINE.match(system_lines(chunks, s["id"])[-1])[1] == str(code)
        assert text_of(chunks, s["id"], "stderr") == f"exit {code}\n"


# -------------------------------------------------------------- 5. cancel, 6. timeout


def test_cancel_kills_the_remote_process_group(executors: Executors, made: Made, fleet: Fleet,
                                               operator: Client, admin_token: Client) -> None:
    path = pid_file(fleet)
    job = made.job([made.server(fleet.ports[0])], sleeper_script(path, 300))
    e = run(admin_token, job["id"])
    wait_running(admin_token, e["id"])
    wait_for(path.exists, 20, f"{path} written by the job")
    pids = read_pids(path)
    try:
        assert all(pid_alive(p) for p in pids), pids
        t0 = time.monotonic()
        r = operator.post(f"/api/v1/executions/{e['id']}/cancel")
        assert r.status_code == 202, r.text
        assert r.json()["status"] in ("running", "cancelled")
        e = wait_finished(admin_token, e["id"], timeout=10)
        took = time.monotonic() - t0
        assert e["status"] == "cancelled" and e["exit_code"] is None, e
        assert took <= 3.0, f"cancel took {took:.1f} s"
        t = e["targets"][0]
        assert_finished_target(t, "cancelled", None)
        assert t["error"] == "cancelled", t
        wait_for(lambda: not any(pid_alive(p) for p in pids), max(0.5, 3.0 - (time.monotonic() - t0)),
                 f"remote processes {pids} gone within 3 s of the cancel")
        chunks = full_log(admin_token, e["id"])["chunks"]
        assert text_of(chunks, None, "stdout") == "started\n"
        assert re.match(r"^cancelled after \d+\.\d\d s; the remote process group was killed\n$",
                        system_lines(chunks, t["server_id"])[-1]), chunks
        assert_problem(operator.post(f"/api/v1/executions/{e['id']}/cancel"), 409)
    finally:
        kill_leftovers([p for p in pids if pid_alive(p)])
        path.unlink(missing_ok=True)


def test_timeout_kills_the_remote_process_group(executors: Executors, made: Made, fleet: Fleet,
                                                admin_token: Client) -> None:
    path = pid_file(fleet)
    job = made.job([made.server(fleet.ports[1])], sleeper_script(path, 60), timeout_seconds=2)
    e = run(admin_token, job["id"])
    wait_for(path.exists, 20, f"{path} written by the job")
    pids = read_pids(path)
    try:
        e = wait_finished(admin_token, e["id"], timeout=15)
        assert e["status"] == "timed_out" and e["exit_code"] is None, e
        t = e["targets"][0]
        assert_finished_target(t, "timed_out", None)
        assert t["error"] == "timed out after 2 s; the remote process group was killed", t
        ran = parse_time(t["finished_at"]) - parse_time(t["started_at"])
        assert timedelta(seconds=2) <= ran <= timedelta(seconds=6), ran
        wait_for(lambda: not any(pid_alive(p) for p in pids), 3, f"remote processes {pids} gone")
        chunks = full_log(admin_token, e["id"])["chunks"]
        assert system_lines(chunks, t["server_id"])[-1] == t["error"] + "\n"
    finally:
        kill_leftovers([p for p in pids if pid_alive(p)])
        path.unlink(missing_ok=True)


# -------------------------------------------------------------- 7. retries


def test_retries_rerun_only_the_failed_target(executors: Executors, made: Made, fleet: Fleet,
                                              admin_token: Client) -> None:
    good, bad = made.server(fleet.ports[0]), made.server(fleet.ports[1])
    script = f'echo "run on {PORT}"\n[ {PORT} = {good["port"]} ] || exit 7\n'
    job = made.job([good, bad], script, retries=1)
    e = wait_finished(admin_token, run(admin_token, job["id"])["id"], timeout=30)
    assert e["status"] == "failed" and e["exit_code"] == 7, e
    assert_finished_target(e["targets"][0], "succeeded", 0, attempt=1)
    assert_finished_target(e["targets"][1], "failed", 7, attempt=2)
    chunks = full_log(admin_token, e["id"])["chunks"]
    assert text_of(chunks, good["id"], "stdout") == f"run on {good['port']}\n"
    assert text_of(chunks, bad["id"], "stdout") == f"run on {bad['port']}\n" * 2
    assert [CONNECTED_LINE.match(x)[3] for x in system_lines(chunks, good["id"]) if CONNECTED_LINE.match(x)] == ["1"]
    # (the first attempt also pinned the host key: "trusted on first use")
    lines = [c for c in chunks if c["stream"] == "system" and c["server_id"] == bad["id"]
             and not TRUST_LINE.match(c["data"])]
    kinds = [("connected", CONNECTED_LINE.match(c["data"])[3]) if CONNECTED_LINE.match(c["data"]) else
             ("exit", EXIT_LINE.match(c["data"]).group(1, 3, 4)) for c in lines]
    assert kinds == [("connected", "1"), ("exit", ("7", "2", "2")), ("connected", "2"), ("exit", ("7", None, None))], \
        [c["data"] for c in lines]
    # the backoff before the second attempt (2 s after the first)
    assert parse_time(lines[2]["at"]) - parse_time(lines[1]["at"]) >= timedelta(seconds=1.5), lines


# -------------------------------------------------------------- 8. POST /servers/{id}/test


def test_server_test_endpoint_and_pinned_host_keys(executors: Executors, made: Made, fleet: Fleet,
                                                   operator: Client, viewer: Client, anon: Client,
                                                   admin_token: Client) -> None:
    port = fleet.ports[2]
    keys = fleet.host_keys()
    s = made.server(port)
    path = f"/api/v1/servers/{s['id']}/test"
    assert_problem(viewer.post(path), 403)
    assert_problem(anon.post(path), 401)
    assert_problem(operator.post("/api/v1/servers/9223372036854775807/test"), 404)
    assert admin_token.ok("GET", f"/api/v1/servers/{s['id']}")["host_key"] is None

    probe = operator.ok("POST", path, status=200)
    assert probe["ok"] is True and "error" not in probe and "failure" not in probe, probe
    assert isinstance(probe["latency_ms"], (int, float)) and 0 < probe["latency_ms"] < 10_000, probe
    hk = probe["host_key"]
    assert keys.get(hk["algorithm"]) == hk["fingerprint_sha256"] and hk["trusted_at"], (hk, keys)
    pinned = admin_token.ok("GET", f"/api/v1/servers/{s['id']}")["host_key"]
    assert pinned == hk, (pinned, hk)
    again = admin_token.ok("POST", path, status=200)
    assert again["ok"] is True and again["host_key"] == hk, again  # pinned once, not re-trusted

    # A wrong password: a clear error, and nothing pinned.
    wrong = made.server(port, password="wrong-" + uuid.uuid4().hex)
    probe = operator.ok("POST", f"/api/v1/servers/{wrong['id']}/test", status=200)
    assert probe["ok"] is False and probe["failure"] == "authFailed", probe
    assert "refused the password" in probe["error"] and fleet.user in probe["error"], probe
    assert admin_token.ok("GET", f"/api/v1/servers/{wrong['id']}")["host_key"] is None

    # A changed host key is refused before any credential is sent, by the test and by a run.
    psql("""
        UPDATE servers SET host_key_algorithm = 'ssh-ed25519', host_key_fingerprint = 'SHA256:bogus',
               host_key_trusted_at = now() WHERE id = :id
        """, id=s["id"])
    auth_before = fleet.auth_lines(port)
    probe = operator.ok("POST", path, status=200)
    assert probe["ok"] is False and probe["failure"] == "hostKeyChanged", probe
    assert "has changed" in probe["error"] and "SHA256:bogus" in probe["error"], probe
    assert '{"host_key": null}' in probe["error"] and "No credential was sent" in probe["error"], probe
    assert probe["host_key"]["fingerprint_sha256"] == hk["fingerprint_sha256"], probe
    assert probe["host_key"]["trusted_at"] is None, probe
    marker = fleet.shared / f"tsb-{uuid.uuid4().hex}.ran"
    job = made.job([s], f"touch {marker}\necho ran\n")
    e = wait_finished(admin_token, run(admin_token, job["id"])["id"])
    assert e["status"] == "failed" and e["exit_code"] is None, e
    t = e["targets"][0]
    assert_finished_target(t, "failed", None)
    assert "has changed" in t["error"] and "host_key" in t["error"], t
    chunks = full_log(admin_token, e["id"])["chunks"]
    assert [c["data"] for c in chunks] == [t["error"] + "\n"], chunks  # one system line: nothing ran
    assert not marker.exists()
    time.sleep(0.3)
    assert fleet.auth_lines(port) == auth_before, "a credential was sent to a server whose host key changed"
    assert admin_token.ok("GET", f"/api/v1/servers/{s['id']}")["host_key"]["fingerprint_sha256"] == "SHA256:bogus"

    # An admin forgets the pinned key: the next test trusts and pins the real one again; runs work.
    assert_problem(operator.patch(f"/api/v1/servers/{s['id']}", json={"host_key": None}), 403)
    assert admin_token.ok("PATCH", f"/api/v1/servers/{s['id']}", json={"host_key": None})["host_key"] is None
    probe = operator.ok("POST", path, status=200)
    assert probe["ok"] is True and probe["host_key"]["fingerprint_sha256"] == hk["fingerprint_sha256"], probe
    assert probe["host_key"]["trusted_at"] is not None
    assert admin_token.ok("GET", f"/api/v1/servers/{s['id']}")["host_key"] == probe["host_key"]
    e = wait_finished(admin_token, run(admin_token, job["id"])["id"])
    assert e["status"] == "succeeded", e
    assert marker.exists()
    marker.unlink()


# -------------------------------------------------------------- 9. errors a user can act on


def test_refused_connection(executors: Executors, made: Made, admin_token: Client) -> None:
    port = closed_port()
    s = made.server(port)
    e = wait_finished(admin_token, run(admin_token, made.job([s], "echo never\n")["id"])["id"], timeout=20)
    assert e["status"] == "failed" and e["exit_code"] is None, e
    t = e["targets"][0]
    assert_finished_target(t, "failed", None)
    assert f"127.0.0.1:{port} refused the connection" in t["error"] and "sshd" in t["error"], t
    log = full_log(admin_token, e["id"])
    assert [c["data"] for c in log["chunks"]] == [t["error"] + "\n"] and log["complete"] is True, log
    assert psql_value("SELECT count(*) FROM execution_targets WHERE execution_id = :id AND status = 'running'",
                      id=e["id"]) == "0"
    probe = admin_token.ok("POST", f"/api/v1/servers/{s['id']}/test", status=200)
    assert probe["ok"] is False and probe["failure"] == "refused" and probe["host_key"] is None, probe
    assert "refused the connection" in probe["error"], probe


def test_login_shell_that_cannot_run_sh(executors: Executors, made: Made, fleet: Fleet, admin_token: Client) -> None:
    s = made.server(fleet.ports[0], username=fleet.noshell_user)
    e = wait_finished(admin_token, run(admin_token, made.job([s], "echo never\n")["id"])["id"])
    assert e["status"] == "failed", e
    t = e["targets"][0]
    assert_finished_target(t, "failed", None)
    assert "could not run /bin/sh" in t["error"] and fleet.noshell_user in t["error"], t
    chunks = full_log(admin_token, e["id"])["chunks"]
    assert system_lines(chunks, s["id"])[-1] == t["error"] + "\n"
    assert "never" not in text_of(chunks, None, "stdout")
    probe = admin_token.ok("POST", f"/api/v1/servers/{s['id']}/test", status=200)
    assert probe["ok"] is False and probe["failure"] == "shellNotFound", probe


class FakeServers:
    """Two listeners on 127.0.0.1: one accepts TCP and never says anything (the kernel completes the
    handshake from the backlog), one answers like a web server and hangs up."""

    def __init__(self) -> None:
        self.silent = socket.create_server((LOOPBACK, 0), backlog=16)
        self.web = socket.create_server((LOOPBACK, 0), backlog=16)
        self.web.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.web.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.silent.close()
        self.web.close()


def test_silent_and_non_ssh_servers(executors: Executors, made: Made, admin_token: Client) -> None:
    fake = FakeServers()
    try:
        silent = made.server(fake.silent.getsockname()[1])
        web = made.server(fake.web.getsockname()[1])
        e = run(admin_token, made.job([silent, web], "echo never\n")["id"])
        e = wait_finished(admin_token, e["id"], timeout=20)  # the connect timeout is 5 s (scripts/test)
        assert e["status"] == "failed" and e["exit_code"] is None, e
        t_silent, t_web = e["targets"]
        assert_finished_target(t_silent, "failed", None)
        assert_finished_target(t_web, "failed", None)
        label = f"127.0.0.1:{silent['port']}"
        assert t_silent["error"] == f"the SSH handshake with {label} did not finish within 5 s", t_silent
        assert f"127.0.0.1:{web['port']}" in t_web["error"] and "not an SSH server" in t_web["error"], t_web
        chunks = full_log(admin_token, e["id"])["chunks"]
        for t in (t_silent, t_web):
            assert [c["data"] for c in chunks if c["server_id"] == t["server_id"]] == [t["error"] + "\n"], chunks
        probe = admin_token.ok("POST", f"/api/v1/servers/{web['id']}/test", status=200)
        assert probe["ok"] is False and "not an SSH server" in probe["error"] and probe["host_key"] is None, probe
    finally:
        fake.close()


# -------------------------------------------------------------- 10. a lost executor


@pytest.mark.timeout(90)
def test_killed_executor_is_reaped_after_its_lease(executors: Executors, made: Made, fleet: Fleet,
                                                   admin_token: Client) -> None:
    path = pid_file(fleet)
    job = made.job([made.server(fleet.ports[1])], sleeper_script(path, 30))
    e = run(admin_token, job["id"])
    wait_running(admin_token, e["id"])
    wait_for(path.exists, 20, f"{path} written by the job")
    pids = read_pids(path)
    try:
        lost = executors.main.id
        assert psql_value("SELECT executor_id FROM execution_targets WHERE execution_id = :id", id=e["id"]) == lost
        executors.main.kill9()
        killed = time.monotonic()
        executors.restart_main()  # a new id: it reaps the old one's target once the lease expired
        e = wait_finished(admin_token, e["id"], timeout=15)
        took = time.monotonic() - killed
        assert e["status"] == "failed" and e["exit_code"] is None, e
        assert 4 <= took <= 15, f"reaped {took:.1f} s after the kill (lease 6 s)"
        t = e["targets"][0]
        assert_finished_target(t, "failed", None)
        assert f"({lost}) stopped heartbeating" in t["error"], t
        chunks = full_log(admin_token, e["id"])["chunks"]
        assert system_lines(chunks, t["server_id"])[-1] == \
            f"executor {lost} was lost (no heartbeat before its lease expired); target marked failed\n", chunks
    finally:
        kill_leftovers(pids)
        path.unlink(missing_ok=True)
    # the new executor runs jobs
    assert wait_finished(admin_token, run(admin_token, made.job([made.server()], "true\n")["id"])["id"])["status"] \
        == "succeeded"


@pytest.mark.timeout(90)
def test_restart_with_the_same_executor_id_still_reaps(executors: Executors, made: Made, fleet: Fleet,
                                                       admin_token: Client) -> None:
    path = pid_file(fleet)
    job = made.job([made.server(fleet.ports[2])], sleeper_script(path, 30))
    e = run(admin_token, job["id"])
    wait_running(admin_token, e["id"])
    wait_for(path.exists, 20, f"{path} written by the job")
    pids = read_pids(path)
    try:
        executors.main.kill9()
        executors.restart_main(same_id=True)  # e.g. a service with a fixed TSUBAME_EXECUTOR_ID, restarted
        try:
            e = wait_finished(admin_token, e["id"], timeout=15)
        except AssertionError:
            lease = psql("""
                SELECT status, executor_id, round(extract(epoch FROM lease_expires_at - now())) FROM execution_targets
                WHERE execution_id = :id""", id=e["id"])
            raise AssertionError(f"still running 15 s after the kill (lease 6 s); target (status, executor, lease "
                                 f"seconds left): {lease}") from None
        assert e["status"] == "failed", e
    finally:
        kill_leftovers(pids)
        path.unlink(missing_ok=True)
        if get(admin_token, e["id"])["status"] not in FINISHED:
            # The bug: the target is held by a live lease forever. A new id lets the lease expire and be reaped.
            executors.restart_main()
            wait_finished(admin_token, e["id"], timeout=20)


def test_health_lists_the_running_executor(executors: Executors, anon: Client) -> None:
    body = anon.ok("GET", "/api/health")
    assert body["status"] == "ok", body
    mine = [x for x in body["executors"] if x["id"] == executors.main.id]
    assert len(mine) == 1 and mine[0]["host"], body
    assert abs(parse_time(mine[0]["last_seen"]) - datetime.now(timezone.utc)) < timedelta(seconds=10), mine


# -------------------------------------------------------------- 11. two executors drain the queue


DRAIN_SERVERS, DRAIN_RUNS = 100, 5  # 500 targets


@pytest.mark.timeout(240)
def test_two_executors_drain_the_queue_without_duplicates(executors: Executors, made: Made, fleet: Fleet,
                                                          admin_token: Client) -> None:
    # 100 servers on the fleet's sshd (several per sshd), 5 runs: 500 targets queued at once.
    servers = [made.server(fleet.ports[i % len(fleet.ports)], name=unique(f"drain{i:03d}")) for i in range(DRAIN_SERVERS)]
    job = made.job(servers, "true\n", max_parallel=DRAIN_SERVERS)
    # A capacity of 60 each: neither executor can take all 500 targets, so both must work.
    capped = {"TSUBAME_EXECUTOR_CAPACITY": "60"}
    executors.restart_main(env=capped)
    executors.second = ExecutorProcess("second", os.path.join(os.path.dirname(PIDFILE), "executor-second.pid"), capped)
    executors.second.start()
    try:
        runs = [run(admin_token, job["id"]) for _ in range(DRAIN_RUNS)]
        done = [wait_finished(admin_token, r["id"], timeout=180) for r in runs]
    finally:
        executors.second.stop()
        executors.restart_main()
    for e in done:
        assert e["status"] == "succeeded" and e["exit_code"] == 0, e
        assert [t["server_id"] for t in e["targets"]] == [s["id"] for s in servers]
        for t in e["targets"]:
            assert_finished_target(t, "succeeded", 0, attempt=1)
        chunks = full_log(admin_token, e["id"])["chunks"]
        assert_seq_increasing(chunks)
        assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1)), "seq has gaps"
        # Each target ran exactly once: one "connected" and one exit line per server, none lost, none twice.
        exits = [c["server_id"] for c in chunks if c["stream"] == "system" and EXIT_LINE.match(c["data"])]
        starts = [c["server_id"] for c in chunks if c["stream"] == "system" and CONNECTED_LINE.match(c["data"])]
        assert sorted(exits) == sorted(starts) == sorted(s["id"] for s in servers), (len(exits), len(starts))
    ids = ",".join(str(e["id"]) for e in done)
    rows = psql("""
        SELECT executor_id, count(*) FROM execution_targets
        WHERE execution_id = ANY(string_to_array(:'ids', ',')::bigint[])
        GROUP BY executor_id ORDER BY executor_id
        """, ids=ids)
    counts = {r[0]: int(r[1]) for r in rows}
    assert sum(counts.values()) == DRAIN_SERVERS * DRAIN_RUNS and len(counts) == 2 and "second" in counts, counts
    assert all(n > 0 for n in counts.values()), counts
    # No target was claimed twice (a second claim would have raised its attempt or left a second start line above).
    assert psql_value("""
        SELECT count(*) FROM execution_targets
        WHERE execution_id = ANY(string_to_array(:'ids', ',')::bigint[]) AND (attempt <> 1 OR status <> 'succeeded')
        """, ids=ids) == "0"


# -------------------------------------------------------------- 12. a lot of output


BIG_LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"  # what `yes` repeats
BIG_BYTES = 200_000_000


def _expected_md5(line: bytes, size: int) -> str:
    h = hashlib.md5()
    block = line * (1 << 16)
    left = size
    while left >= len(block):
        h.update(block)
        left -= len(block)
    h.update((line * (left // len(line) + 1))[:left])
    return h.hexdigest()


def _stored(eid: int) -> tuple[int, str, int, int, int]:
    """(stdout bytes, md5 of stdout in seq order, chunks, largest chunk, last_seq) of an execution, from PostgreSQL."""
    row = psql("""
        SELECT coalesce(sum(octet_length(data)), 0), md5(coalesce(string_agg(data, '' ORDER BY seq), '')), count(*),
               coalesce(max(octet_length(data)), 0), (SELECT last_seq FROM executions WHERE id = :'id')
        FROM log_chunks WHERE execution_id = :'id' AND stream = 'stdout'
        """, id=eid)[0]
    return int(row[0]), row[1], int(row[2]), int(row[3]), int(row[4])


@pytest.mark.timeout(180)
def test_200_mb_of_output_is_stored_completely(executors: Executors, made: Made, fleet: Fleet,
                                               admin_token: Client) -> None:
    """Issue 3: a job printing 200 MB, every byte stored (the default cap of 64 MiB is raised to 256 for it);
    then the cap itself, at 1 MiB."""
    server = made.server(fleet.ports[0])
    alphabet = BIG_LINE.decode().rstrip("\n")
    big = made.job([server], f"yes {alphabet} | head -c {BIG_BYTES}\necho done >&2\n", timeout_seconds=120)
    executors.restart_main(env={"TSUBAME_OUTPUT_CAP_MB": "256"})
    try:
        t0 = time.monotonic()
        e = wait_finished(admin_token, run(admin_token, big["id"])["id"], timeout=120)
        took = time.monotonic() - t0
        assert e["status"] == "succeeded" and e["exit_code"] == 0 and not e["output_truncated"], e
        size, md5, chunks, largest, last_seq = _stored(e["id"])
        assert size == BIG_BYTES, f"stored {size} of {BIG_BYTES} bytes in {chunks} chunks ({took:.1f} s)"
        assert md5 == _expected_md5(BIG_LINE, BIG_BYTES), "the stored output differs from what the job printed"
        # Chunks of about 64 KiB: a page of the log API stays bounded.
        assert chunks >= BIG_BYTES // (160 << 10) and largest <= 160 << 10, (chunks, largest)
        # The end of the log through the API: the stderr line and the exit line after the output, seq without gaps.
        page = admin_token.ok("GET", f"/api/v1/executions/{e['id']}/log", params={"after": last_seq - 5, "limit": 10})
        assert page["complete"] and page["next_seq"] == last_seq, {k: v for k, v in page.items() if k != "chunks"}
        assert [c["seq"] for c in page["chunks"]] == list(range(last_seq - 4, last_seq + 1))
        tail = page["chunks"]
        assert text_of(tail, server["id"], "stderr") == "done\n", tail
        assert EXIT_LINE.match(system_lines(tail, server["id"])[-1]), tail
        assert psql_value("SELECT count(*) FROM log_chunks WHERE execution_id = :'id'", id=e["id"]) == str(last_seq)

        # The cap: the first 1 MiB is kept, the rest dropped with one system line; the job still succeeds.
        executors.restart_main(env={"TSUBAME_OUTPUT_CAP_MB": "1"})
        capped = made.job([server], "yes | head -c 3000000\necho late >&2\n")
        e = wait_finished(admin_token, run(admin_token, capped["id"])["id"], timeout=60)
        assert e["status"] == "succeeded" and e["output_truncated"], e
        size, md5, chunks, largest, last_seq = _stored(e["id"])
        assert size == 1 << 20, size  # exactly the cap's worth
        assert md5 == _expected_md5(b"y\n", size)
        chunks_all = full_log(admin_token, e["id"])["chunks"]
        assert text_of(chunks_all, server["id"], "stderr") == "", "output after the cap must be dropped"
        limit = [c for c in system_lines(chunks_all, server["id"]) if c.startswith("output limit")]
        assert limit == ["output limit of 1 MiB reached: further output of this execution is dropped "
                         "(the job keeps running)\n"], limit
        assert EXIT_LINE.match(system_lines(chunks_all, server["id"])[-1])
    finally:
        executors.restart_main()


def _parent(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_text()
    return int(data[data.rindex(")") + 2:].split()[1])


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_sshd_killed_mid_job_fails_the_target_with_a_clear_error(executors: Executors, made: Made, fleet: Fleet,
                                                                  admin_token: Client) -> None:
    """The sshd process serving the session dies mid-job (the listener stays up for other tests)."""
    path = pid_file(fleet)
    job = made.job([made.server(fleet.ports[1])], sleeper_script(path, 60))
    e = run(admin_token, job["id"])
    wait_running(admin_token, e["id"])
    wait_for(path.exists, 20, f"{path} written by the job")
    pids = read_pids(path)
    try:
        # Walk up from the remote shell to the per-connection sshd processes (privilege-separated child and its monitor).
        session = []
        p = _parent(pids[0])
        for _ in range(6):  # the job's shell runs under the product's wrapper shell, which runs under sshd
            if p <= 1 or _comm(p) == "sshd":
                break
            p = _parent(p)
        while p > 1 and _comm(p) == "sshd" and len(session) < 3:
            session.append(p)
            p = _parent(p)
        assert session, "no sshd above the job's shell"
        listener = session[-1] if len(session) > 1 else None
        for sp in session[:-1] if listener else session:
            os.kill(sp, 9)
        e = wait_finished(admin_token, e["id"], timeout=40)
        assert e["status"] == "failed", e
        t = e["targets"][0]
        assert t["status"] == "failed" and t["exit_code"] is None, t
        assert t["error"], t
        assert any(w in t["error"].lower() for w in ("disconnect", "connection", "closed", "lost")), t["error"]
        chunks = full_log(admin_token, e["id"])["chunks"]
        assert t["error"] in "".join(system_lines(chunks, t["server_id"])), chunks
        # The fleet's listener still serves the next job.
        assert wait_finished(admin_token, run(admin_token, made.job([made.server(fleet.ports[1])], "true\n")["id"])["id"])[
            "status"] == "succeeded"
    finally:
        kill_leftovers([p for p in pids if pid_alive(p)])
        path.unlink(missing_ok=True)
