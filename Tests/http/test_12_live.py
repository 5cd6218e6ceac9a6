# SPDX-License-Identifier: Apache-2.0
"""Live output: the log and events long-polls, through nginx and the pool.

The standing stack runs no executor, so a run stays queued and this module
plays the executor's part in PostgreSQL: it appends log chunks exactly as
Queue.appendLog does (seq taken from executions.last_seq under the row lock,
then NOTIFY tsubame_log "EXECUTION:SEQ" after the commit) and changes
statuses with the cancel endpoint. What is tested is the waiting side: a
parked request is answered as soon as something newer exists, when its
`wait` runs out, when the execution's status changes, when its worker stops;
it holds no accept thread meanwhile; a client that resumes from its last seq
gets every chunk once. test_11_runs.py covers the real executor end to end.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import requests

from executor import psql
from helpers import Client, assert_problem


@pytest.fixture(scope="module")
def runs(admin_token: Client) -> Iterator[Callable[[], int]]:
    """runs() -> id of a new queued execution (of a job on 127.0.0.1 that no executor will run here)."""
    if not os.environ.get("TSUBAME_TEST_DATABASE_URL"):
        pytest.skip("TSUBAME_TEST_DATABASE_URL is needed to append log chunks")
    server = admin_token.ok("POST", "/api/v1/servers", json={
        "name": f"live-{os.getpid()}", "host": "127.0.0.1", "port": 22, "username": "nobody",
        "auth_method": "password", "password": "unused-password"})
    job = admin_token.ok("POST", "/api/v1/jobs", json={"name": f"live-{os.getpid()}", "script": "true\n",
                                                       "server_ids": [server["id"]]})
    made: list[int] = []

    def make() -> int:
        e = admin_token.ok("POST", f"/api/v1/jobs/{job['id']}/run", status=202)
        made.append(e["id"])
        return e["id"]

    yield make
    for eid in made:
        admin_token.post(f"/api/v1/executions/{eid}/cancel")
    admin_token.delete(f"/api/v1/jobs/{job['id']}")
    admin_token.delete(f"/api/v1/servers/{server['id']}")


def append(eid: int, *texts: str, stream: str = "stdout") -> int:
    """Appends chunks as the executor does; returns the last seq."""
    return append_sql(eid, [f":'t{i}'" for i in range(len(texts))], stream=stream,
                      **{f"t{i}": t for i, t in enumerate(texts)})


def append_sql(eid: int, exprs: list[str], stream: str = "stdout", **variables: str) -> int:
    """Appends one chunk per SQL text expression (for data too large for psql's command line)."""
    sql = "BEGIN;\n"
    for e in exprs:
        sql += ("WITH u AS (UPDATE executions SET last_seq = last_seq + 1 WHERE id = :eid RETURNING last_seq)\n"
                "INSERT INTO log_chunks (execution_id, seq, server_id, stream, data) "
                f"SELECT :eid, last_seq, NULL, :'stream', {e} FROM u;\n")
    sql += "SELECT pg_notify('tsubame_log', id || ':' || last_seq) FROM executions WHERE id = :eid;\nCOMMIT;\n"
    sql += "SELECT last_seq FROM executions WHERE id = :eid;\n"
    rows = psql(sql, eid=eid, stream=stream, **variables)
    return int(rows[-1][0])


def log(client: Client, eid: int, timeout: float = 40, **params: Any) -> dict:
    r = client.get(f"/api/v1/executions/{eid}/log", params=params, timeout=timeout)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    assert r.headers.get("Cache-Control") == "no-store"
    return r.json()


class Waiter(threading.Thread):
    """One long-poll in the background: .result (JSON), .status, .elapsed once done."""

    def __init__(self, client: Client, path: str, repoll: bool = False, **params: Any) -> None:
        super().__init__(daemon=True)
        self.client, self.path, self.params, self.repoll = client, path, params, repoll
        self.result: dict | None = None
        self.status: int | None = None
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        start = time.monotonic()
        try:
            while True:
                r = self.client.get(self.path, params=self.params, timeout=60)
                self.status = r.status_code
                self.result = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else None
                # repoll: an empty answer before the wait ended (a worker that recycles itself answers its polls at
                # once) is followed by the next poll, as a real client does.
                if not (self.repoll and self.status == 200 and self.result is not None and not self.result.get("chunks")
                        and time.monotonic() - start < 20):
                    break
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        self.elapsed = time.monotonic() - start


def parked_count(base_url: str) -> int:
    """Long-polls parked in all workers right now (from /metrics, loopback only)."""
    text = requests.get(base_url + "/metrics", timeout=10).text
    return sum(int(v) for v in re.findall(r"^tsubame_longpoll_waiters(?:\{[^}]*\})? (\d+)$", text, re.M))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


# ------------------------------------------------------------------- the log


def test_a_waiting_log_poll_answers_when_output_arrives(runs: Callable[[], int], viewer: Client,
                                                       base_url: str) -> None:
    eid = runs()
    first = log(viewer, eid)
    assert first == {"chunks": [], "next_seq": 0, "status": "queued", "complete": False}
    w = Waiter(viewer, f"/api/v1/executions/{eid}/log", after=0, wait=20)
    w.start()
    wait_until(lambda: parked_count(base_url) >= 1, 5, "the poll parked")
    time.sleep(0.2)
    assert w.is_alive(), "a poll with nothing newer must wait"
    sent = time.monotonic()
    append(eid, "hello\n")
    w.join(10)
    assert not w.is_alive() and w.error is None, w.error
    assert time.monotonic() - sent < 2, "the waiter must be answered as soon as the chunk is there"
    assert w.status == 200 and w.result is not None
    assert [c["data"] for c in w.result["chunks"]] == ["hello\n"]
    assert w.result["next_seq"] == 1 and w.result["complete"] is False


def test_resume_from_the_last_seq_has_no_gap_and_no_repeat(runs: Callable[[], int], viewer: Client) -> None:
    eid = runs()
    got: list[dict] = []
    done = threading.Event()

    def follow() -> None:
        after = 0
        while not done.is_set() or after < 60:
            page = log(viewer, eid, after=after, wait=5, limit=7)
            got.extend(page["chunks"])
            after = page["next_seq"]
            if page["complete"]:
                break

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    for i in range(12):  # 60 chunks in batches of 5, the reader polling meanwhile
        append(eid, *[f"line {i * 5 + j}\n" for j in range(5)])
        time.sleep(0.01 * (i % 3))
    done.set()
    t.join(30)
    assert not t.is_alive()
    assert [c["seq"] for c in got] == list(range(1, 61))
    assert "".join(c["data"] for c in got) == "".join(f"line {n}\n" for n in range(60))


def test_wait_expiry_answers_with_nothing_new(runs: Callable[[], int], viewer: Client) -> None:
    eid = runs()
    seq = append(eid, "one\n")
    start = time.monotonic()
    page = log(viewer, eid, after=seq, wait=1)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 3, elapsed
    assert page == {"chunks": [], "next_seq": seq, "status": "queued", "complete": False}


def set_status(eid: int, status: str) -> None:
    """A status change without output, as the executor's claim (running) or a finish would make it."""
    psql("""
        BEGIN;
        UPDATE execution_targets SET status = 'cancelled', finished_at = now()
        WHERE execution_id = :eid AND :'status' <> 'running';
        UPDATE executions SET status = :'status', started_at = coalesce(started_at, now()),
               finished_at = CASE WHEN :'status' = 'running' THEN NULL ELSE now() END WHERE id = :eid;
        COMMIT;
        """, eid=eid, status=status)


def test_a_status_change_wakes_a_log_waiter(runs: Callable[[], int], viewer: Client) -> None:
    eid = runs()
    seq = append(eid, "some output\n")
    for status, complete in (("running", False), ("succeeded", True)):
        w = Waiter(viewer, f"/api/v1/executions/{eid}/log", after=seq, wait=20)
        w.start()
        time.sleep(0.5)
        assert w.is_alive()
        set_status(eid, status)
        w.join(10)
        assert not w.is_alive() and w.elapsed < 3, w.elapsed
        assert w.result == {"chunks": [], "next_seq": seq, "status": status, "complete": complete}


def test_a_finished_execution_never_waits(runs: Callable[[], int], viewer: Client, operator: Client) -> None:
    eid = runs()
    append(eid, "x\n")
    operator.ok("POST", f"/api/v1/executions/{eid}/cancel", status=202)  # adds a system line
    seq = log(viewer, eid, tail=1)["next_seq"]
    assert seq == 2
    start = time.monotonic()
    page = log(viewer, eid, after=seq, wait=10)
    assert time.monotonic() - start < 1
    assert page["complete"] is True and page["chunks"] == []
    page = log(viewer, eid, after=0, wait=10)
    assert [c["seq"] for c in page["chunks"]] == [1, 2] and page["complete"] is True


def test_tail_and_paging_back(runs: Callable[[], int], viewer: Client) -> None:
    eid = runs()
    append(eid, *[f"{n}\n" for n in range(1, 21)])
    tail = log(viewer, eid, tail=3)
    assert [c["data"] for c in tail["chunks"]] == ["18\n", "19\n", "20\n"] and tail["next_seq"] == 20
    back = log(viewer, eid, before=18, limit=5)
    assert [c["seq"] for c in back["chunks"]] == [13, 14, 15, 16, 17]
    back = log(viewer, eid, before=3, limit=5)
    assert [c["seq"] for c in back["chunks"]] == [1, 2]
    assert log(viewer, eid, before=1)["chunks"] == []
    # The tail of an empty log waits like any other poll; it answers with what arrives.
    other = runs()
    w = Waiter(viewer, f"/api/v1/executions/{other}/log", tail=5, wait=20)
    w.start()
    time.sleep(0.3)
    append(other, "first\n")
    w.join(10)
    assert w.result is not None and [c["data"] for c in w.result["chunks"]] == ["first\n"]


def test_a_page_stops_at_two_mebibytes(runs: Callable[[], int], viewer: Client) -> None:
    eid = runs()
    big = f"repeat('y', {700 * 1024 - 1}) || chr(10)"
    for _ in range(2):
        append_sql(eid, [big, big])
    page = log(viewer, eid, after=0, limit=100)
    # 700 KiB chunks: the third starts below 2 MiB, the fourth would start above it.
    assert [c["seq"] for c in page["chunks"]] == [1, 2, 3] and page["next_seq"] == 3
    assert [c["seq"] for c in log(viewer, eid, after=3)["chunks"]] == [4]
    # Paging back and the tail keep the chunks nearest to the end.
    assert [c["seq"] for c in log(viewer, eid, before=5, limit=100)["chunks"]] == [2, 3, 4]
    tail = log(viewer, eid, tail=100)
    assert [c["seq"] for c in tail["chunks"]] == [2, 3, 4] and tail["next_seq"] == 4


def test_log_txt_streams_every_chunk(runs: Callable[[], int], viewer: Client) -> None:
    eid = runs()
    line = "z" * 1023 + "\n"
    total = 0
    for _ in range(6):  # 6 MiB in 48 chunks of 128 KiB: several pages of the stream
        append_sql(eid, ["repeat(repeat('z', 1023) || chr(10), 128)"] * 8)
        total += 8 * 128 * 1024
    r = viewer.get(f"/api/v1/executions/{eid}/log.txt", timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert len(r.content) == total and r.text == line * (total // 1024)


@pytest.mark.parametrize("query", ["tail=3&after=1", "tail=3&before=9", "after=5&before=5", "tail=0",
                                   "tail=5001", "before=0", "wait=31", "wait=-1", "after=x"])
def test_bad_log_parameters(runs: Callable[[], int], viewer: Client, query: str) -> None:
    eid = runs()
    assert_problem(viewer.get(f"/api/v1/executions/{eid}/log?{query}"), 400)


# ------------------------------------------------------------------ capacity


def test_two_hundred_waiters_do_not_block_a_plain_get(runs: Callable[[], int], viewer: Client,
                                                     base_url: str) -> None:
    executions = [runs() for _ in range(4)]
    before = parked_count(base_url)
    waiters = [Waiter(viewer, f"/api/v1/executions/{executions[i % 4]}/log", repoll=True, after=0, wait=25) for i in range(200)]
    for w in waiters:
        w.start()
    wait_until(lambda: parked_count(base_url) >= before + 200, 15, "200 polls parked")
    # Far more waiters than the pool has threads, and still a plain request is answered at once.
    for path in ("/api/v1/jobs", "/api/health", "/api/v1/executions"):
        start = time.monotonic()
        r = viewer.get(path, timeout=10)
        assert r.status_code == 200 and time.monotonic() - start < 1, (path, r.status_code, time.monotonic() - start)
    for eid in executions:
        append(eid, f"to the watchers of {eid}\n")
    for w in waiters:
        w.join(15)
    assert all(not w.is_alive() and w.status == 200 for w in waiters), \
        [(w.status, w.error) for w in waiters if w.is_alive() or w.status != 200][:5]
    for i, w in enumerate(waiters):
        assert w.result is not None and w.result["chunks"][0]["data"] == f"to the watchers of {executions[i % 4]}\n"
    wait_until(lambda: parked_count(base_url) <= before, 5, "nothing left parked")


def test_a_client_that_goes_away_is_forgotten(runs: Callable[[], int], viewer: Client, base_url: str) -> None:
    eid = runs()
    u = urlsplit(base_url)
    auth = viewer.http.headers.get("Authorization") or ""
    cookie = viewer.http.headers.get("Cookie") or ""
    # A worker that recycles itself meanwhile (TSUBAME_MAX_REQUESTS is low in the test stack) answers its polls at
    # once, so they never all park: then the set is abandoned and a new one opened.
    for _ in range(3):
        before = parked_count(base_url)
        socks = []
        for _ in range(30):
            s = socket.create_connection((u.hostname, u.port or 80), timeout=5)
            s.sendall((f"GET /api/v1/executions/{eid}/log?after=0&wait=30 HTTP/1.1\r\nHost: {u.netloc}\r\n"
                       + (f"Authorization: {auth}\r\n" if auth else "") + (f"Cookie: {cookie}\r\n" if cookie else "")
                       + "\r\n").encode())
            socks.append(s)
        deadline = time.monotonic() + 15
        while parked_count(base_url) < before + 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        parked = parked_count(base_url) >= before + 30
        for s in socks:
            s.close()
        if parked:
            break
        wait_until(lambda: parked_count(base_url) <= before, 10, "the abandoned polls released")
    else:
        pytest.fail("30 polls were never parked at once")
    wait_until(lambda: parked_count(base_url) <= before, 5, "the abandoned polls released")


def test_a_stopping_worker_answers_its_waiters(runs: Callable[[], int], viewer: Client, settings: dict,
                                              base_url: str) -> None:
    pidfile = settings.get("pool_pidfile")
    if not pidfile or not Path(pidfile).exists():
        pytest.skip("TSUBAME_TEST_POOL_PIDFILE is not set")
    master = int(Path(pidfile).read_text().strip())
    eid = runs()
    seq = append(eid, "already there\n")
    # A worker that recycles itself meanwhile (TSUBAME_MAX_REQUESTS is low in the test stack) answers its polls at once:
    # the behaviour under test, but too early to count them. Then a new set of polls is started.
    for _ in range(3):
        waiters = [Waiter(viewer, f"/api/v1/executions/{eid}/log", after=seq, wait=25) for _ in range(20)]
        for w in waiters:
            w.start()
        deadline = time.monotonic() + 15
        while parked_count(base_url) < 20 and time.monotonic() < deadline and all(w.is_alive() for w in waiters):
            time.sleep(0.02)
        if all(w.is_alive() for w in waiters) and parked_count(base_url) >= 20:
            break
    else:
        pytest.fail("20 polls were never parked at once")
    start = time.monotonic()
    os.kill(master, signal.SIGHUP)  # rolling reload: every old worker stops gracefully
    for w in waiters:
        w.join(15)
    assert all(not w.is_alive() for w in waiters)
    assert time.monotonic() - start < 8, "a stopping worker answers its waiters at once, not when their wait ends"
    for w in waiters:
        assert w.status == 200 and w.result == {"chunks": [], "next_seq": seq, "status": "queued", "complete": False}, \
            (w.status, w.result, w.error)
    wait_until(lambda: requests.get(base_url + "/api/health", timeout=5).status_code == 200, 10, "healthy again")


# ------------------------------------------------------------------- events


def events(client: Client, **params: Any) -> dict:
    r = client.get("/api/v1/events", params=params, timeout=40)
    assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
    return r.json()


def test_events_feed_long_polls_created_and_finished(runs: Callable[[], int], viewer: Client,
                                                    operator: Client) -> None:
    now = events(viewer)
    assert now["events"] == [] and now["next"] >= 0
    w = Waiter(viewer, "/api/v1/events", after=now["next"], wait=20)
    w.start()
    time.sleep(0.3)
    assert w.is_alive()
    eid = runs()
    w.join(10)
    assert not w.is_alive() and w.elapsed < 3 and w.result is not None
    created = [e for e in w.result["events"] if e["execution"]["id"] == eid]
    assert [e["type"] for e in created] == ["execution.created"]
    assert created[0]["execution"]["status"] == "queued" and created[0]["id"] <= w.result["next"]
    operator.ok("POST", f"/api/v1/executions/{eid}/cancel", status=202)
    page = events(viewer, after=w.result["next"], wait=10)
    mine = [e for e in page["events"] if e["execution"]["id"] == eid]
    assert [e["type"] for e in mine] == ["execution.finished"]
    assert mine[0]["execution"]["status"] == "cancelled"
    # Resuming from `next` repeats nothing.
    ids = [e["id"] for e in w.result["events"] + page["events"]]
    assert ids == sorted(set(ids))
    assert all(e["id"] > page["next"] for e in events(viewer, after=page["next"])["events"])


def test_events_wait_expires_and_bad_parameters(viewer: Client) -> None:
    now = events(viewer)["next"]
    start = time.monotonic()
    page = events(viewer, after=10**15, wait=1)
    assert 0.9 <= time.monotonic() - start < 3
    assert page == {"events": [], "next": 10**15}
    assert events(viewer, after=now, limit=1)["next"] >= now
    for query in ("wait=31", "limit=0", "limit=501", "after=-1", "after=abc"):
        assert_problem(viewer.get(f"/api/v1/events?{query}"), 400)
    assert_problem(Client().get("/api/v1/events"), 401)


# ------------------------------------------------------------ waiting reasons


def test_waiting_reason_says_max_parallel_is_reached(admin_token: Client, viewer: Client) -> None:
    """A target left queued because its run already has max_parallel servers running says so."""
    servers = [admin_token.ok("POST", "/api/v1/servers", json={
        "name": f"wait-{os.getpid()}-{i}", "host": "127.0.0.1", "port": 22, "username": "nobody",
        "auth_method": "password", "password": "unused-password"})["id"] for i in range(2)]
    job = admin_token.ok("POST", "/api/v1/jobs", json={"name": f"wait-{os.getpid()}", "script": "true\n",
                                                       "server_ids": servers, "max_parallel": 1})
    eid = admin_token.ok("POST", f"/api/v1/jobs/{job['id']}/run", status=202)["id"]
    executor = f"test12-fake-{os.getpid()}"
    try:
        # An executor that is alive (as far as the database knows) has claimed the first target.
        psql("""
            INSERT INTO executors (id, host, pid) VALUES (:'ex', 'test', 1);
            UPDATE execution_targets SET status = 'running', executor_id = :'ex', attempt = 1,
                   lease_expires_at = now() + interval '1 minute', started_at = now()
            WHERE id = (SELECT min(id) FROM execution_targets WHERE execution_id = :eid);
            UPDATE executions SET status = 'running', started_at = now() WHERE id = :eid;
            """, ex=executor, eid=eid)
        e = viewer.ok("GET", f"/api/v1/executions/{eid}")
        assert e["status"] == "running" and "max_parallel (1)" in e["waiting_reason"], e
        queued = [t for t in e["targets"] if t["status"] == "queued"]
        assert len(queued) == 1 and queued[0]["waiting_reason"] == e["waiting_reason"]
        assert all("waiting_reason" not in t for t in e["targets"] if t["status"] == "running")
    finally:
        psql("""
            UPDATE execution_targets SET status = 'cancelled', finished_at = now(), executor_id = NULL, lease_expires_at = NULL
            WHERE execution_id = :eid;
            UPDATE executions SET status = 'cancelled', finished_at = now() WHERE id = :eid;
            DELETE FROM executors WHERE id = :'ex';
            """, ex=executor, eid=eid)
        admin_token.delete(f"/api/v1/jobs/{job['id']}")
        for sid in servers:
            admin_token.delete(f"/api/v1/servers/{sid}")
