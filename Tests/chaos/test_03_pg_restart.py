# SPDX-License-Identifier: Apache-2.0
"""`pg_ctl restart -m fast` under load, with queued work and a running executor.

40 runs of a job on 4 servers are queued (160 targets, each printing two lines half a second apart; a server runs 4
at a time, so the queue drains over several seconds) while a client keeps calling the API. Once a third of the
targets are done, PostgreSQL is restarted with `pg_ctl restart -m fast` (every session is terminated).

Nothing was lost, and nothing was restarted but the database:
- the pool master, its workers and the executor are the same processes before and after (they reconnect by
  themselves; the pool counts no restart);
- the API answers again within 15 s of the restart and then fails no request;
- the executor heartbeats again within 15 s;
- every queued run succeeded, each target once (attempt 1, one "connected" and one exit line, the script's record
  on the server once), with exactly the two lines it printed; seq has no gap;
- the executor never thought it had lost a lease (the restart is shorter than one).
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from typing import Iterator

import pytest
import requests

from chaos import (CONNECTED_LINE, EXIT_LINE, Executors, Made, assert_queue_settled, assert_seq_without_gaps,
                   drain_foreign_work, executor_log_lines, figure, full_log, no_executor_running, psql_value, run,
                   system_lines, targets_of, text_of, wait_all_finished, wait_for)
from executor import Fleet
from helpers import Client
from test_08_resilience import workers  # Tests/http

RUNS = 40
PG_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture(scope="module")
def executors(admin_token: Client) -> Iterator[Executors]:
    no_executor_running()
    drain_foreign_work(admin_token)
    ex = Executors("pgrestart")
    yield ex
    problems = ex.stop_all()
    no_executor_running()
    assert not problems, problems


class Load(threading.Thread):
    """Sequential authenticated GETs (health, a list, the caller) until stopped; each failure with the time its
    request was sent."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url
        self.stop = threading.Event()
        self.sent = 0
        self.failures: list[tuple[float, str]] = []

    def run(self) -> None:
        paths = ["/api/health", "/api/v1/servers?limit=5", "/api/v1/auth/me"]
        deadline = time.monotonic() + 240  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            path = paths[self.sent % len(paths)]
            self.sent += 1
            sent = time.monotonic()
            try:
                r = self.http.get(self.base_url + path, timeout=10)
                if r.status_code != 200:
                    self.failures.append((sent, f"{path}: {r.status_code} {r.text[:120]!r}"))
            except requests.RequestException as e:
                self.failures.append((sent, f"{path}: {type(e).__name__}: {e}"))

    def failed_since(self, t: float) -> list[str]:
        return [m for at, m in self.failures if at >= t]


def _pool_restarts() -> int:
    from test_01_worker_kill import _pool_status
    return _pool_status()["restarts"]


def _healthy(base_url: str) -> bool:
    try:
        return requests.get(base_url + "/api/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.timeout(300)
def test_postgres_fast_restart_under_load(executors: Executors, made: Made, fleet: Fleet, admin_token: Client,
                                          base_url: str) -> None:
    pg_dir = os.environ["TSUBAME_TEST_PG_DIR"]
    master = int(open(os.environ["TSUBAME_TEST_POOL_PIDFILE"]).read().split()[0])
    servers = [made.server(p) for p in fleet.ports[:4]]
    port_of = {s["id"]: s["port"] for s in servers}
    record = fleet.shared / f"chaos-pg-{uuid.uuid4().hex}.log"
    job = made.job(servers, f'echo "$RUN ${{SSH_CONNECTION##* }}" >> {record}\necho "run $RUN a"\nsleep 0.5\n'
                            f'echo "run $RUN b"\n')
    ex = executors.start()
    runs = {run(admin_token, job["id"], env={"RUN": str(k)})["id"]: k for k in range(1, RUNS + 1)}
    ids = list(runs)
    workers_before, restarts_before = workers(master), _pool_restarts()
    load = Load(base_url, admin_token.token or "")
    load.start()
    try:
        wait_for(lambda: int(psql_value("""
            SELECT count(*) FROM execution_targets
            WHERE execution_id = ANY(string_to_array(:'ids', ',')::bigint[]) AND status = 'succeeded'
            """, ids=",".join(map(str, ids)))) >= RUNS * 4 // 3, 120, "a third of the targets done")
        done_before = psql_value("""
            SELECT count(*) FROM execution_targets
            WHERE execution_id = ANY(string_to_array(:'ids', ',')::bigint[]) AND status = 'succeeded'
            """, ids=",".join(map(str, ids)))
        t0 = time.monotonic()
        r = subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", pg_dir, "-m", "fast", "-w",
                            "-t", "60", "-l", os.path.join(pg_dir, "postgres.log"), "restart"],
                           cwd="/", capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        restarted = time.monotonic()
        wait_for(lambda: _healthy(base_url), 15, "the API answers again", interval=0.05)
        api_back = time.monotonic()
        sent_at_recovery = load.sent
        since = psql_value("SELECT now()")
        wait_for(lambda: psql_value("SELECT count(*) FROM executors WHERE id = :'id' AND last_seen > :'since'",
                                    id=ex.id, since=since) == "1", 15, "the executor heartbeats again", interval=0.05)
        executor_back = time.monotonic()
        wait_all_finished(ids, timeout=120)
        time.sleep(1.0)  # the load goes on a little after the queue drained
    finally:
        load.stop.set()
        load.join(timeout=30)

    # The same processes, reconnected.
    assert ex.running, "the executor died"
    assert ex.pid in set(int(p) for p in os.listdir("/proc") if p.isdigit())
    assert workers(master) == workers_before, (workers_before, workers(master))
    assert _pool_restarts() == restarts_before
    # No request sent once the API was back failed.
    assert load.failed_since(api_back) == [], load.failed_since(api_back)[:5]
    assert load.sent > sent_at_recovery + 10

    # It never thought it had lost a lease: the restart took less than one.
    assert not executor_log_lines([ex.pid], "lease lost; stopping the target")

    # Every queued run ran, once.
    assert_queue_settled(ids)
    assert_seq_without_gaps(ids)
    targets = targets_of(ids)
    assert len(targets) == 4 * RUNS
    bad = [t for t in targets if (t["status"], t["attempt"], t["exit_code"]) != ("succeeded", 1, 0)]
    assert not bad, bad[:10]
    starts = Counter(tuple(line.split()) for line in record.read_text().splitlines())
    assert sorted(starts.values()) == [1] * (4 * RUNS), [k for k, n in starts.items() if n != 1]
    for e, k in runs.items():
        chunks = full_log(admin_token, e)
        for s in servers:
            assert text_of(chunks, s["id"], "stdout") == f"run {k} a\nrun {k} b\n", (e, s["id"], chunks)
            lines = system_lines(chunks, s["id"])
            connected = [CONNECTED_LINE.match(x) for x in lines if CONNECTED_LINE.match(x)]
            exits = [x for x in lines if EXIT_LINE.match(x)]
            assert len(connected) == 1 and connected[0][2] == str(port_of[s["id"]]) and len(exits) == 1, lines
        assert admin_token.ok("GET", f"/api/v1/executions/{e}")["status"] == "succeeded"
    figure("postgres-restart", executions=RUNS, targets=len(targets), targets_done_before_restart=int(done_before),
           pg_ctl_restart_seconds=round(restarted - t0, 2), api_back_after_seconds=round(api_back - t0, 2),
           executor_heartbeat_after_seconds=round(executor_back - t0, 2), api_requests=load.sent,
           api_failures_during_outage=len(load.failures) - len(load.failed_since(api_back)),
           api_failures_after=len(load.failed_since(api_back)),
           same_pids=True)
