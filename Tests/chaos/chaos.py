# SPDX-License-Identifier: Apache-2.0
"""What the chaos scenarios share: servers and jobs on the loopback fleet, executors, waiting, and the checks
that nothing was lost (in PostgreSQL and through the API)."""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from executor import LOG_FILE, PIDFILE, ExecutorProcess, Fleet, drain_foreign_work, executors_on, log_tail, psql, psql_value
from helpers import Client, job_body, unique

__all__ = ["Fleet", "Made", "Executors", "drain_foreign_work", "psql", "psql_value", "FINISHED", "figure"]

FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}
LOOPBACK = "127.0.0.1"
CONNECTED_LINE = re.compile(r"^connected to (\S+):(\d+) as (\S+) in \d+ ms; running \(attempt (\d+)\)\n$")
EXIT_LINE = re.compile(r"^exit code (-?\d+) after \d+\.\d\d s(; retrying \(attempt (\d+) of (\d+)\))?\n$")
TRUST_LINE = re.compile(r"^host key (\S+) (SHA256:[A-Za-z0-9+/]+) trusted on first use\n$")
LOST_LINE = re.compile(r"^executor (\S+) was lost \(no heartbeat before its lease expired\); target marked failed\n$")
WORK_DIR = os.environ.get("TSUBAME_TEST_WORK_DIR", "")


def figure(scenario: str, **values: Any) -> None:
    """Records a measured figure: printed (pytest -s) and appended to WORK/chaos-figures.jsonl (scripts/chaos
    prints the file at the end)."""
    line = json.dumps({"scenario": scenario, **values})
    print(line)
    if WORK_DIR:
        with open(os.path.join(WORK_DIR, "chaos-figures.jsonl"), "a") as f:
            f.write(line + "\n")


# -------------------------------------------------------------- servers and jobs


class Made:
    """Servers and jobs of a module, on the loopback fleet (the database is thrown away afterwards)."""

    def __init__(self, client: Client, fleet: Fleet) -> None:
        self.client, self.fleet = client, fleet

    def server(self, port: int | None = None, host: str = LOOPBACK, **fields: Any) -> dict:
        body: dict[str, Any] = {"name": unique("chaos"), "host": host, "port": port or self.fleet.ports[0],
                                "username": self.fleet.user, "auth_method": "password",
                                "password": self.fleet.password}
        body.update(fields)
        return self.client.ok("POST", "/api/v1/servers", json=body)

    def job(self, servers: list[dict], script: str, **fields: Any) -> dict:
        return self.client.ok("POST", "/api/v1/jobs", json=job_body([s["id"] for s in servers], script=script, **fields))

    def cleanup(self) -> None:
        pass


def run(client: Client, job_id: int, env: dict[str, str] | None = None) -> dict:
    r = client.post(f"/api/v1/jobs/{job_id}/run", json={"env": env} if env else {})
    assert r.status_code == 202, f"run of job {job_id}: {r.status_code} {r.text[:500]}"
    return r.json()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\nexecutor log:\n{log_tail()}")
        time.sleep(interval)


def unfinished(ids: list[int]) -> list[list[str]]:
    """(id, status) of the executions among `ids` that are not finished, from PostgreSQL."""
    return psql("""
        SELECT id, status FROM executions
        WHERE id = ANY(string_to_array(:'ids', ',')::bigint[]) AND status IN ('queued', 'running') ORDER BY id
        """, ids=",".join(map(str, ids)) or "0")


def wait_all_finished(ids: list[int], timeout: float) -> None:
    left: list[list[str]] = []

    def done() -> bool:
        left[:] = unfinished(ids)
        return not left

    try:
        wait_for(done, timeout, f"{len(ids)} executions finished", interval=0.25)
    except AssertionError as e:
        raise AssertionError(f"{e}\nstill unfinished: {left[:20]}") from None


def full_log(client: Client, eid: int) -> list[dict]:
    """Every chunk through the API, paging with `after`."""
    chunks: list[dict] = []
    after = 0
    for _ in range(10_000):
        page = client.ok("GET", f"/api/v1/executions/{eid}/log", params={"after": after, "limit": 5000})
        chunks += page["chunks"]
        after = page["next_seq"]
        if not page["chunks"]:
            return chunks
    raise AssertionError("the log did not end")


def system_lines(chunks: list[dict], server_id: int) -> list[str]:
    return [c["data"] for c in chunks if c["stream"] == "system" and c["server_id"] == server_id]


def text_of(chunks: list[dict], server_id: int | None, stream: str) -> str:
    return "".join(c["data"] for c in chunks
                   if c["stream"] == stream and (server_id is None or c["server_id"] == server_id))


# -------------------------------------------------------------- nothing was lost


def assert_queue_settled(ids: list[int]) -> None:
    """Every execution and target among `ids` is final, in PostgreSQL; no lease is left."""
    rows = psql("""
        SELECT count(*) FILTER (WHERE e.status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')),
               count(*) FILTER (WHERE e.finished_at IS NULL)
        FROM executions e WHERE e.id = ANY(string_to_array(:'ids', ',')::bigint[])
        """, ids=",".join(map(str, ids)))
    assert rows == [["0", "0"]], f"executions not final: {rows}"
    rows = psql("""
        SELECT t.id, t.status, t.lease_expires_at FROM execution_targets t
        WHERE t.execution_id = ANY(string_to_array(:'ids', ',')::bigint[])
          AND (t.status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') OR t.finished_at IS NULL)
        """, ids=",".join(map(str, ids)))
    assert rows == [], f"targets not final: {rows[:10]}"


def assert_seq_without_gaps(ids: list[int]) -> None:
    """Per execution, in PostgreSQL: the chunks' seq are exactly 1..last_seq (strictly increasing, no gap, no
    duplicate), and output_bytes is what the stdout/stderr chunks hold."""
    bad = psql("""
        SELECT e.id, e.last_seq, count(c.seq), min(c.seq), max(c.seq), count(DISTINCT c.seq), e.output_bytes,
               coalesce(sum(octet_length(c.data)) FILTER (WHERE c.stream <> 'system'), 0)
        FROM executions e LEFT JOIN log_chunks c ON c.execution_id = e.id
        WHERE e.id = ANY(string_to_array(:'ids', ',')::bigint[])
        GROUP BY e.id
        HAVING count(c.seq) <> e.last_seq OR count(DISTINCT c.seq) <> e.last_seq
            OR (e.last_seq > 0 AND (min(c.seq) <> 1 OR max(c.seq) <> e.last_seq))
            OR (NOT e.output_truncated
                AND e.output_bytes <> coalesce(sum(octet_length(c.data)) FILTER (WHERE c.stream <> 'system'), 0))
        """, ids=",".join(map(str, ids)))
    assert not bad, f"executions whose seq has gaps or duplicates, or whose output_bytes is wrong " \
                    f"(id, last_seq, chunks, min, max, distinct, output_bytes, stored): {bad[:10]}"


def system_line_counts(ids: list[int]) -> dict[int, dict[str, int]]:
    """Per target id: how many 'connected', exit and lost system lines its server has in its execution's log."""
    rows = psql(r"""
        SELECT t.id,
               count(c.seq) FILTER (WHERE c.data ~ '^connected to \S+ as \S+ in \d+ ms; running \(attempt \d+\)\n$'),
               count(c.seq) FILTER (WHERE c.data ~ '^exit code -?\d+ after '),
               count(c.seq) FILTER (WHERE c.data ~ '^executor \S+ was lost ')
        FROM execution_targets t
        LEFT JOIN log_chunks c ON c.execution_id = t.execution_id AND c.server_id = t.server_id AND c.stream = 'system'
        WHERE t.execution_id = ANY(string_to_array(:'ids', ',')::bigint[])
        GROUP BY t.id
        """, ids=",".join(map(str, ids)))
    return {int(r[0]): {"connected": int(r[1]), "exit": int(r[2]), "lost": int(r[3])} for r in rows}


def targets_of(ids: list[int]) -> list[dict[str, Any]]:
    rows = psql("""
        SELECT t.id, t.execution_id, t.server_id, t.status, t.attempt, coalesce(t.exit_code::text, ''),
               coalesce(t.error, ''), coalesce(t.executor_id, '')
        FROM execution_targets t WHERE t.execution_id = ANY(string_to_array(:'ids', ',')::bigint[]) ORDER BY t.id
        """, ids=",".join(map(str, ids)))
    return [{"id": int(r[0]), "execution_id": int(r[1]), "server_id": int(r[2]) if r[2] else None, "status": r[3],
             "attempt": int(r[4]), "exit_code": int(r[5]) if r[5] else None, "error": r[6], "executor_id": r[7]}
            for r in rows]


# -------------------------------------------------------------- executors


class Executors:
    """The executors of one module; `stop_all` at its end (SIGTERM; killed ones are already gone)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.started: list[ExecutorProcess] = []
        self.n = 0

    def start(self, env: dict[str, str | None] | None = None, *, name: str | None = None,
              prefix: list[str] | None = None) -> ExecutorProcess:
        self.n += 1
        ex_id = name or f"{self.prefix}-{self.n}-{uuid.uuid4().hex[:4]}"
        pidfile = PIDFILE if not any(e.running and e.pidfile == PIDFILE for e in self.started) else \
            os.path.join(os.path.dirname(PIDFILE), f"executor-{ex_id}.pid")
        ex = ExecutorProcess(ex_id, pidfile, env, prefix=prefix)
        ex.start(timeout=30)
        self.started.append(ex)
        return ex

    def stop_all(self) -> list[str]:
        problems = []
        for ex in reversed(self.started):
            try:
                rc = ex.stop()
                if rc not in (0, None, -9):
                    problems.append(f"executor {ex.id} exited with {rc}")
            except AssertionError as e:
                problems.append(str(e))
        return problems


def executor_log_lines(pids: list[int | None], message: str) -> list[str]:
    """Lines of the executors' shared log (TSUBAME_TEST_EXECUTOR_LOG) from these processes with this message."""
    wanted = {p for p in pids if p}
    out = []
    for line in read_text(Path(LOG_FILE)).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("pid") in wanted and entry.get("msg") == message:
            out.append(line)
    return out


def no_executor_running() -> None:
    left = executors_on()
    assert not left, f"executors still running on the chaos database: {left}"


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
