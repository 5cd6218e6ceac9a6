# SPDX-License-Identifier: Apache-2.0
"""kill -9 of the executor mid-run, 20 times in a row, with jobs in flight.

Each round queues a long run (4 servers, one per fleet sshd, printing `tick N` every 50 ms) and a short one (3
lines, then exit 0), starts a new executor, waits until the long run's 4 targets are running on it and their
output shows through the API, takes a copy of every execution's log through the API (what was acknowledged), and
kills the executor with SIGKILL. The next round's executor reaps the previous one's targets after the lease
(3 s). At the end one more executor finishes what is left.

Nothing was lost:
- every execution and target is final, in PostgreSQL and through the API; no lease is left;
- no target ran twice: attempt 1, at most one "connected" line, and each script writes a line into a file on the
  fleet when it starts: one per run and server, never two;
- a killed run's targets are failed with the executor's name ("stopped heartbeating"), with exactly one "was
  lost" line, which is the last line of that server; the short runs either succeeded with all their output or
  were failed the same way;
- every chunk the API showed before a kill is there afterwards, unchanged (seq, server, stream, text); stdout of
  every target is `tick 1` .. `tick m` without a gap, m at least what was acknowledged;
- per execution, seq is exactly 1..last_seq (strictly increasing, no gap) and output_bytes matches the chunks.
"""
from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any, Iterator

import pytest

from chaos import (FINISHED, Executors, Made, assert_queue_settled, assert_seq_without_gaps, drain_foreign_work, figure,
                   full_log, no_executor_running, run, system_line_counts, system_lines, targets_of, text_of,
                   wait_all_finished, wait_for, LOST_LINE, CONNECTED_LINE, EXIT_LINE, psql)
from executor import Fleet
from helpers import Client

ROUNDS = 20
TICKS = 600  # 30 s: longer than the whole loop needs for one run


@pytest.fixture(scope="module")
def executors(admin_token: Client) -> Iterator[Executors]:
    no_executor_running()
    drain_foreign_work(admin_token)
    ex = Executors("kill9")
    yield ex
    problems = ex.stop_all()
    no_executor_running()
    assert not problems, problems


def _port_of_run(line: str) -> tuple[str, int]:
    kind_round, port = line.rsplit(" ", 1)
    return kind_round, int(port)


@pytest.mark.timeout(600)
def test_executor_kill9_twenty_times(executors: Executors, made: Made, fleet: Fleet, admin_token: Client) -> None:
    assert len(fleet.ports) >= 4
    servers = [made.server(p, max_concurrent=20) for p in fleet.ports[:4]]
    port_of = {s["id"]: s["port"] for s in servers}
    record = fleet.shared / f"chaos-runs-{uuid.uuid4().hex}.log"
    port = "${SSH_CONNECTION##* }"
    long_job = made.job(servers, (f'echo "L$ROUND {port}" >> {record}\n'
                                  f'i=0\nwhile [ $i -lt {TICKS} ]; do i=$((i+1)); echo "tick $i"; sleep 0.05; done\n'))
    short_job = made.job(servers, f'echo "S$ROUND {port}" >> {record}\necho "short 1"\necho "short 2"\necho "short 3"\n')

    long_runs: list[int] = []
    short_runs: list[int] = []
    killed: dict[int, str] = {}  # long run id -> the executor killed under it
    acknowledged: dict[int, list[dict]] = {}  # execution id -> chunks seen through the API before the last kill
    started = time.monotonic()
    for k in range(1, ROUNDS + 1):
        long_runs.append(run(admin_token, long_job["id"], env={"ROUND": str(k)})["id"])
        short_runs.append(run(admin_token, short_job["id"], env={"ROUND": str(k)})["id"])
        ex = executors.start()
        eid = long_runs[-1]

        def flowing() -> bool:
            rows = psql("SELECT count(*) FROM execution_targets WHERE execution_id = :id AND status = 'running' "
                        "AND executor_id = :'ex'", id=eid, ex=ex.id)
            if rows != [["4"]]:
                return False
            chunks = full_log(admin_token, eid)
            return all(text_of(chunks, s["id"], "stdout").count("\n") >= 3 for s in servers)

        wait_for(flowing, 30, f"round {k}: the long run's 4 targets print on executor {ex.id}")
        for e in long_runs + short_runs:
            acknowledged[e] = full_log(admin_token, e)
        ex.kill9()
        killed[eid] = ex.id
    loop_s = time.monotonic() - started

    last = executors.start()
    wait_all_finished(long_runs + short_runs, timeout=60)
    finished_s = time.monotonic() - started
    last.stop()
    ids = long_runs + short_runs

    # Final, in PostgreSQL and through the API.
    assert_queue_settled(ids)
    for e in ids:
        body = admin_token.ok("GET", f"/api/v1/executions/{e}")
        assert body["status"] in FINISHED and all(t["status"] in FINISHED for t in body["targets"]), body
    assert_seq_without_gaps(ids)

    # No target ran twice: in the product's records...
    targets = targets_of(ids)
    assert len(targets) == 8 * ROUNDS
    assert all(t["attempt"] == 1 for t in targets), [t for t in targets if t["attempt"] != 1]
    counts = system_line_counts(ids)
    round_of = {e: ("L", k) for k, e in enumerate(long_runs, 1)} | {e: ("S", k) for k, e in enumerate(short_runs, 1)}
    for t in targets:
        c = counts[t["id"]]
        # A short target whose executor died as it connected may have no "connected" line; never two.
        assert c["connected"] <= 1 and c["exit"] + c["lost"] == 1, (t, c)
        assert c["connected"] == 1 or (t["execution_id"] in short_runs and c["lost"] == 1), (t, c)
    # ... and on the servers: each run's script started at most once per server, every target that says it
    # connected did start there, and so did every long one.
    starts = Counter(_port_of_run(line) for line in record.read_text().splitlines())
    assert all(n == 1 for n in starts.values()), [k for k, n in starts.items() if n > 1]
    for t in targets:
        kind, k = round_of[t["execution_id"]]
        if counts[t["id"]]["connected"] or kind == "L":
            assert (f"{kind}{k}", port_of[t["server_id"]]) in starts, (t, sorted(starts))

    by_execution: dict[int, list[dict[str, Any]]] = {}
    for t in targets:
        by_execution.setdefault(t["execution_id"], []).append(t)
    reaped_short = 0
    for e in ids:
        chunks = full_log(admin_token, e)
        seen = {c["seq"]: c for c in chunks}
        # Everything acknowledged before a kill is still there, unchanged.
        for c in acknowledged.get(e, []):
            assert seen.get(c["seq"]) == c, f"execution {e}: acknowledged chunk {c} is now {seen.get(c['seq'])}"
        for t in by_execution[e]:
            sid = t["server_id"]
            lines = system_lines(chunks, sid)
            if e in killed:
                assert t["status"] == "failed" and t["exit_code"] is None, t
                assert f"({killed[e]}) stopped heartbeating" in t["error"], t
                assert LOST_LINE.match(lines[-1]) and LOST_LINE.match(lines[-1])[1] == killed[e], lines
                out = text_of(chunks, sid, "stdout").splitlines()
                assert out == [f"tick {i}" for i in range(1, len(out) + 1)], f"execution {e}: ticks with a gap"
                acked = text_of(acknowledged[e], sid, "stdout").count("\n")
                assert acked >= 3 and len(out) >= acked, (len(out), acked)
            else:
                assert t["status"] in ("succeeded", "failed"), t
                if t["status"] == "succeeded":
                    assert text_of(chunks, sid, "stdout") == "short 1\nshort 2\nshort 3\n", chunks
                    assert EXIT_LINE.match(lines[-1]) and EXIT_LINE.match(lines[-1])[1] == "0", lines
                else:
                    reaped_short += 1
                    assert "stopped heartbeating" in t["error"] and LOST_LINE.match(lines[-1]), (t, lines)
            connected = [CONNECTED_LINE.match(x) for x in lines if CONNECTED_LINE.match(x)]
            assert all(m[2] == str(port_of[sid]) and m[4] == "1" for m in connected), lines
    figure("executor-kill9", rounds=ROUNDS, kills=ROUNDS, executions=len(ids), targets=len(targets),
           reaped_targets=sum(1 for t in targets if "stopped heartbeating" in t["error"]),
           short_targets_reaped=reaped_short, loop_seconds=round(loop_s, 1),
           all_final_after_seconds=round(finished_s, 1))
