# SPDX-License-Identifier: Apache-2.0
"""The pool survives a worker killed with SIGKILL and reloads on SIGHUP without failing a request.

Needs TSUBAME_TEST_POOL_PIDFILE (the master's pid file) and permission to
signal the pool (the suite runs as root under scripts/test).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from helpers import Client


def _master_pid(settings: dict) -> int:
    pidfile = settings.get("pool_pidfile")
    if not pidfile:
        pytest.skip("TSUBAME_TEST_POOL_PIDFILE is not set")
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError) as e:
        pytest.skip(f"cannot read the pool pid file {pidfile}: {e}")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pytest.fail(f"the pool master {pid} from {pidfile} is not running")
    except PermissionError:
        pytest.skip(f"no permission to signal the pool master {pid}")
    return pid


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def workers(master: int) -> set[int]:
    """Live (non-zombie) children of the master."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st and st[1] == master and st[0] not in ("Z", "X"):
            out.add(int(entry))
    return out


def _wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _healthy(url: str) -> bool:
    try:
        r = requests.get(url + "/api/health", timeout=2)
        return r.status_code == 200 and r.json().get("status") == "ok"
    except (requests.RequestException, ValueError):
        return False


class Load(threading.Thread):
    """Sends sequential GETs (alternating health and an authenticated list) and counts failures."""

    def __init__(self, base_url: str, token: str, count: int | None = None) -> None:
        super().__init__(daemon=True)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.base_url, self.count = base_url, count
        self.stop = threading.Event()
        self.sent = 0
        self.failures: list[str] = []

    def run(self) -> None:
        paths = ["/api/health", "/api/v1/servers?limit=5", "/api/v1/auth/me"]
        deadline = time.monotonic() + 120  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.count is not None and self.sent >= self.count:
                break
            path = paths[self.sent % len(paths)]
            self.sent += 1
            try:
                r = self.http.get(self.base_url + path, timeout=10)
                if r.status_code != 200:
                    self.failures.append(f"{path}: {r.status_code} {r.text[:120]!r}")
            except requests.RequestException as e:
                self.failures.append(f"{path}: {type(e).__name__}: {e}")


def test_sigkill_of_a_worker(settings: dict, admin_token: Client, base_url: str) -> None:
    master = _master_pid(settings)
    before = workers(master)
    assert before, f"the pool master {master} has no worker processes"
    load = Load(base_url, admin_token.token or "", count=300)
    load.start()
    assert _wait_for(lambda: load.sent >= 60 or not load.is_alive(), 30), "load did not start"
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    replaced = _wait_for(lambda: (lambda now: victim not in now and len(now) >= len(before))(workers(master)), 2.0)
    healthy = _wait_for(lambda: _healthy(base_url), max(0.1, 2.0 - (time.monotonic() - killed_at)))
    load.join(timeout=120)
    assert not load.is_alive(), "the load thread did not finish"
    now = workers(master)
    assert replaced, f"no replacement worker within 2 s: before {sorted(before)}, now {sorted(now)}"
    assert now - before, "a new worker pid should have appeared"
    assert healthy, "health was not OK within 2 s of the kill"
    assert load.sent == 300
    assert len(load.failures) <= 5, f"{len(load.failures)} of 300 requests failed: {load.failures[:10]}"


def test_sighup_rolling_reload(settings: dict, admin_token: Client, base_url: str) -> None:
    master = _master_pid(settings)
    assert _wait_for(lambda: _healthy(base_url), 5), "stack not healthy before the reload"
    before = workers(master)
    assert before
    load = Load(base_url, admin_token.token or "")
    load.start()
    assert _wait_for(lambda: load.sent >= 20 or not load.is_alive(), 30), "load did not start"
    os.kill(master, signal.SIGHUP)

    def all_replaced() -> bool:
        now = workers(master)
        return not (now & before) and len(now) >= len(before)

    replaced = _wait_for(all_replaced, 10.0, interval=0.1)
    sent_at_replace = load.sent
    _wait_for(lambda: load.sent >= sent_at_replace + 20, 5)  # keep going a little on the new workers
    load.stop.set()
    load.join(timeout=30)
    now = workers(master)
    assert replaced, f"workers not all replaced within 10 s: before {sorted(before)}, now {sorted(now)}"
    assert os.path.exists(f"/proc/{master}"), "the master must survive SIGHUP"
    assert load.sent >= 40
    assert not load.failures, f"{len(load.failures)} of {load.sent} requests failed during the reload: " \
                              f"{load.failures[:10]}"
    assert _healthy(base_url)
