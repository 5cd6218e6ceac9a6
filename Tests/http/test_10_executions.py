# SPDX-License-Identifier: Apache-2.0
"""Executions: run, history (filters, keyset paging), detail, cancel, re-run, the log, roles.

No executor runs in the test stack, so every execution stays `queued` (with a
waiting_reason saying that no executor is alive) until it is cancelled, which
then happens at once: the queued targets become `cancelled` with a system log
line each, and the execution finishes as `cancelled`.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest

from helpers import Client, assert_problem, error_fields, job_body, parse_time, server_body, unique

EXECUTION_FIELDS = {
    "id", "job_id", "job_name", "status", "trigger", "triggered_by", "parent_id", "created_at", "started_at",
    "finished_at", "duration_ms", "exit_code", "output_truncated", "targets",
}
TARGET_FIELDS = {"server_id", "server_name", "status", "exit_code", "started_at", "finished_at", "error", "attempt"}
STATUSES = {"queued", "running", "succeeded", "failed", "cancelled", "timed_out"}
TRIGGERS = {"manual", "schedule", "api", "dependency", "retry"}
CANCELLED_LINE = "cancelled before it started\n"
MAX_ID = "9223372036854775807"


# -------------------------------------------------------------- helpers


def assert_time_or_null(value: Any, where: str) -> None:
    if value is not None:
        assert isinstance(value, str) and value.endswith("Z"), f"{where}: {value!r}"
        parse_time(value)


def assert_execution_shape(e: dict) -> None:
    assert EXECUTION_FIELDS <= set(e), f"missing: {EXECUTION_FIELDS - set(e)}"
    assert set(e) <= EXECUTION_FIELDS | {"waiting_reason"}, f"unexpected: {set(e) - EXECUTION_FIELDS}"
    assert isinstance(e["id"], int) and e["id"] >= 1
    assert e["job_id"] is None or isinstance(e["job_id"], int)
    assert isinstance(e["job_name"], str) and e["job_name"]
    assert e["status"] in STATUSES and e["trigger"] in TRIGGERS
    if e["triggered_by"] is not None:
        assert set(e["triggered_by"]) == {"id", "username"}, e["triggered_by"]
    assert e["parent_id"] is None or isinstance(e["parent_id"], int)
    parse_time(e["created_at"])
    assert e["created_at"].endswith("Z")
    for k in ("started_at", "finished_at"):
        assert_time_or_null(e[k], k)
    assert e["duration_ms"] is None or (isinstance(e["duration_ms"], int) and e["duration_ms"] >= 0)
    assert e["exit_code"] is None or isinstance(e["exit_code"], int)
    assert isinstance(e["output_truncated"], bool)
    assert isinstance(e["targets"], list)
    for t in e["targets"]:
        assert TARGET_FIELDS <= set(t), f"target missing: {TARGET_FIELDS - set(t)}"
        assert set(t) <= TARGET_FIELDS | {"waiting_reason"}, f"target unexpected: {set(t) - TARGET_FIELDS}"
        assert t["status"] in STATUSES
        assert isinstance(t["attempt"], int) and t["attempt"] >= 0
        for k in ("started_at", "finished_at"):
            assert_time_or_null(t[k], f"target {k}")
        # waiting_reason only while queued, on the execution (or a running one with queued targets) and on its targets
        assert ("waiting_reason" in t) == (t["status"] == "queued"), t
    waiting = e["status"] == "queued" or (e["status"] == "running" and any(t["status"] == "queued" for t in e["targets"]))
    assert ("waiting_reason" in e) == waiting, e
    if e["status"] == "queued":
        assert isinstance(e["waiting_reason"], str) and e["waiting_reason"]
    if e["status"] in ("queued", "running"):
        assert e["finished_at"] is None
    else:
        assert e["finished_at"] is not None


def assert_queued_without_executor(e: dict) -> None:
    assert_execution_shape(e)
    assert e["status"] == "queued", e
    assert e["started_at"] is None and e["finished_at"] is None and e["duration_ms"] is None
    assert e["exit_code"] is None and e["output_truncated"] is False
    for reason in [e["waiting_reason"]] + [t["waiting_reason"] for t in e["targets"]]:
        assert "no executor" in reason.lower() and "alive" in reason.lower(), reason
    for t in e["targets"]:
        assert t["status"] == "queued" and t["attempt"] == 0, t
        assert t["exit_code"] is None and t["error"] is None and t["started_at"] is None and t["finished_at"] is None


def run(client: Client, job_id: int, **kw: Any) -> dict:
    r = client.post(f"/api/v1/jobs/{job_id}/run", **kw)
    assert r.status_code == 202, f"run of job {job_id}: {r.status_code} {r.text[:500]}"
    e = r.json()
    assert r.headers.get("Location") == f"/api/v1/executions/{e['id']}", r.headers
    assert r.headers.get("Content-Type", "").startswith("application/json")
    return e


def cancel(client: Client, execution_id: int) -> dict:
    r = client.post(f"/api/v1/executions/{execution_id}/cancel")
    assert r.status_code == 202, f"cancel of {execution_id}: {r.status_code} {r.text[:500]}"
    return r.json()


def ids(items: list[dict]) -> list[int]:
    return [x["id"] for x in items]


def list_ids(client: Client, **params: Any) -> list[int]:
    return ids(client.list_all("/api/v1/executions", params))


def read_log(client: Client, execution_id: int, **params: Any) -> dict:
    body = client.ok("GET", f"/api/v1/executions/{execution_id}/log", params=params)
    assert set(body) == {"chunks", "next_seq", "status", "complete"}, body
    for c in body["chunks"]:
        assert set(c) == {"seq", "server_id", "stream", "data", "at"}, c
        assert c["stream"] in ("stdout", "stderr", "system")
        parse_time(c["at"])
    return body


# -------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def servers(admin_token: Client) -> Iterator[list[dict]]:
    """Three servers; deleted after the module (their jobs are deleted first)."""
    made = [admin_token.ok("POST", "/api/v1/servers", json=server_body(name=unique(f"ex{i}"))) for i in range(3)]
    yield made
    for s in made:
        admin_token.delete(f"/api/v1/servers/{s['id']}")


@pytest.fixture()
def make_job(admin_token: Client, servers: list[dict]) -> Iterator[Callable[..., dict]]:
    made: list[int] = []

    def make(**overrides: Any) -> dict:
        overrides.setdefault("server_ids", [servers[0]["id"]])
        j = admin_token.ok("POST", "/api/v1/jobs", json=job_body(**overrides))
        made.append(j["id"])
        return j

    yield make
    for jid in reversed(made):
        admin_token.delete(f"/api/v1/jobs/{jid}")


@pytest.fixture()
def job(make_job: Callable[..., dict], servers: list[dict]) -> dict:
    """A job on the last, then the first server (not in id order)."""
    return make_job(server_ids=[servers[2]["id"], servers[0]["id"]])


# -------------------------------------------------------------- run


def test_run_queues_with_targets_in_job_server_order(operator: Client, admin_token: Client, job: dict,
                                                     servers: list[dict]) -> None:
    before = datetime.now(timezone.utc)
    e = run(operator, job["id"])
    assert_queued_without_executor(e)
    assert e["job_id"] == job["id"] and e["job_name"] == job["name"]
    assert e["trigger"] == "manual"
    assert e["triggered_by"] == {"id": operator.user["id"], "username": operator.user["username"]}
    assert e["parent_id"] is None
    assert abs(parse_time(e["created_at"]) - before) < timedelta(minutes=1)
    names = {s["id"]: s["name"] for s in servers}
    assert [t["server_id"] for t in e["targets"]] == job["server_ids"] == [servers[2]["id"], servers[0]["id"]]
    assert [t["server_name"] for t in e["targets"]] == [names[i] for i in job["server_ids"]]
    # the detail and the list show the same object
    assert admin_token.ok("GET", f"/api/v1/executions/{e['id']}") == e
    assert admin_token.ok("GET", "/api/v1/executions", params={"job_id": job["id"]})["items"] == [e]
    assert admin_token.ok("GET", f"/api/v1/jobs/{job['id']}")["last_execution"] == \
        {"id": e["id"], "status": "queued", "finished_at": None}


def test_run_with_a_token_is_an_api_trigger(admin: Client, admin_token: Client, job: dict) -> None:
    e = run(admin_token, job["id"], json={})
    assert_queued_without_executor(e)
    assert e["trigger"] == "api"
    assert e["triggered_by"] == {"id": admin.user["id"], "username": admin.user["username"]}


@pytest.mark.parametrize("kw", [
    {},                                                                   # no body, no content type
    {"data": b"", "headers": {"Content-Type": "application/json"}},       # empty body
    {"json": {}},
    {"json": {"env": {}}},
    {"json": {"env": {"GREETING": "override", "_NEW": "", "X1": "ünï ✓"}}},
    {"data": b'{"env": {"A": "1"}}', "headers": {"Content-Type": "application/json; charset=utf-8"}},
], ids=["no-body", "empty-json-body", "empty-object", "empty-env", "env", "charset"])
def test_run_bodies_that_are_accepted(admin_token: Client, make_job: Callable[..., dict], kw: dict) -> None:
    j = make_job(env={"GREETING": "hello"})
    e = run(admin_token, j["id"], **kw)
    assert_queued_without_executor(e)


@pytest.mark.parametrize("body, field", [
    ({"env": None}, "env"),
    ({"env": ["A=1"]}, "env"),
    ({"env": {"1A": "x"}}, "env"),
    ({"env": {"A-B": "x"}}, "env"),
    ({"env": {"A": 1}}, "env"),
    ({"env": {"A": None}}, "env"),
    ({"env": {"A": "a\u0000b"}}, "env"),
    ({"envv": {}}, "envv"),
    ({"env": {}, "servers": [1]}, "servers"),
])
def test_run_with_an_invalid_body_is_422_and_queues_nothing(admin_token: Client, job: dict, body: dict,
                                                           field: str) -> None:
    p = assert_problem(admin_token.post(f"/api/v1/jobs/{job['id']}/run", json=body), 422)
    assert any(f == field or f.startswith(field + ".") for f in error_fields(p)), p
    assert list_ids(admin_token, job_id=job["id"]) == []
    assert admin_token.ok("GET", f"/api/v1/jobs/{job['id']}")["last_execution"] is None


def test_run_of_a_missing_job_is_404(admin_token: Client) -> None:
    assert_problem(admin_token.post(f"/api/v1/jobs/{MAX_ID}/run"), 404)
    assert_problem(admin_token.post(f"/api/v1/jobs/{MAX_ID}/run", json={"env": {"A": "1"}}), 404)


# -------------------------------------------------------------- list


@pytest.fixture()
def history(admin_token: Client) -> Iterator[dict[str, Any]]:
    """Seven runs on two servers of their own: four of job A (server 0), three of job B (servers 1, 0),
    interleaved."""
    s0, s1 = (admin_token.ok("POST", "/api/v1/servers", json=server_body())["id"] for _ in range(2))
    a = admin_token.ok("POST", "/api/v1/jobs", json=job_body([s0]))
    b = admin_token.ok("POST", "/api/v1/jobs", json=job_body([s1, s0]))
    runs = []
    for j in [a, a, b, a, b, b, a]:
        runs.append(run(admin_token, j["id"]))
        time.sleep(0.01)  # distinct created_at milliseconds, for the since/until cases
    yield {"a": a, "b": b, "runs": runs, "s0": s0, "s1": s1}
    for path in (f"/api/v1/jobs/{a['id']}", f"/api/v1/jobs/{b['id']}", f"/api/v1/servers/{s0}",
                 f"/api/v1/servers/{s1}"):
        admin_token.delete(path)


def test_list_is_newest_first_and_filters_by_job(admin_token: Client, history: dict) -> None:
    runs = history["runs"]
    assert ids(runs) == sorted(ids(runs)), "ids grow with time"
    a_ids = [e["id"] for e in runs if e["job_id"] == history["a"]["id"]]
    b_ids = [e["id"] for e in runs if e["job_id"] == history["b"]["id"]]
    assert list_ids(admin_token, job_id=history["a"]["id"]) == a_ids[::-1]
    assert list_ids(admin_token, job_id=history["b"]["id"]) == b_ids[::-1]
    # unfiltered: our seven appear, in the same relative order, newest first
    everything = list_ids(admin_token)
    assert everything == sorted(everything, reverse=True)
    assert [i for i in everything if i in set(ids(runs))] == ids(runs)[::-1]
    assert list_ids(admin_token, job_id=MAX_ID) == []


def test_list_filters_by_server(admin_token: Client, history: dict) -> None:
    runs = history["runs"]
    assert list_ids(admin_token, server_id=history["s1"]) == \
        [e["id"] for e in reversed(runs) if e["job_id"] == history["b"]["id"]]
    assert list_ids(admin_token, server_id=history["s0"]) == ids(runs)[::-1]
    assert list_ids(admin_token, server_id=history["s1"], job_id=history["a"]["id"]) == []
    assert list_ids(admin_token, server_id=MAX_ID) == []


def test_list_filters_by_status(admin_token: Client, history: dict) -> None:
    a = history["a"]["id"]
    a_runs = [e["id"] for e in history["runs"] if e["job_id"] == a]
    for i in a_runs[:2]:
        cancel(admin_token, i)
    assert list_ids(admin_token, job_id=a, status="cancelled") == a_runs[:2][::-1]
    assert list_ids(admin_token, job_id=a, status="queued") == a_runs[2:][::-1]
    for status in ("running", "succeeded", "failed", "timed_out"):
        assert list_ids(admin_token, job_id=a, status=status) == [], status
    page = admin_token.ok("GET", "/api/v1/executions", params={"status": "cancelled", "limit": 200})
    assert page["items"] and all(e["status"] == "cancelled" for e in page["items"])


def test_list_filters_by_time(admin_token: Client, history: dict) -> None:
    runs, b = history["runs"], history["b"]["id"]
    s0 = history["s0"]

    def window(**params: str) -> list[int]:
        return list_ids(admin_token, server_id=s0, **params)

    k = 3
    t = runs[k]["created_at"]  # shown with milliseconds, truncated: the stored time is >= t
    assert window(since=t) == ids(runs[k:])[::-1]
    assert window(until=t) == ids(runs[:k])[::-1]
    assert window(since=runs[1]["created_at"], until=runs[5]["created_at"]) == ids(runs[1:5])[::-1]
    # the same instant written with an offset
    local = parse_time(t).astimezone(timezone(timedelta(hours=9))).isoformat(timespec="milliseconds")
    assert local.endswith("+09:00")
    assert window(since=local) == ids(runs[k:])[::-1]
    # without fractional seconds
    whole = parse_time(runs[0]["created_at"]).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert window(since=whole) == ids(runs)[::-1]
    assert window(since="2999-01-01T00:00:00Z") == []
    assert window(until="2000-01-01T00:00:00Z") == []
    assert window(since=t, until=t) == []
    assert [i for i in list_ids(admin_token, job_id=b, since=t)] == \
        [e["id"] for e in reversed(runs[k:]) if e["job_id"] == b]


def test_keyset_paging_newest_first(admin_token: Client, history: dict) -> None:
    want = ids(history["runs"])[::-1]
    for limit in (1, 2, 3, 7):
        seen: list[int] = []
        params: dict[str, Any] = {"server_id": history["s0"], "limit": limit}
        pages = 0
        while True:
            page = admin_token.ok("GET", "/api/v1/executions", params=params)
            pages += 1
            assert len(page["items"]) <= limit
            for e in page["items"]:
                assert_execution_shape(e)
            seen += ids(page["items"])
            if page["next_cursor"] is None:
                break
            assert len(page["items"]) == limit
            assert isinstance(page["next_cursor"], str) and page["next_cursor"]
            params["cursor"] = page["next_cursor"]
            assert pages <= 10
        assert seen == want, f"limit {limit}"
        assert pages == -(-len(want) // limit), (limit, pages)  # no empty last page
    # a cursor keeps working with the same filters
    first = admin_token.ok("GET", "/api/v1/executions", params={"server_id": history["s0"], "limit": 3})
    again = admin_token.ok("GET", "/api/v1/executions",
                           params={"server_id": history["s0"], "limit": 3, "cursor": first["next_cursor"]})
    assert ids(again["items"]) == want[3:6]


# -------------------------------------------------------------- get


def test_get(admin_token: Client, viewer: Client, job: dict) -> None:
    e = run(admin_token, job["id"])
    assert admin_token.ok("GET", f"/api/v1/executions/{e['id']}") == e
    assert viewer.ok("GET", f"/api/v1/executions/{e['id']}") == e


@pytest.mark.parametrize("eid", ["0", "-1", "abc", "1.5", "01", MAX_ID, "9223372036854775808",
                                 "99999999999999999999", "%20"])
def test_absurd_or_missing_ids_are_404(admin_token: Client, eid: str) -> None:
    base = f"/api/v1/executions/{eid}"
    for path in (base, base + "/log", base + "/log.txt"):
        assert_problem(admin_token.get(path), 404)
    for path in (base + "/cancel", base + "/rerun"):
        assert_problem(admin_token.post(path), 404)
    assert_problem(admin_token.post(base + "/rerun", json={"only_failed": True}), 404)


# -------------------------------------------------------------- cancel and the log


def test_cancel_then_409(admin_token: Client, operator: Client, job: dict, servers: list[dict]) -> None:
    e = run(admin_token, job["id"])
    c = cancel(operator, e["id"])
    assert_execution_shape(c)
    assert c["id"] == e["id"] and c["status"] == "cancelled", c
    assert "waiting_reason" not in c
    finished = parse_time(c["finished_at"])
    assert finished >= parse_time(c["created_at"])
    assert c["exit_code"] is None
    assert [t["server_id"] for t in c["targets"]] == job["server_ids"]
    for t in c["targets"]:
        assert t["status"] == "cancelled" and t["exit_code"] is None and t["attempt"] == 0, t
        assert "cancelled before it started" in (t["error"] or ""), t
        assert t["finished_at"] is not None and "waiting_reason" not in t
    assert admin_token.ok("GET", f"/api/v1/executions/{e['id']}") == c
    last = admin_token.ok("GET", f"/api/v1/jobs/{job['id']}")["last_execution"]
    assert last == {"id": e["id"], "status": "cancelled", "finished_at": c["finished_at"]}
    p = assert_problem(operator.post(f"/api/v1/executions/{e['id']}/cancel"), 409)
    assert "finish" in p["detail"].lower(), p
    assert_problem(admin_token.post(f"/api/v1/executions/{e['id']}/cancel"), 409)
    assert admin_token.ok("GET", f"/api/v1/executions/{e['id']}") == c


@pytest.fixture()
def cancelled(admin_token: Client, make_job: Callable[..., dict], servers: list[dict]) -> dict:
    """A cancelled execution of a job on all three servers (in the order 1, 2, 0)."""
    j = make_job(server_ids=[servers[1]["id"], servers[2]["id"], servers[0]["id"]])
    e = run(admin_token, j["id"])
    return cancel(admin_token, e["id"])


def test_log_of_a_cancelled_execution(viewer: Client, cancelled: dict) -> None:
    log = read_log(viewer, cancelled["id"])
    assert log["status"] == "cancelled" and log["complete"] is True
    chunks = log["chunks"]
    assert [c["server_id"] for c in chunks] == [t["server_id"] for t in cancelled["targets"]]
    assert all(c["stream"] == "system" and c["data"] == CANCELLED_LINE for c in chunks), chunks
    seqs = [c["seq"] for c in chunks]
    assert all(a < b for a, b in zip(seqs, seqs[1:])) and seqs[0] >= 1, seqs
    assert log["next_seq"] == seqs[-1]
    # nothing newer: empty, next_seq stays, still complete
    after = read_log(viewer, cancelled["id"], after=log["next_seq"])
    assert after == {"chunks": [], "next_seq": log["next_seq"], "status": "cancelled", "complete": True}
    far = read_log(viewer, cancelled["id"], after=MAX_ID)
    assert far["chunks"] == [] and far["next_seq"] == int(MAX_ID) and far["complete"] is True


def test_log_resumes_without_gap_or_repeat(viewer: Client, cancelled: dict) -> None:
    full = read_log(viewer, cancelled["id"])["chunks"]
    assert len(full) == 3
    # resume from each seq: exactly the rest
    for i, c in enumerate(full):
        rest = read_log(viewer, cancelled["id"], after=c["seq"])
        assert rest["chunks"] == full[i + 1:]
    # page with limit=1 from 0: every chunk once, in order; complete only on the last page
    got, after, pages = [], 0, []
    for _ in range(10):
        page = read_log(viewer, cancelled["id"], after=after, limit=1)
        pages.append(page)
        got += page["chunks"]
        assert page["next_seq"] == (page["chunks"][-1]["seq"] if page["chunks"] else after)
        after = page["next_seq"]
        if page["complete"]:
            break
    assert got == full
    assert [p["complete"] for p in pages] == [False, False, True]


def test_log_wait_on_a_finished_execution_answers_at_once(viewer: Client, cancelled: dict) -> None:
    last = read_log(viewer, cancelled["id"])["next_seq"]
    for params in ({"wait": 1}, {"wait": 30, "after": last}):
        start = time.monotonic()
        log = read_log(viewer, cancelled["id"], **params)
        assert time.monotonic() - start < 0.9, params
        assert log["complete"] is True and log["status"] == "cancelled"


def test_log_wait_on_a_queued_execution_times_out_empty(admin_token: Client, job: dict) -> None:
    e = run(admin_token, job["id"])
    start = time.monotonic()
    log = read_log(admin_token, e["id"], wait=1)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 5, elapsed
    assert log == {"chunks": [], "next_seq": 0, "status": "queued", "complete": False}
    start = time.monotonic()
    assert read_log(admin_token, e["id"])["complete"] is False
    assert time.monotonic() - start < 0.9


def test_log_txt(viewer: Client, cancelled: dict) -> None:
    r = viewer.get(f"/api/v1/executions/{cancelled['id']}/log.txt")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    assert "utf-8" in r.headers["Content-Type"].lower()
    assert r.text == "".join(f"[{t['server_name']}] # {CANCELLED_LINE}" for t in cancelled["targets"])


def test_log_txt_of_an_execution_without_output_is_empty(admin_token: Client, job: dict) -> None:
    e = run(admin_token, job["id"])
    r = admin_token.get(f"/api/v1/executions/{e['id']}/log.txt")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain") and r.text == ""


# -------------------------------------------------------------- re-run


def test_rerun_only_failed_after_cancel(operator: Client, cancelled: dict) -> None:
    r = operator.post(f"/api/v1/executions/{cancelled['id']}/rerun", json={"only_failed": True})
    assert r.status_code == 202, r.text
    n = r.json()
    assert r.headers.get("Location") == f"/api/v1/executions/{n['id']}"
    assert_queued_without_executor(n)
    assert n["id"] > cancelled["id"] and n["parent_id"] == cancelled["id"]
    assert n["trigger"] == "retry"
    assert n["triggered_by"] == {"id": operator.user["id"], "username": operator.user["username"]}
    assert n["job_id"] == cancelled["job_id"] and n["job_name"] == cancelled["job_name"]
    # every target was cancelled (none succeeded), so all of them run again, in the same order
    assert [t["server_id"] for t in n["targets"]] == [t["server_id"] for t in cancelled["targets"]]
    assert operator.ok("GET", f"/api/v1/executions/{n['id']}") == n
    # the old one is unchanged
    assert operator.ok("GET", f"/api/v1/executions/{cancelled['id']}") == cancelled


@pytest.mark.parametrize("kw", [{}, {"json": {}}, {"json": {"only_failed": False}}],
                         ids=["no-body", "empty-object", "only-failed-false"])
def test_rerun_everything(admin_token: Client, cancelled: dict, kw: dict) -> None:
    r = admin_token.post(f"/api/v1/executions/{cancelled['id']}/rerun", **kw)
    assert r.status_code == 202, r.text
    n = r.json()
    assert_queued_without_executor(n)
    assert n["trigger"] == "retry" and n["parent_id"] == cancelled["id"]
    assert [t["server_id"] for t in n["targets"]] == [t["server_id"] for t in cancelled["targets"]]


def test_rerun_only_failed_of_an_unfinished_execution_is_409(admin_token: Client, job: dict) -> None:
    e = run(admin_token, job["id"])
    assert_problem(admin_token.post(f"/api/v1/executions/{e['id']}/rerun", json={"only_failed": True}), 409)
    assert list_ids(admin_token, job_id=job["id"]) == [e["id"]]


def test_rerun_of_a_deleted_job_is_409_and_history_outlives_the_job(admin_token: Client, viewer: Client,
                                                                    servers: list[dict]) -> None:
    j = admin_token.ok("POST", "/api/v1/jobs", json=job_body([servers[0]["id"]]))
    e = run(admin_token, j["id"])
    c = cancel(admin_token, e["id"])
    assert admin_token.delete(f"/api/v1/jobs/{j['id']}").status_code == 204
    kept = viewer.ok("GET", f"/api/v1/executions/{e['id']}")
    assert kept["job_id"] is None and kept["job_name"] == j["name"]
    assert {k: v for k, v in kept.items() if k != "job_id"} == {k: v for k, v in c.items() if k != "job_id"}
    assert read_log(viewer, e["id"])["chunks"][0]["data"] == CANCELLED_LINE
    for body in ({}, {"only_failed": True}):
        assert_problem(admin_token.post(f"/api/v1/executions/{e['id']}/rerun", json=body), 409)
    assert list_ids(admin_token, job_id=j["id"]) == []


@pytest.mark.parametrize("body, field", [
    ({"only_failed": "yes"}, "only_failed"),
    ({"only_failed": None}, "only_failed"),
    ({"only_failed": 1}, "only_failed"),
    ({"onlyFailed": True}, "onlyFailed"),
    ({"env": {"A": "1"}}, "env"),
])
def test_rerun_with_an_invalid_body_is_422(admin_token: Client, cancelled: dict, body: dict, field: str) -> None:
    p = assert_problem(admin_token.post(f"/api/v1/executions/{cancelled['id']}/rerun", json=body), 422)
    assert field in error_fields(p), p
    assert list_ids(admin_token, job_id=cancelled["job_id"]) == [cancelled["id"]]


# -------------------------------------------------------------- roles, sign-in, CSRF


def test_viewer_reads_but_may_not_run_cancel_or_rerun(viewer: Client, admin_token: Client, job: dict) -> None:
    e = run(admin_token, job["id"])
    assert viewer.ok("GET", "/api/v1/executions", params={"job_id": job["id"]})["items"] == [e]
    assert viewer.ok("GET", f"/api/v1/executions/{e['id']}") == e
    read_log(viewer, e["id"])
    assert viewer.get(f"/api/v1/executions/{e['id']}/log.txt").status_code == 200
    assert_problem(viewer.post(f"/api/v1/jobs/{job['id']}/run"), 403)
    assert_problem(viewer.post(f"/api/v1/jobs/{job['id']}/run", json={"env": {"A": "1"}}), 403)
    assert_problem(viewer.post(f"/api/v1/executions/{e['id']}/cancel"), 403)
    assert_problem(viewer.post(f"/api/v1/executions/{e['id']}/rerun"), 403)
    assert_problem(viewer.post(f"/api/v1/executions/{e['id']}/rerun", json={"only_failed": True}), 403)
    assert list_ids(admin_token, job_id=job["id"]) == [e["id"]]
    assert admin_token.ok("GET", f"/api/v1/executions/{e['id']}")["status"] == "queued"


def test_viewer_with_a_token_may_not_run(viewer: Client, job: dict, admin_token: Client) -> None:
    token = viewer.ok("POST", "/api/v1/tokens", json={"name": unique("viewer")})
    c = Client(token=token["token"])
    assert c.ok("GET", "/api/v1/executions", params={"job_id": job["id"]})["items"] == []
    assert_problem(c.post(f"/api/v1/jobs/{job['id']}/run"), 403)
    viewer.delete(f"/api/v1/tokens/{token['id']}")


def test_signed_out_callers_get_401(anon: Client, admin_token: Client, job: dict) -> None:
    e = run(admin_token, job["id"])
    for path in ("/api/v1/executions", f"/api/v1/executions/{e['id']}", f"/api/v1/executions/{e['id']}/log",
                 f"/api/v1/executions/{e['id']}/log.txt", f"/api/v1/executions/{MAX_ID}"):
        assert_problem(anon.get(path), 401)
    for path in (f"/api/v1/jobs/{job['id']}/run", f"/api/v1/executions/{e['id']}/cancel",
                 f"/api/v1/executions/{e['id']}/rerun"):
        assert_problem(anon.post(path), 401)
        assert_problem(anon.post(path, json={}), 401)
    assert_problem(Client(token="not-a-token").post(f"/api/v1/jobs/{job['id']}/run"), 401)
    assert list_ids(admin_token, job_id=job["id"]) == [e["id"]]
    assert admin_token.ok("GET", f"/api/v1/executions/{e['id']}")["status"] == "queued"


def test_cookie_writes_need_the_csrf_token(operator: Client, admin_token: Client, job: dict) -> None:
    e = run(admin_token, job["id"])
    no_csrf = Client(cookie=operator.cookie)
    wrong_csrf = Client(cookie=operator.cookie, csrf="x" * 43)
    for c in (no_csrf, wrong_csrf):
        assert c.ok("GET", f"/api/v1/executions/{e['id']}")["id"] == e["id"]
        assert_problem(c.post(f"/api/v1/jobs/{job['id']}/run"), 403)
        assert_problem(c.post(f"/api/v1/executions/{e['id']}/cancel"), 403)
        assert_problem(c.post(f"/api/v1/executions/{e['id']}/rerun", json={}), 403)
    assert list_ids(admin_token, job_id=job["id"]) == [e["id"]]
    assert admin_token.ok("GET", f"/api/v1/executions/{e['id']}")["status"] == "queued"


# -------------------------------------------------------------- bad query parameters


@pytest.mark.parametrize("params", [
    {"job_id": "0"}, {"job_id": "-1"}, {"job_id": "abc"}, {"job_id": "1.5"}, {"job_id": "99999999999999999999"},
    {"server_id": "0"}, {"server_id": "x"}, {"server_id": "9223372036854775808"},
    {"status": "bogus"}, {"status": "Queued"}, {"status": "finished"},
    {"since": "yesterday"}, {"since": "2026-11-29"}, {"since": "2026-11-29T23:14:53"},
    {"until": "2026-11-29 23:14:53Z"}, {"until": "1764000000"}, {"until": "2026-13-01T00:00:00Z"},
    {"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"cursor": "not-a-cursor!"},
], ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()))
def test_list_bad_query_is_400(admin_token: Client, params: dict) -> None:
    assert_problem(admin_token.get("/api/v1/executions", params=params), 400)


@pytest.mark.parametrize("params", [
    {"after": "-1"}, {"after": "x"}, {"after": "1.5"}, {"after": "99999999999999999999"},
    {"wait": "-1"}, {"wait": "31"}, {"wait": "x"},
    {"limit": "0"}, {"limit": "5001"}, {"limit": "x"},
], ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()))
def test_log_bad_query_is_400(admin_token: Client, cancelled: dict, params: dict) -> None:
    assert_problem(admin_token.get(f"/api/v1/executions/{cancelled['id']}/log", params=params), 400)


@pytest.mark.parametrize("params", [{"wait": "0"}, {"wait": "30"}, {"limit": "1"}, {"limit": "5000"},
                                    {"after": "0"}, {"after": MAX_ID}, {"after": ""}, {"wait": ""}],
                         ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()))
def test_log_query_bounds_are_accepted(admin_token: Client, cancelled: dict, params: dict) -> None:
    read_log(admin_token, cancelled["id"], **params)


PG_TIME_BUG = ("server: since/until that Foundation parses but PostgreSQL rejects reach the query and "
               "answer 500 (offsets beyond ±15:59, impossible dates, year 0, a leading minus)")


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("value, status", [
    ("2026-11-29T23:14:53+16:00", 200),
    ("2026-11-29T23:14:53-23:59", 200),
    ("2026-02-30T00:00:00Z", 400),
    ("2026-11-29T23:14:53+99:00", 400),
    ("-2026-11-29T23:14:53Z", 400),
    ("2026-11-29T23:14:53+15:59", 200),
    ("0001-01-01T00:00:00Z", 200),
    ("9999-12-31T23:59:59.999Z", 200),
    ("2026-11-29T23:14:53.123456789Z", 200),
    ("2026-11-29T23:60:00Z", 400),
])
def test_list_time_edge_cases(admin_token: Client, name: str, value: str, status: int) -> None:
    r = admin_token.get("/api/v1/executions", params={name: value, "limit": 1})
    assert r.status_code < 500, f"{name}={value}: {r.status_code} {r.text[:300]}"
    if status == 200:
        assert r.status_code == 200, r.text[:300]
        assert set(r.json()) == {"items", "next_cursor"}
    else:
        assert_problem(r, status)
