# SPDX-License-Identifier: Apache-2.0
"""Starting and stopping tsubame-executor for the HTTP tests that run jobs, and SQL through psql.

The standing test stack runs no executor (scripts/test): a test module that
runs jobs starts one itself, against the loopback SSH fleet only, and stops it
with SIGTERM (so its coverage is written) before the module ends.

Environment (set by scripts/test):
  TSUBAME_TEST_BIN_DIR            directory with tsubame-executor
  TSUBAME_TEST_EXECUTOR_PIDFILE   pid file of "the" executor (scripts/test stops it on exit)
  TSUBAME_TEST_EXECUTOR_LOG       its log (every executor started here appends to it)
  TSUBAME_TEST_PROFILE_PATTERN    LLVM_PROFILE_FILE for the instrumented binary
  TSUBAME_TEST_DATABASE_URL       the stack's database (psql connects to it as postgres)
The executor's own settings (TSUBAME_DATABASE_URL, TSUBAME_MASTER_KEY_FILE,
TSUBAME_LEASE_SECONDS, ...) come from the environment scripts/test exported.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

BIN_DIR = os.environ.get("TSUBAME_TEST_BIN_DIR", "")
PIDFILE = os.environ.get("TSUBAME_TEST_EXECUTOR_PIDFILE", "")
LOG_FILE = os.environ.get("TSUBAME_TEST_EXECUTOR_LOG", "")
PROFILE_PATTERN = os.environ.get("TSUBAME_TEST_PROFILE_PATTERN", "")
DATABASE_URL = os.environ.get("TSUBAME_TEST_DATABASE_URL", "")
RUN_USER = "tsubame"


def psql(sql: str, **variables: str | int) -> list[list[str]]:
    """Runs SQL (read from stdin, so `:'name'` interpolates the variables) as postgres; the rows, tab-split."""
    assert DATABASE_URL, "TSUBAME_TEST_DATABASE_URL is not set"
    cmd = ["psql", "-X", "-q", "-t", "-A", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", DATABASE_URL]
    for name, value in variables.items():
        cmd += ["-v", f"{name}={value}"]
    r = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"psql failed ({r.returncode}): {r.stderr.strip()}\n{sql}"
    return [line.split("\t") for line in r.stdout.splitlines() if line]


def psql_value(sql: str, **variables: str | int) -> str:
    rows = psql(sql, **variables)
    assert len(rows) == 1 and len(rows[0]) == 1, f"want one value, got {rows}: {sql}"
    return rows[0][0]


def log_tail(lines: int = 40) -> str:
    try:
        text = Path(LOG_FILE).read_text(errors="replace")
    except OSError as e:
        return f"(cannot read the executor log {LOG_FILE}: {e})"
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")


def pidfile_alive(path: str) -> int | None:
    """The pid in `path` when it names a live tsubame-executor."""
    try:
        pid = int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"tsubame-executor" in cmdline and pid_alive(pid) else None


def executors_on(database_url: str = DATABASE_URL) -> list[int]:
    """Pids of every tsubame-executor on this machine whose TSUBAME_DATABASE_URL is `database_url` (needs root
    to read other users' environments; the executors run as tsubame)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            if not argv0.endswith(b"tsubame-executor"):
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TSUBAME_DATABASE_URL={database_url}".encode() in environ and pid_alive(int(entry)):
            found.append(int(entry))
    return found


class ExecutorProcess:
    """One tsubame-executor. With root it runs as `tsubame` (setpriv execs it: the pid is the executor's own)
    and gets SIGTERM should this test process die first, so none outlives the suite."""

    def __init__(self, executor_id: str, pidfile: str, env: dict[str, str | None] | None = None,
                 prefix: list[str] | None = None) -> None:
        self.id = executor_id
        self.pidfile = pidfile
        self.env = dict(env or {})
        # A command that execs the rest (e.g. `ip netns exec NS`): the pid stays the executor's own.
        self.prefix = list(prefix or [])
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, executor_id: str | None = None, timeout: float = 20) -> None:
        """Starts it and waits for its first heartbeat (its row in `executors`)."""
        assert not self.running, f"executor {self.id} is already running (pid {self.pid})"
        if executor_id:
            self.id = executor_id
        binary = os.path.join(BIN_DIR, "tsubame-executor")
        assert os.access(binary, os.X_OK), f"{binary} is not executable (TSUBAME_TEST_BIN_DIR)"
        env = dict(os.environ)
        for name, value in self.env.items():  # None removes a variable
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        env["TSUBAME_EXECUTOR_ID"] = self.id
        env["TSUBAME_EXECUTOR_PIDFILE"] = self.pidfile
        if PROFILE_PATTERN:
            env["LLVM_PROFILE_FILE"] = PROFILE_PATTERN
        cmd = [binary]
        if os.geteuid() == 0:
            cmd = ["setpriv", f"--reuid={RUN_USER}", f"--regid={RUN_USER}", "--init-groups", "--pdeathsig", "TERM",
                   "--"] + cmd
        cmd = self.prefix + cmd
        since = psql_value("SELECT now()")
        with open(LOG_FILE or os.devnull, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"executor {self.id} exited during start-up ({self.proc.returncode}):\n"
                                     f"{log_tail()}")
            if psql_value("SELECT count(*) FROM executors WHERE id = :'id' AND last_seen >= :'since'::timestamptz",
                          id=self.id, since=since) == "1":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"executor {self.id} sent no heartbeat within {timeout} s:\n{log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 25) -> int | None:
        """SIGTERM, then wait (it cancels what it runs and writes its coverage); SIGKILL only as a last resort."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"executor {self.id} (pid {self.proc.pid}) ignored SIGTERM for {timeout} s:\n"
                                     f"{log_tail()}")
        self._forget_pidfile()
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.running, f"executor {self.id} is not running"
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._forget_pidfile()

    def _forget_pidfile(self) -> None:
        try:
            if Path(self.pidfile).read_text().split()[0] == str(self.proc.pid):
                os.unlink(self.pidfile)
        except (OSError, IndexError):
            pass


# ------------------------------------------------------------ shared by the modules that run jobs


class Fleet:
    def __init__(self) -> None:
        env = os.environ
        self.host = env.get("TSUBAME_TEST_SSH_HOST", "")
        self.ports = [int(p) for p in env.get("TSUBAME_TEST_SSH_PORTS", "").split(",") if p]
        self.user = env.get("TSUBAME_TEST_SSH_USER", "")
        self.noshell_user = env.get("TSUBAME_TEST_SSH_NOSHELL_USER", "")
        self.password = env.get("TSUBAME_TEST_SSH_PASSWORD", "")
        self.dir = Path(env.get("TSUBAME_TEST_SSH_DIR", "/nonexistent"))
        self.shared = self.dir / "shared"
        self.key_files = {k: env.get(f"TSUBAME_TEST_SSH_KEY_{k.upper()}", "")
                          for k in ("ed25519", "ecdsa", "ed25519_passphrase", "rsa")}
        self.passphrase = env.get("TSUBAME_TEST_SSH_KEY_PASSPHRASE", "")
        version = re.match(r"(\d+)\.(\d+)", env.get("TSUBAME_TEST_SSH_OPENSSH_VERSION", ""))
        self.openssh = (int(version[1]), int(version[2])) if version else (0, 0)

    def key(self, kind: str) -> str:
        return Path(self.key_files[kind]).read_text()

    def host_keys(self) -> dict[str, str]:
        """{algorithm: SHA256 fingerprint} of the fleet's host keys, as ssh-keygen -lf prints them."""
        keys = {}
        for pub in sorted(self.dir.glob("ssh_host_*_key.pub")):
            algorithm, blob = pub.read_text().split()[:2]
            digest = hashlib.sha256(base64.b64decode(blob)).digest()
            keys[algorithm] = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
        return keys

    def host_fingerprints(self) -> set[str]:
        return set(self.host_keys().values())

    def gate(self) -> Path:
        """A file path in the shared directory a script can wait for (the test creates it)."""
        return self.shared / f"gate-{uuid.uuid4().hex}"

    def auth_lines(self, port: int) -> int:
        """Password/public key verdicts (accepted or failed) in the sshd log of `port`."""
        text = (self.dir / f"sshd-{port}.log").read_text(errors="replace")
        return len(re.findall(r"^.*(Accepted|Failed) (password|publickey) for ", text, re.M))


def drain_foreign_work(client: Any) -> None:
    """Cancels every unfinished execution (earlier tests leave queued ones) and asserts the queue is empty.

    `client` is an admin helpers.Client."""
    for status in ("queued", "running"):
        for _ in range(100):
            page = client.ok("GET", "/api/v1/executions", params={"status": status, "limit": 200})
            if not page["items"]:
                break
            for e in page["items"]:
                r = client.post(f"/api/v1/executions/{e['id']}/cancel")
                assert r.status_code in (202, 409), f"cancel of {e['id']}: {r.status_code} {r.text[:300]}"
            if status == "running":
                break  # their targets stay running until an executor stops them: checked below
        else:
            raise AssertionError(f"{status} executions keep appearing")
    # Notifications of those runs (and of schemathesis' jobs, with invented receivers) are never sent: the executor
    # about to start would deliver them, and nothing here may connect anywhere but 127.0.0.1.
    psql("""
        UPDATE notification_deliveries SET status = 'failed', next_attempt_at = now(),
               last_error = 'dropped by the test suite before its executor started'
        WHERE status = 'pending'
        """)
    queued, running = psql("""
        SELECT count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'running')
        FROM execution_targets
        """)[0]
    assert (queued, running) == ("0", "0"), \
        f"before the executor starts the queue must be empty: {queued} queued and {running} running targets"
