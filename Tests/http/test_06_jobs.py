# SPDX-License-Identifier: Apache-2.0
"""Jobs: CRUD, defaults, write-only secrets, validation, schedules."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from helpers import Client, assert_problem, error_fields, dumps, job_body, parse_time, server_body, unique

JOB_FIELDS = {
    "id", "name", "description", "script", "server_ids", "env", "secret_env_names", "timeout_seconds",
    "schedule", "timezone", "misfire", "next_runs", "concurrency", "max_parallel", "retries", "tags",
    "enabled", "notify", "run_after", "run_after_condition", "retention_days", "last_execution", "created_at", "updated_at",
}


@pytest.fixture(scope="module")
def server_id(admin_token: Client) -> Any:
    s = admin_token.ok("POST", "/api/v1/servers", json=server_body())
    yield s["id"]
    admin_token.delete(f"/api/v1/servers/{s['id']}")


@pytest.fixture()
def jobs(admin_token: Client, server_id: int) -> Any:
    """jobs(**fields) -> created job (on the module's server unless server_ids is given); cleaned up."""
    made: list[int] = []

    def make(client: Client | None = None, **overrides: Any) -> dict:
        overrides.setdefault("server_ids", [server_id])
        r = (client or admin_token).post("/api/v1/jobs", json=job_body(**overrides))
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        return r.json()

    yield make
    for jid in reversed(made):
        admin_token.delete(f"/api/v1/jobs/{jid}")


def assert_job_shape(j: dict) -> None:
    assert JOB_FIELDS <= set(j), f"missing: {JOB_FIELDS - set(j)}"
    assert "secret_env" not in j
    assert isinstance(j["id"], int) and j["id"] >= 1
    for k in ("created_at", "updated_at"):
        assert j[k].endswith("Z"), f"{k} not UTC: {j[k]}"
        parse_time(j[k])


def test_create_with_defaults(jobs: Callable[..., dict], server_id: int) -> None:
    j = jobs(name=unique("defaults"), script="uptime\n")
    assert_job_shape(j)
    assert j["script"] == "uptime\n" and j["server_ids"] == [server_id]
    assert j["description"] == ""
    assert j["env"] == {} and j["secret_env_names"] == []
    assert j["timeout_seconds"] == 3600
    assert j["schedule"] is None and j["next_runs"] == []
    assert j["timezone"] == "UTC"
    assert j["misfire"] in ("run_once", "skip")
    assert j["concurrency"] == "allow"
    assert j["max_parallel"] == 10
    assert j["retries"] == 0
    assert j["tags"] == [] and j["notify"] == [] and j["run_after"] == []
    assert j["enabled"] is True
    assert j["last_execution"] is None


def test_create_with_everything(jobs: Callable[..., dict], admin_token: Client, server_id: int) -> None:
    first = jobs()
    body = dict(
        description="nightly backup",
        script="#!/bin/sh\nset -e\necho \"$GREETING\"\n",
        env={"GREETING": "hello", "_X1": ""},
        timeout_seconds=86400,
        schedule="0 3 * * *",
        timezone="Asia/Tokyo",
        misfire="skip",
        concurrency="queue",
        max_parallel=1000,
        retries=10,
        tags=["backup", "nightly:v2"],
        enabled=True,
        notify=[{"on": ["failed", "timed_out"], "type": "webhook", "url": "http://127.0.0.1:9/hook"},
                {"on": ["succeeded"], "type": "email", "to": "ops@example.invalid"}],
        run_after=[first["id"]],
    )
    j = jobs(**body)
    assert_job_shape(j)
    for k, v in body.items():
        if k == "tags":
            assert sorted(j[k]) == sorted(v)
        elif k == "notify":
            assert [(n["on"], n["type"], n.get("url"), n.get("to")) for n in j[k]] == \
                   [(n["on"], n["type"], n.get("url"), n.get("to")) for n in v]
        else:
            assert j[k] == v, k
    assert len(j["next_runs"]) == 5
    for t in j["next_runs"]:
        local = parse_time(t).astimezone(timezone(timedelta(hours=9)))
        assert (local.hour, local.minute, local.second) == (3, 0, 0), t
    assert admin_token.ok("GET", f"/api/v1/jobs/{j['id']}") == j


def test_content_type_with_charset_is_accepted(admin_token: Client, server_id: int) -> None:
    body = dumps(job_body([server_id]))
    r = admin_token.post("/api/v1/jobs", data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text
    admin_token.delete(f"/api/v1/jobs/{r.json()['id']}")


def test_unicode_round_trips(jobs: Callable[..., dict], admin_token: Client) -> None:
    j = jobs(name=unique("ツバメ"), description="説明 — ✓ 🐦", script="echo 'ünïcödé'\n")
    got = admin_token.ok("GET", f"/api/v1/jobs/{j['id']}")
    assert got["description"] == "説明 — ✓ 🐦" and got["script"] == "echo 'ünïcödé'\n"
    assert got["name"].startswith("ツバメ-")


def test_secret_env_values_are_never_returned(jobs: Callable[..., dict], admin_token: Client,
                                              viewer: Client) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    other = "other-" + uuid.uuid4().hex
    r_create_job = jobs(env={"PLAIN": "visible"}, secret_env={"API_KEY": secret, "DB_PASS": other})
    assert sorted(r_create_job["secret_env_names"]) == ["API_KEY", "DB_PASS"]
    assert r_create_job["env"] == {"PLAIN": "visible"}
    jid = r_create_job["id"]
    for c in (admin_token, viewer):
        for path in (f"/api/v1/jobs/{jid}", "/api/v1/jobs?limit=200"):
            r = c.get(path)
            assert r.status_code == 200
            assert secret not in r.text and other not in r.text
            assert '"secret_env"' not in r.text
    # PATCH that does not mention secret_env keeps it; one that does replaces it
    r = admin_token.patch(f"/api/v1/jobs/{jid}", json={"description": "x"})
    assert r.status_code == 200 and sorted(r.json()["secret_env_names"]) == ["API_KEY", "DB_PASS"]
    assert secret not in r.text
    # PATCH merges secrets (they cannot be read back to resend): a string sets, null removes
    r = admin_token.patch(f"/api/v1/jobs/{jid}", json={"secret_env": {"NEW": "v-" + secret, "API_KEY": None}})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["secret_env_names"]) == ["DB_PASS", "NEW"] and secret not in r.text
    r = admin_token.patch(f"/api/v1/jobs/{jid}", json={"secret_env": {"API_KEY": "x-" + secret}})
    assert sorted(r.json()["secret_env_names"]) == ["API_KEY", "DB_PASS", "NEW"] and secret not in r.text


def test_disabled_job_keeps_its_schedule(jobs: Callable[..., dict], admin_token: Client) -> None:
    j = jobs(schedule="@hourly", enabled=False)
    assert j["enabled"] is False and j["schedule"] == "@hourly"
    j = admin_token.ok("PATCH", f"/api/v1/jobs/{j['id']}", json={"enabled": True})
    assert j["enabled"] is True and j["schedule"] == "@hourly" and len(j["next_runs"]) == 5


@pytest.mark.parametrize("overrides, field", [
    ({"server_ids": [9223372036854775807]}, "server_ids"),
    ({"server_ids": []}, "server_ids"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"BAD-NAME": "x"}}, "env"),
    ({"env": {"": "x"}}, "env"),
    ({"env": {"OK": 1}}, "env"),
    ({"secret_env": {"has space": "x"}}, "secret_env"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": 86401}, "timeout_seconds"),
    ({"timeout_seconds": -5}, "timeout_seconds"),
    ({"schedule": "61 * * * *"}, "schedule"),
    ({"schedule": "* * * *"}, "schedule"),
    ({"schedule": "* * * * * *"}, "schedule"),
    ({"schedule": "not a cron"}, "schedule"),
    ({"schedule": "@sometimes"}, "schedule"),
    ({"schedule": ""}, "schedule"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"timezone": ""}, "timezone"),
    ({"misfire": "later"}, "misfire"),
    ({"concurrency": "sometimes"}, "concurrency"),
    ({"max_parallel": 0}, "max_parallel"),
    ({"max_parallel": 1001}, "max_parallel"),
    ({"retries": -1}, "retries"),
    ({"retries": 11}, "retries"),
    ({"script": ""}, "script"),
    ({"name": ""}, "name"),
    ({"name": "n" * 101}, "name"),
    ({"tags": ["bad tag"]}, "tags"),
    ({"notify": [{"on": ["failed"], "type": "pigeon", "url": "http://127.0.0.1:9/"}]}, "notify"),
    ({"run_after": [9223372036854775807]}, "run_after"),
    ({"run_after_condition": "sometimes"}, "run_after_condition"),
    ({"retention_days": 0}, "retention_days"),
    ({"retention_days": 36501}, "retention_days"),
    ({"retention_days": "30"}, "retention_days"),
])
def test_invalid_job_is_422(admin_token: Client, server_id: int, overrides: dict, field: str) -> None:
    body = job_body(**({"server_ids": [server_id]} | overrides))
    p = assert_problem(admin_token.post("/api/v1/jobs", json=body), 422)
    fields = error_fields(p)
    assert any(f == field or f.startswith(field + "[") or f.startswith(field + ".") for f in fields), p


def test_script_larger_than_1_mib_is_422(admin_token: Client, server_id: int) -> None:
    body = job_body([server_id], script="#" * (1024 * 1024 + 1))
    p = assert_problem(admin_token.post("/api/v1/jobs", json=body), 422)
    assert "script" in error_fields(p)


def test_script_of_exactly_1_mib_is_accepted(jobs: Callable[..., dict]) -> None:
    j = jobs(script="#" * (1024 * 1024 - 1) + "\n")
    assert len(j["script"]) == 1024 * 1024


def _assert_five_increasing(j: dict, step: timedelta | None) -> list[datetime]:
    times = [parse_time(t) for t in j["next_runs"]]
    assert len(times) == 5, j["next_runs"]
    now = datetime.now(timezone.utc)
    assert times[0] > now - timedelta(seconds=5), "next_runs must lie in the future"
    assert all(a < b for a, b in zip(times, times[1:])), j["next_runs"]
    if step:
        assert all(b - a == step for a, b in zip(times, times[1:])), j["next_runs"]
    return times


def test_cron_every_five_minutes(jobs: Callable[..., dict]) -> None:
    j = jobs(schedule="*/5 * * * *")
    times = _assert_five_increasing(j, timedelta(minutes=5))
    assert all(t.minute % 5 == 0 and t.second == 0 and t.microsecond == 0 for t in times)
    assert times[0] <= datetime.now(timezone.utc) + timedelta(minutes=5, seconds=5)


def test_cron_daily_macro(jobs: Callable[..., dict]) -> None:
    j = jobs(schedule="@daily")
    times = _assert_five_increasing(j, timedelta(days=1))
    assert all((t.hour, t.minute, t.second) == (0, 0, 0) for t in times), j["next_runs"]


@pytest.mark.parametrize("macro", ["@hourly", "@weekly", "@monthly"])
def test_other_macros(jobs: Callable[..., dict], macro: str) -> None:
    _assert_five_increasing(jobs(schedule=macro), None)


def test_daily_in_a_time_zone(jobs: Callable[..., dict]) -> None:
    j = jobs(schedule="@daily", timezone="Asia/Tokyo")
    times = _assert_five_increasing(j, timedelta(days=1))
    assert all((t.hour, t.minute) == (15, 0) for t in times), j["next_runs"]  # 00:00 JST


def test_patch_is_partial(jobs: Callable[..., dict], admin_token: Client, operator: Client) -> None:
    j = jobs(description="before", tags=["keep"], env={"A": "1"})
    r = operator.patch(f"/api/v1/jobs/{j['id']}", json={"description": "after"})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["description"] == "after"
    for k in JOB_FIELDS - {"description", "updated_at"}:
        assert p[k] == j[k], k
    assert parse_time(p["updated_at"]) >= parse_time(j["updated_at"])

    p = admin_token.ok("PATCH", f"/api/v1/jobs/{j['id']}", json={"schedule": "*/5 * * * *"})
    assert p["schedule"] == "*/5 * * * *" and len(p["next_runs"]) == 5
    p = admin_token.ok("PATCH", f"/api/v1/jobs/{j['id']}", json={"schedule": None})
    assert p["schedule"] is None and p["next_runs"] == []
    p = admin_token.ok("PATCH", f"/api/v1/jobs/{j['id']}", json={"env": {}, "tags": [], "enabled": False})
    assert p["env"] == {} and p["tags"] == [] and p["enabled"] is False and p["description"] == "after"
    assert_problem(admin_token.patch(f"/api/v1/jobs/{j['id']}", json={"timeout_seconds": 0}), 422)
    assert_problem(admin_token.patch(f"/api/v1/jobs/{j['id']}", json={"server_ids": [9223372036854775807]}), 422)
    assert admin_token.ok("GET", f"/api/v1/jobs/{j['id']}")["timeout_seconds"] == j["timeout_seconds"]


def test_duplicate_name_is_409(jobs: Callable[..., dict], admin_token: Client, server_id: int) -> None:
    a, b = jobs(), jobs()
    assert_problem(admin_token.post("/api/v1/jobs", json=job_body([server_id], name=a["name"])), 409)
    assert_problem(admin_token.patch(f"/api/v1/jobs/{b['id']}", json={"name": a["name"]}), 409)


def test_delete(admin_token: Client, server_id: int) -> None:
    j = admin_token.ok("POST", "/api/v1/jobs", json=job_body([server_id]))
    assert admin_token.delete(f"/api/v1/jobs/{j['id']}").status_code == 204
    assert_problem(admin_token.get(f"/api/v1/jobs/{j['id']}"), 404)
    assert_problem(admin_token.delete(f"/api/v1/jobs/{j['id']}"), 404)
    assert_problem(admin_token.patch(f"/api/v1/jobs/{j['id']}", json={"description": "x"}), 404)
    assert j["id"] not in {x["id"] for x in admin_token.list_all("/api/v1/jobs")}


def test_list_search_and_pagination(jobs: Callable[..., dict], admin_token: Client) -> None:
    tag, mark = unique("jt"), uuid.uuid4().hex[:10]
    made = [jobs(name=f"find-{mark}-{i}", tags=[tag]) for i in range(5)]
    other = jobs(name=f"find-{mark}-other")
    ids = {j["id"] for j in admin_token.list_all("/api/v1/jobs", {"tag": tag})}
    assert ids == {j["id"] for j in made}
    ids = {j["id"] for j in admin_token.list_all("/api/v1/jobs", {"q": mark})}
    assert ids == {j["id"] for j in made} | {other["id"]}
    seen, cursor = [], None
    for _ in range(5):
        params = {"tag": tag, "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = admin_token.ok("GET", "/api/v1/jobs", params=params)
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cursor is None and sorted(seen) == sorted(j["id"] for j in made)


def test_run_queues_an_execution(jobs: Callable[..., dict], operator: Client, admin_token: Client) -> None:
    j = jobs()
    r = operator.post(f"/api/v1/jobs/{j['id']}/run")
    assert r.status_code == 202, r.text
    e = r.json()
    assert r.headers.get("Location") == f"/api/v1/executions/{e['id']}"
    assert e["job_id"] == j["id"] and e["job_name"] == j["name"] and e["status"] == "queued"
    assert e["trigger"] == "manual" and e["triggered_by"] == {"id": operator.user["id"],
                                                               "username": operator.user["username"]}
    assert [t["server_id"] for t in e["targets"]] == j["server_ids"]
    r = admin_token.post(f"/api/v1/jobs/{j['id']}/run", json={})
    assert r.status_code == 202, r.text
    second = r.json()
    assert second["trigger"] == "api" and second["id"] > e["id"]
    last = admin_token.ok("GET", f"/api/v1/jobs/{j['id']}")["last_execution"]
    assert last == {"id": second["id"], "status": "queued", "finished_at": None}
    for x in (e, second):
        admin_token.ok("POST", f"/api/v1/executions/{x['id']}/cancel", 202)
    last = admin_token.ok("GET", f"/api/v1/jobs/{j['id']}")["last_execution"]
    assert last["id"] == second["id"] and last["status"] == "cancelled"
    parse_time(last["finished_at"])
    assert_problem(admin_token.post("/api/v1/jobs/9223372036854775807/run"), 404)


def test_retention_days_is_set_and_cleared(admin_token: Client, server_id: int) -> None:
    job = admin_token.ok("POST", "/api/v1/jobs", json=job_body(server_ids=[server_id], retention_days=90), status=201)
    try:
        assert job["retention_days"] == 90
        assert admin_token.ok("PATCH", f"/api/v1/jobs/{job['id']}", json={"description": "x"})["retention_days"] == 90
        assert admin_token.ok("PATCH", f"/api/v1/jobs/{job['id']}", json={"retention_days": None})["retention_days"] is None
        assert admin_token.ok("PATCH", f"/api/v1/jobs/{job['id']}", json={"retention_days": 7})["retention_days"] == 7
    finally:
        admin_token.delete(f"/api/v1/jobs/{job['id']}")
