# SPDX-License-Identifier: Apache-2.0
"""The log volume fills up.

The job output table (log_chunks, with its TOAST table and indexes) is moved to a tablespace on a small tmpfs
(what it holds now plus 4 MiB). A job prints a first line, then about 40 MB of random base64 (no compression
helps), then would sleep for a minute.

- the big run fails within 60 s, well before its script would end, with a clear error on its target ("output
  could not be stored: the database server is out of disk space (could not extend file ...: No space left on
  device) ..."); the executor stops the remote processes and keeps running; nothing stays `running`;
- what was stored before stays: the first line, seq 1..last_seq without a gap;
- while the volume is full the API keeps working: health, lists, the failed run's log, creating a server, queueing
  a run and cancelling it (its "cancelled before it started" line is left out, the state change is not); another
  run whose output cannot fit fails the same way, and the executor goes on;
- after space is freed (the tmpfs is made larger), the same executor stores and runs everything again: a run's
  2 MB of output is stored byte for byte;
- no corruption: pg_amcheck (heap and B-tree checks, every index entry found in the heap) reports nothing for
  log_chunks, its TOAST table and its indexes, and every execution's seq is 1..last_seq with output_bytes equal to
  what is stored.
The table goes back to the default tablespace afterwards.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from chaos import (Executors, Made, assert_queue_settled, assert_seq_without_gaps, drain_foreign_work, figure,
                   full_log, no_executor_running, psql, psql_value, run, text_of, wait_all_finished,
                   wait_for)
from executor import Fleet, pid_alive
from helpers import Client

PG_BIN = "/usr/lib/postgresql/15/bin"
SPACE = "chaos_small"
VOLUME_MIB: list[int] = []


@pytest.fixture(scope="module")
def volume() -> Iterator[Path]:
    """A small tmpfs owned by postgres, or a skip when mounting is not permitted."""
    work = os.environ.get("TSUBAME_TEST_WORK_DIR")
    if not work:
        pytest.skip("TSUBAME_TEST_WORK_DIR is not set")
    path = Path(work) / "small-volume"
    path.mkdir()
    # What the log table holds now, plus 4 MiB.
    size = int(psql_value("SELECT pg_total_relation_size('log_chunks')"))
    mib = (size >> 20) + 5
    VOLUME_MIB.append(mib)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        path.rmdir()
        pytest.skip(f"mount -t tmpfs is not permitted here: {r.stderr.strip()}")
    subprocess.run(["chown", "postgres:postgres", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        r = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], timeout=60)


def _indexes() -> list[str]:
    return [r[0] for r in psql("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'log_chunks'::regclass")]


def _move_log_table(space: str) -> None:
    statements = [f"ALTER TABLE log_chunks SET TABLESPACE {space};"]
    statements += [f"ALTER INDEX {i} SET TABLESPACE {space};" for i in _indexes()]
    psql("\n".join(statements))


@pytest.fixture(scope="module")
def small_log_volume(volume: Path, admin_token: Client) -> Iterator[Path]:
    no_executor_running()
    drain_foreign_work(admin_token)
    psql(f"CREATE TABLESPACE {SPACE} LOCATION '{volume}'")
    try:
        _move_log_table(SPACE)
        yield volume
    finally:
        no_executor_running()
        _move_log_table("pg_default")
        psql(f"DROP TABLESPACE {SPACE}")


@pytest.fixture(scope="module")
def executors(small_log_volume: Path) -> Iterator[Executors]:
    ex = Executors("diskfull")
    yield ex
    problems = ex.stop_all()
    no_executor_running()
    assert not problems, problems


def _amcheck() -> str:
    url = os.environ["TSUBAME_TEST_DATABASE_URL"]
    port, db = url.rsplit(":", 1)[1].split("/")
    r = subprocess.run([f"{PG_BIN}/pg_amcheck", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", db,
                        "--install-missing", "--heapallindexed", "--parent-check", "-t", "log_chunks"],
                       capture_output=True, text=True, timeout=300)
    return f"exit {r.returncode}: {r.stdout}{r.stderr}" if r.returncode != 0 or r.stdout.strip() else ""


@pytest.mark.timeout(300)
def test_log_volume_full(executors: Executors, small_log_volume: Path, made: Made, fleet: Fleet,
                         admin_token: Client) -> None:
    assert psql_value("SELECT coalesce(t.spcname, 'pg_default') FROM pg_class c LEFT JOIN pg_tablespace t "
                      "ON t.oid = c.reltablespace WHERE c.oid = 'log_chunks'::regclass") == SPACE
    pids_dir = fleet.shared / f"chaos-full-{uuid.uuid4().hex}"
    pids_dir.mkdir()
    pids_dir.chmod(0o1777)
    big_server, small_server = made.server(fleet.ports[0]), made.server(fleet.ports[1])
    big = made.job([big_server], (f'echo $$ > {pids_dir}/$$.pid\necho "before the disk filled"\nsleep 0.5\n'
                                  'head -c 30000000 /dev/urandom | base64\necho "after the output"\nsleep 60\n'))
    ex = executors.start()
    t0 = time.monotonic()
    e = run(admin_token, big["id"])["id"]
    wait_all_finished([e], timeout=60)
    failed_s = time.monotonic() - t0
    body = admin_token.ok("GET", f"/api/v1/executions/{e}")
    t = body["targets"][0]
    assert body["status"] == "failed" and t["status"] == "failed", body
    assert t["error"].startswith("output could not be stored: the database server is out of disk space ("), t
    assert "No space left on device" in t["error"] and t["error"].endswith(
        "the target was stopped and its output from then on is lost"), t
    assert failed_s < 55, f"the run took {failed_s:.1f} s: its script was not stopped"
    remote = [int(p.stem) for p in pids_dir.glob("*.pid")]
    wait_for(lambda: not any(pid_alive(p) for p in remote), 15, f"the remote processes {remote} stopped")
    assert ex.running, "the executor died"
    chunks = full_log(admin_token, e)
    assert text_of(chunks, big_server["id"], "stdout").startswith("before the disk filled\n"), chunks[:3]
    assert "after the output" not in text_of(chunks, big_server["id"], "stdout")
    assert_seq_without_gaps([e])
    assert_queue_settled([e])
    used = int(psql_value("SELECT pg_total_relation_size('log_chunks')"))

    # The rest of the API works while the volume is full.
    assert admin_token.ok("GET", "/api/health")["status"] == "ok"
    assert admin_token.ok("GET", "/api/v1/jobs", params={"limit": 5})["items"]
    assert admin_token.ok("GET", f"/api/v1/executions/{e}/log", params={"after": 0, "limit": 10})["chunks"]
    r = admin_token.get(f"/api/v1/executions/{e}/log.txt")
    assert r.status_code == 200 and r.text.startswith(f"[{big_server['name']}] # "), r.text[:200]
    extra = made.server(fleet.ports[2])
    # A queued run (no executor) is cancelled without its log line; the change itself is made.
    ex.stop()
    queued = run(admin_token, made.job([extra], "echo never\n")["id"])["id"]
    assert admin_token.post(f"/api/v1/executions/{queued}/cancel").status_code == 202
    assert admin_token.ok("GET", f"/api/v1/executions/{queued}")["status"] == "cancelled"
    # Another run with output that cannot fit fails the same way; the executor goes on.
    ex = executors.start()
    small = run(admin_token, made.job([small_server], 'head -c 4000000 /dev/urandom | base64\n')["id"])["id"]
    wait_all_finished([small], timeout=60)
    small_t = admin_token.ok("GET", f"/api/v1/executions/{small}")["targets"][0]
    assert small_t["status"] == "failed" and "out of disk space" in small_t["error"], small_t

    # Space is freed: everything works again, with the same executor.
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_log_volume)], check=True, timeout=30)
    freed = time.monotonic()
    two_mb = made.job([small_server], "yes xxxxxxxxx | head -c 2000000\necho done >&2\n")
    ok = run(admin_token, two_mb["id"])["id"]
    wait_all_finished([ok], timeout=60)
    recovered_s = time.monotonic() - freed
    body = admin_token.ok("GET", f"/api/v1/executions/{ok}")
    assert body["status"] == "succeeded", body
    expected = "xxxxxxxxx\n" * 200_000
    stored = psql_value("SELECT md5(string_agg(data, '' ORDER BY seq)) FROM log_chunks "
                        "WHERE execution_id = :id AND stream = 'stdout'", id=ok)
    assert stored == hashlib.md5(expected.encode()).hexdigest(), "the 2 MB output differs after the space came back"
    assert text_of(full_log(admin_token, ok), None, "stderr") == "done\n"
    assert ex.running

    # No corruption.
    ids = [int(r[0]) for r in psql("SELECT id FROM executions")]
    assert_seq_without_gaps(ids)
    assert_queue_settled([e, queued, small, ok])
    problems = _amcheck()
    assert not problems, problems
    ex.stop()
    figure("disk-full", volume_mib=VOLUME_MIB[0], log_table_bytes_when_full=used, big_run_failed_after_seconds=round(failed_s, 2),
           recovered_run_after_seconds=round(recovered_s, 2), amcheck="clean",
           error=t["error"])
