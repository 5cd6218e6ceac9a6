# SPDX-License-Identifier: Apache-2.0
"""The soak: 10,000 executions over 100 servers (TSUBAME_CHAOS_SOAK_EXECUTIONS), then the database is compared
with what the jobs printed.

100 servers on the loopback fleet (25 per sshd), one job per server, each run N/100 times through the API with
`{"env": {"RUN": k}}` by 8 client threads, drained by two executors (capacity 250 each, sessions kept open for
the next run: TSUBAME_SSH_IDLE_SECONDS=30). Each script prints three stdout lines and one stderr line naming its
server and run, and appends one line to a record file on the server's side.

Checked, for every one of the executions:
- it succeeded, its one target once: attempt 1, exit code 0, one "connected" and one exit line, one record line
  on the server's side (no run lost, none twice);
- its stored stdout and stderr (PostgreSQL, in seq order; compared by MD5) are exactly what the script printed,
  computed from the server and run the client asked for;
- seq is 1..last_seq, output_bytes is what is stored;
and through the API for a sample of 200 (the log pages, log.txt).
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from chaos import (Executors, Made, assert_queue_settled, assert_seq_without_gaps, drain_foreign_work,
                   executor_log_lines, figure, full_log, no_executor_running, psql, run, text_of, unfinished, wait_for)
from executor import Fleet
from helpers import Client

EXECUTIONS = int(os.environ.get("TSUBAME_CHAOS_SOAK_EXECUTIONS", "10000"))
SERVERS = 100


@pytest.fixture(scope="module")
def executors(admin_token: Client) -> Iterator[Executors]:
    no_executor_running()
    drain_foreign_work(admin_token)
    ex = Executors("soak")
    yield ex
    problems = ex.stop_all()
    no_executor_running()
    assert not problems, problems


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _stdout(server: str, k: int) -> str:
    return f"{server} run {k} line 1\n{server} run {k} line 2\n{server} run {k} line 3\n"


@pytest.mark.timeout(900)
def test_soak(executors: Executors, made: Made, fleet: Fleet, admin_token: Client) -> None:
    assert EXECUTIONS % SERVERS == 0, EXECUTIONS
    per_job = EXECUTIONS // SERVERS
    record = fleet.shared / f"chaos-soak-{uuid.uuid4().hex}.log"
    servers = [made.server(fleet.ports[i % len(fleet.ports)], name=f"soak-{i:03d}-{uuid.uuid4().hex[:6]}")
               for i in range(SERVERS)]
    script = ('printf "%s run %s line 1\\n%s run %s line 2\\n" "$SERVER" "$RUN" "$SERVER" "$RUN"\n'
              'echo "$SERVER run $RUN line 3"\necho "$SERVER run $RUN err" >&2\n'
              f'echo "$SERVER $RUN" >> {record}\n')
    jobs = [made.job([s], script, env={"SERVER": s["name"]}) for s in servers]
    env = {"TSUBAME_EXECUTOR_CAPACITY": "250", "TSUBAME_SSH_IDLE_SECONDS": "30"}
    soak_executors = [executors.start(env), executors.start(env)]

    expected: dict[int, tuple[str, int]] = {}  # execution id -> (server name, run)
    t0 = time.monotonic()

    def post(job_index: int) -> list[tuple[int, str, int]]:
        client = Client(token=admin_token.token)
        job, server = jobs[job_index], servers[job_index]["name"]
        return [(run(client, job["id"], env={"RUN": str(k)})["id"], server, k) for k in range(1, per_job + 1)]

    # Interleaved: thread i posts job i's runs; 8 at a time.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for batch in pool.map(post, range(SERVERS)):
            for eid, server, k in batch:
                expected[eid] = (server, k)
    posted_s = time.monotonic() - t0
    ids = sorted(expected)
    assert len(ids) == EXECUTIONS

    left: list = []

    def drained() -> bool:
        left[:] = psql("SELECT count(*) FROM executions WHERE id >= :lo AND id <= :hi AND status IN ('queued', 'running')",
                       lo=ids[0], hi=ids[-1])
        return left == [["0"]]

    wait_for(drained, 840 - (time.monotonic() - t0), f"{EXECUTIONS} executions finished", interval=1.0)
    drained_s = time.monotonic() - t0
    assert not unfinished(ids)

    # Every execution and target final; one target each, succeeded once.
    assert_queue_settled(ids)
    assert_seq_without_gaps(ids)
    rows = psql(r"""
        SELECT e.id, e.status, count(t.id), min(t.attempt), max(t.attempt), bool_and(t.status = 'succeeded'),
               bool_and(t.exit_code = 0),
               (SELECT count(*) FROM log_chunks c WHERE c.execution_id = e.id AND c.stream = 'system'
                  AND c.data ~ '^connected to \S+ as \S+ in \d+ ms; running \(attempt 1\)\n$'),
               (SELECT count(*) FROM log_chunks c WHERE c.execution_id = e.id AND c.stream = 'system'
                  AND c.data ~ '^exit code 0 after \d+\.\d\d s\n$'),
               (SELECT md5(coalesce(string_agg(data, '' ORDER BY seq), '')) FROM log_chunks c
                  WHERE c.execution_id = e.id AND c.stream = 'stdout'),
               (SELECT md5(coalesce(string_agg(data, '' ORDER BY seq), '')) FROM log_chunks c
                  WHERE c.execution_id = e.id AND c.stream = 'stderr')
        FROM executions e JOIN execution_targets t ON t.execution_id = e.id
        WHERE e.id >= :lo AND e.id <= :hi GROUP BY e.id ORDER BY e.id
        """, lo=ids[0], hi=ids[-1])
    by_id = {int(r[0]): r for r in rows}
    assert sorted(by_id) == ids, "executions missing in the database"
    wrong = []
    for eid, (server, k) in expected.items():
        r = by_id[eid]
        if (r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) != ("succeeded", "1", "1", "1", "t", "t", "1", "1") \
                or r[9] != _md5(_stdout(server, k)) or r[10] != _md5(f"{server} run {k} err\n"):
            wrong.append((eid, server, k, r))
    assert not wrong, f"{len(wrong)} executions differ from what their script printed, e.g. {wrong[:3]}"
    # The servers' side: each (server, run) started exactly once.
    starts = Counter(record.read_text().splitlines())
    want = Counter(f"{server} {k}" for server, k in expected.values())
    assert starts == want, f"runs on the servers differ: missing {list((want - starts).items())[:5]}, " \
                           f"extra {list((starts - want).items())[:5]}"
    # Through the API, a sample.
    for eid in ids[:: max(1, EXECUTIONS // 200)]:
        server, k = expected[eid]
        chunks = full_log(admin_token, eid)
        assert text_of(chunks, None, "stdout") == _stdout(server, k), (eid, chunks)
        assert text_of(chunks, None, "stderr") == f"{server} run {k} err\n", (eid, chunks)
        assert admin_token.ok("GET", f"/api/v1/executions/{eid}")["status"] == "succeeded"
    # Neither executor ever thought it had lost a lease (a heartbeat racing a target's result used to say so).
    spurious = executor_log_lines([ex.pid for ex in soak_executors], "lease lost; stopping the target")
    assert not spurious, f"{len(spurious)} 'lease lost' warnings of healthy executors: {spurious[:3]}"
    per_executor = dict(psql("""
        SELECT executor_id, count(*) FROM execution_targets WHERE execution_id >= :lo AND execution_id <= :hi
        GROUP BY executor_id ORDER BY executor_id""", lo=ids[0], hi=ids[-1]))
    figure("soak", executions=EXECUTIONS, servers=SERVERS, sshd=len(fleet.ports), post_seconds=round(posted_s, 1),
           drained_seconds=round(drained_s, 1), executions_per_second=round(EXECUTIONS / drained_s, 1),
           targets_per_executor=per_executor, checked_seconds=round(time.monotonic() - t0 - drained_s, 1))
