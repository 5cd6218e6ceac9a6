# SPDX-License-Identifier: Apache-2.0
"""sshd killed mid-job: every sshd process serving the running jobs of one server (the per-connection processes
and what they run; the listener stays) is killed with SIGKILL while three runs of a job on four servers (one per
fleet sshd) print a line every 100 ms.

- the targets on that server fail with a clear error ("the connection to ... was lost while the job was running")
  that is also their last log line; no exit code is invented;
- the targets on the other servers succeed with all 40 lines;
- nothing printed before the kill is lost: every chunk the API showed before it is still there, and each target's
  stdout is `line 1` .. `line m` without a gap;
- every target ran once (attempt 1, one "connected" line); seq has no gap;
- the server's listener then serves a new run, which succeeds.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from chaos import (CONNECTED_LINE, EXIT_LINE, Executors, Made, assert_queue_settled, assert_seq_without_gaps,
                   drain_foreign_work, figure, full_log, no_executor_running, psql, run, system_lines, targets_of,
                   text_of, wait_all_finished, wait_for)
from executor import Fleet
from helpers import Client

RUNS = 3
LINES = 40


@pytest.fixture(scope="module")
def executors(admin_token: Client) -> Iterator[Executors]:
    no_executor_running()
    drain_foreign_work(admin_token)
    ex = Executors("sshdkill")
    yield ex
    problems = ex.stop_all()
    no_executor_running()
    assert not problems, problems


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(data[data.rindex(")") + 2:].split()[1]), []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


@pytest.mark.timeout(180)
def test_sshd_killed_mid_job(executors: Executors, made: Made, fleet: Fleet, admin_token: Client) -> None:
    victim_port = fleet.ports[3]
    listener = int((fleet.dir / f"sshd-{victim_port}.pid").read_text().split()[0])
    servers = [made.server(p) for p in fleet.ports[:4]]
    victim = servers[3]
    job = made.job(servers, f'i=0\nwhile [ $i -lt {LINES} ]; do i=$((i+1)); echo "line $i"; sleep 0.1; done\n')
    executors.start()
    ids = [run(admin_token, job["id"])["id"] for _ in range(RUNS)]

    def flowing() -> bool:
        for e in ids:
            chunks = full_log(admin_token, e)
            if not all(text_of(chunks, s["id"], "stdout").count("\n") >= 5 for s in servers):
                return False
        return True

    wait_for(flowing, 60, "every target prints")
    acknowledged = {e: full_log(admin_token, e) for e in ids}
    sessions = _descendants(listener)
    assert sessions, f"no sshd session under the listener {listener}"
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed = time.monotonic()
    wait_for(lambda: psql("""
        SELECT count(*) FROM execution_targets
        WHERE execution_id = ANY(string_to_array(:'ids', ',')::bigint[]) AND server_id = :sid
          AND status IN ('queued', 'running')
        """, ids=",".join(map(str, ids)), sid=victim["id"]) == [["0"]], 60, "the victim's targets end", interval=0.05)
    victim_failed_s = time.monotonic() - killed
    wait_all_finished(ids, timeout=60)

    assert_queue_settled(ids)
    assert_seq_without_gaps(ids)
    targets = targets_of(ids)
    assert all(t["attempt"] == 1 for t in targets), targets
    for e in ids:
        chunks = full_log(admin_token, e)
        seen = {c["seq"]: c for c in chunks}
        for c in acknowledged[e]:
            assert seen.get(c["seq"]) == c, f"execution {e}: acknowledged chunk {c} is now {seen.get(c['seq'])}"
        for s in servers:
            t = next(t for t in targets if t["execution_id"] == e and t["server_id"] == s["id"])
            lines = system_lines(chunks, s["id"])
            assert len([x for x in lines if CONNECTED_LINE.match(x)]) == 1, lines
            out = text_of(chunks, s["id"], "stdout").splitlines()
            assert out == [f"line {i}" for i in range(1, len(out) + 1)], f"execution {e}: a gap in {out}"
            acked = text_of(acknowledged[e], s["id"], "stdout").count("\n")
            assert len(out) >= acked >= 5, (len(out), acked)
            if s is victim:
                assert t["status"] == "failed" and t["exit_code"] is None, t
                assert t["error"].startswith(f"the connection to 127.0.0.1:{victim_port} was lost while the job was "
                                             f"running"), t
                assert lines[-1] == t["error"] + "\n", lines
                assert len(out) < LINES, "the job should not have finished"
            else:
                assert (t["status"], t["exit_code"], t["error"]) == ("succeeded", 0, ""), t
                assert len(out) == LINES and EXIT_LINE.match(lines[-1]), lines
        assert admin_token.ok("GET", f"/api/v1/executions/{e}")["status"] == "failed"
    # The listener still serves.
    after = run(admin_token, made.job([victim], "echo fine\n")["id"])["id"]
    wait_all_finished([after], timeout=30)
    assert admin_token.ok("GET", f"/api/v1/executions/{after}")["status"] == "succeeded"
    figure("sshd-kill", runs=RUNS, targets=len(targets), killed_processes=len(sessions),
           failed_targets=sum(1 for t in targets if t["status"] == "failed"),
           victim_targets_failed_after_seconds=round(victim_failed_s, 2),
           error=next(t["error"] for t in targets if t["status"] == "failed"))
