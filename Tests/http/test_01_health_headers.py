# SPDX-License-Identifier: Apache-2.0
"""Health, the OpenAPI document, security headers and /metrics."""
from __future__ import annotations

import json
import re
import time

import pytest

from helpers import OPENAPI_FILE, Client, assert_problem

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_health_is_public_and_ok(anon: Client) -> None:
    r = anon.get("/api/health")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert isinstance(body["executors"], list)
    for e in body["executors"]:
        assert {"id", "host", "last_seen"} <= set(e)


def test_openapi_is_public_and_matches_the_repository_file(anon: Client) -> None:
    r = anon.get("/api/openapi.json")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"].startswith("application/json")
    served = r.json()
    assert served["openapi"].startswith("3.1")
    local = json.loads(OPENAPI_FILE.read_text())

    def operations(doc: dict) -> set[tuple[str, str]]:
        return {(p, m) for p, item in doc["paths"].items() for m in item if m in HTTP_METHODS}

    assert operations(served) == operations(local)
    assert set(served["components"]["schemas"]) == set(local["components"]["schemas"])
    assert served["servers"] == [{"url": "/"}]


def test_openapi_lists_the_milestone_operations() -> None:
    doc = json.loads(OPENAPI_FILE.read_text())
    ops = {(p, m) for p, item in doc["paths"].items() for m in item if m in HTTP_METHODS}
    expected = {
        ("/api/health", "get"), ("/api/openapi.json", "get"),
        ("/api/v1/auth/login", "post"), ("/api/v1/auth/logout", "post"), ("/api/v1/auth/me", "get"),
        ("/api/v1/tokens", "get"), ("/api/v1/tokens", "post"), ("/api/v1/tokens/{id}", "delete"),
        ("/api/v1/users", "get"), ("/api/v1/users", "post"),
        ("/api/v1/users/{id}", "get"), ("/api/v1/users/{id}", "patch"), ("/api/v1/users/{id}", "delete"),
        ("/api/v1/servers", "get"), ("/api/v1/servers", "post"),
        ("/api/v1/servers/{id}", "get"), ("/api/v1/servers/{id}", "patch"), ("/api/v1/servers/{id}", "delete"),
        ("/api/v1/servers/{id}/test", "post"),
        ("/api/v1/jobs", "get"), ("/api/v1/jobs", "post"),
        ("/api/v1/jobs/{id}", "get"), ("/api/v1/jobs/{id}", "patch"), ("/api/v1/jobs/{id}", "delete"),
        ("/api/v1/jobs/{id}/run", "post"), ("/api/v1/jobs/{id}/notify-test", "post"),
        ("/api/v1/executions", "get"), ("/api/v1/executions/{id}", "get"),
        ("/api/v1/executions/{id}/cancel", "post"), ("/api/v1/executions/{id}/rerun", "post"),
        ("/api/v1/executions/{id}/log", "get"), ("/api/v1/executions/{id}/log.txt", "get"),
        ("/api/v1/events", "get"), ("/api/v1/stats", "get"), ("/api/v1/schedule/preview", "get"),
        ("/api/v1/audit", "get"), ("/api/v1/notifications", "get"),
    }
    assert ops == expected
    op_ids = {o["operationId"] for item in doc["paths"].values() for m, o in item.items() if m in HTTP_METHODS}
    assert {"runJob", "listExecutions", "getExecution", "cancelExecution", "rerunExecution",
            "getExecutionLog", "getExecutionLogText", "listEvents"} <= op_ids


def test_openapi_file_is_a_valid_document() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(json.loads(OPENAPI_FILE.read_text()))


def _assert_security_headers(r, where: str) -> None:
    csp = r.headers.get("Content-Security-Policy", "")
    assert csp, f"{where}: no Content-Security-Policy"
    assert "default-src" in csp, f"{where}: CSP without default-src: {csp!r}"
    directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";") if d.strip()}
    scripts = directives.get("script-src", directives["default-src"])
    assert "unsafe-inline" not in scripts and "unsafe-eval" not in scripts, f"{where}: CSP {csp!r}"
    assert r.headers.get("X-Content-Type-Options", "").lower() == "nosniff", f"{where}: {r.headers}"
    assert r.headers.get("X-Frame-Options", "").upper() in {"DENY", "SAMEORIGIN"}, f"{where}: {r.headers}"


@pytest.mark.parametrize("path, status", [
    ("/", 200),
    ("/api/health", 200),
    ("/api/openapi.json", 200),
    ("/api/v1/auth/me", 401),          # error answers carry the headers too (nginx `always`)
    ("/api/v1/servers/1", 401),
])
def test_security_headers(anon: Client, path: str, status: int) -> None:
    r = anon.get(path)
    assert r.status_code == status, f"{path}: {r.status_code} {r.text[:300]}"
    _assert_security_headers(r, path)


def test_security_headers_on_authenticated_api_answers(admin_token: Client) -> None:
    r = admin_token.get("/api/v1/servers")
    assert r.status_code == 200
    _assert_security_headers(r, "/api/v1/servers")
    r = admin_token.get("/api/v1/servers/99999999")
    assert_problem(r, 404)
    _assert_security_headers(r, "/api/v1/servers/99999999 (404)")


def test_metrics_from_loopback(anon: Client) -> None:
    r = anon.get("/metrics")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"].startswith("text/plain")
    label = r'[A-Za-z_][A-Za-z0-9_]*="(?:[^"\\\n]|\\.)*"'
    sample = re.compile(rf"^[A-Za-z_:][A-Za-z0-9_:]*(\{{{label}(,{label})*\}})? [-+0-9.eEInfNa]+( \d+)?$")
    lines = [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")]
    assert lines, "no samples in /metrics"
    bad = [ln for ln in lines if not sample.match(ln)]
    assert not bad, f"lines not in the Prometheus text format: {bad[:5]}"
    # The pool's figures (any worker answers for all of them) and the database's.
    for name in ("tsubame_pool_workers", "tsubame_pool_restarts_total", "tsubame_longpoll_waiters", "tsubame_queue_targets",
                 "tsubame_queue_oldest_seconds", "tsubame_executions_finished_total", "tsubame_log_bytes_total"):
        assert re.search(rf"^{name}(\{{[^}}]*\}})? \d", r.text, re.M), f"{name} missing"
    assert re.search(r"^tsubame_pool_workers [1-9]", r.text, re.M)
    assert "tsubame_database_up 1" in r.text


def test_metrics_count_requests_by_route_and_status(anon: Client) -> None:
    """Requests are counted by route pattern and status class, with a latency histogram, over the whole pool."""
    def count(text: str, route: str, status: str) -> int:
        m = re.search(rf'^tsubame_http_requests_total{{route="{re.escape(route)}",status="{status}"}} (\d+)$', text, re.M)
        return int(m.group(1)) if m else 0
    time.sleep(0.3)  # earlier requests' counts are in
    before = anon.get("/metrics").text
    for _ in range(5):
        assert anon.get("/api/v1/jobs/123").status_code == 401
    time.sleep(0.5)  # workers copy their counters to the scoreboard every 100 ms
    after = anon.get("/metrics").text
    assert count(after, "/api/v1/jobs/{id}", "4xx") - count(before, "/api/v1/jobs/{id}", "4xx") == 5
    assert re.search(r'^tsubame_http_request_duration_seconds_bucket\{route="/api/v1/jobs/\{id\}",le="\+Inf"\} \d+$', after, re.M)
    assert re.search(r'^tsubame_http_request_duration_seconds_count\{route="/api/v1/jobs/\{id\}"\} \d+$', after, re.M)


def test_pool_status_from_loopback(anon: Client) -> None:
    """The pool master's status (workers, requests, restarts), asked by a worker over the control socket."""
    r = anon.get("/pool-status")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"].startswith("application/json")
    status = r.json()
    assert status["workers"] and all(w["pid"] > 0 for w in status["workers"]), status
    assert {"restarts", "recycled", "reloads"} <= set(status)
