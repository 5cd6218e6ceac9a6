# SPDX-License-Identifier: Apache-2.0
"""What each role may do, and that everything but health/openapi/login needs a caller."""
from __future__ import annotations

from typing import Any

import pytest

from helpers import Client, assert_problem, job_body, server_body, strong_password, unique


@pytest.fixture(scope="module")
def fixture_objects(admin_token: Client) -> Any:
    server = admin_token.ok("POST", "/api/v1/servers", json=server_body())
    job = admin_token.ok("POST", "/api/v1/jobs", json=job_body([server["id"]]))
    user = admin_token.ok("POST", "/api/v1/users",
                          json={"username": unique("roles"), "password": strong_password(), "role": "viewer"})
    yield {"server": server, "job": job, "user": user}
    admin_token.delete(f"/api/v1/jobs/{job['id']}")
    admin_token.delete(f"/api/v1/servers/{server['id']}")
    admin_token.delete(f"/api/v1/users/{user['id']}")


# ---------------------------------------------------------------- viewer


def test_viewer_reads_servers_and_jobs(viewer: Client, fixture_objects: dict) -> None:
    s, j = fixture_objects["server"], fixture_objects["job"]
    assert viewer.get("/api/v1/servers").status_code == 200
    assert viewer.get("/api/v1/jobs").status_code == 200
    got = viewer.get(f"/api/v1/servers/{s['id']}")
    assert got.status_code == 200 and got.json()["name"] == s["name"]
    got = viewer.get(f"/api/v1/jobs/{j['id']}")
    assert got.status_code == 200 and got.json()["name"] == j["name"]


def test_viewer_may_not_write(viewer: Client, fixture_objects: dict) -> None:
    s, j, u = fixture_objects["server"], fixture_objects["job"], fixture_objects["user"]
    assert_problem(viewer.post("/api/v1/servers", json=server_body()), 403)
    assert_problem(viewer.patch(f"/api/v1/servers/{s['id']}", json={"description": "v"}), 403)
    assert_problem(viewer.delete(f"/api/v1/servers/{s['id']}"), 403)
    assert_problem(viewer.post("/api/v1/jobs", json=job_body([s["id"]])), 403)
    assert_problem(viewer.patch(f"/api/v1/jobs/{j['id']}", json={"description": "v"}), 403)
    assert_problem(viewer.delete(f"/api/v1/jobs/{j['id']}"), 403)
    assert_problem(viewer.post(f"/api/v1/jobs/{j['id']}/run"), 403)
    assert_problem(viewer.get("/api/v1/users"), 403)
    assert_problem(viewer.get(f"/api/v1/users/{u['id']}"), 403)
    assert_problem(viewer.post("/api/v1/users",
                               json={"username": unique("v"), "password": strong_password(), "role": "admin"}), 403)
    assert_problem(viewer.patch(f"/api/v1/users/{viewer.user['id']}", json={"role": "admin"}), 403)
    assert_problem(viewer.delete(f"/api/v1/users/{u['id']}"), 403)
    # nothing changed
    assert viewer.get(f"/api/v1/jobs/{j['id']}").json()["description"] == j["description"]
    assert viewer.get(f"/api/v1/servers/{s['id']}").json()["description"] == s["description"]
    assert viewer.get("/api/v1/auth/me").json()["user"]["role"] == "viewer"


# ---------------------------------------------------------------- operator


def test_operator_manages_jobs(operator: Client, fixture_objects: dict) -> None:
    s = fixture_objects["server"]
    created = operator.post("/api/v1/jobs", json=job_body([s["id"]]))
    assert created.status_code == 201, created.text
    jid = created.json()["id"]
    r = operator.patch(f"/api/v1/jobs/{jid}", json={"description": "by operator"})
    assert r.status_code == 200 and r.json()["description"] == "by operator"
    # also jobs made by someone else
    other = fixture_objects["job"]
    r = operator.patch(f"/api/v1/jobs/{other['id']}", json={"tags": ["op-edited"]})
    assert r.status_code == 200 and r.json()["tags"] == ["op-edited"]
    assert operator.delete(f"/api/v1/jobs/{jid}").status_code == 204
    assert_problem(operator.get(f"/api/v1/jobs/{jid}"), 404)


def test_operator_may_not_manage_servers_or_users(operator: Client, fixture_objects: dict) -> None:
    s, u = fixture_objects["server"], fixture_objects["user"]
    assert operator.get(f"/api/v1/servers/{s['id']}").status_code == 200
    assert_problem(operator.post("/api/v1/servers", json=server_body()), 403)
    assert_problem(operator.patch(f"/api/v1/servers/{s['id']}", json={"port": 2222}), 403)
    assert_problem(operator.patch(f"/api/v1/servers/{s['id']}", json={"host_key": None}), 403)
    assert_problem(operator.delete(f"/api/v1/servers/{s['id']}"), 403)
    assert_problem(operator.post("/api/v1/users",
                                 json={"username": unique("o"), "password": strong_password(), "role": "viewer"}), 403)
    assert_problem(operator.get("/api/v1/users"), 403)
    assert_problem(operator.patch(f"/api/v1/users/{u['id']}", json={"disabled": True}), 403)
    assert_problem(operator.delete(f"/api/v1/users/{u['id']}"), 403)
    assert operator.get(f"/api/v1/servers/{s['id']}").json()["port"] == s["port"]


# ---------------------------------------------------------------- admin


def test_admin_may_do_everything(role_clients: dict[str, Client]) -> None:
    a = role_clients["admin"]
    s = a.ok("POST", "/api/v1/servers", json=server_body())
    a.ok("PATCH", f"/api/v1/servers/{s['id']}", json={"description": "admin"})
    j = a.ok("POST", "/api/v1/jobs", json=job_body([s["id"]]))
    a.ok("PATCH", f"/api/v1/jobs/{j['id']}", json={"enabled": False})
    u = a.ok("POST", "/api/v1/users", json={"username": unique("a"), "password": strong_password(), "role": "operator"})
    a.ok("GET", f"/api/v1/users/{u['id']}")
    a.ok("PATCH", f"/api/v1/users/{u['id']}", json={"role": "viewer"})
    assert any(x["id"] == u["id"] for x in a.list_all("/api/v1/users"))
    a.ok("DELETE", f"/api/v1/users/{u['id']}")
    a.ok("DELETE", f"/api/v1/jobs/{j['id']}")
    a.ok("DELETE", f"/api/v1/servers/{s['id']}")


# ---------------------------------------------------------------- anonymous

ANON_401 = [
    ("GET", "/api/v1/auth/me", None),
    ("POST", "/api/v1/auth/logout", None),
    ("GET", "/api/v1/tokens", None),
    ("POST", "/api/v1/tokens", {"name": "x"}),
    ("DELETE", "/api/v1/tokens/1", None),
    ("GET", "/api/v1/users", None),
    ("POST", "/api/v1/users", {"username": "anon-user", "password": "0123456789ab", "role": "admin"}),
    ("GET", "/api/v1/users/1", None),
    ("PATCH", "/api/v1/users/1", {"role": "viewer"}),
    ("DELETE", "/api/v1/users/1", None),
    ("GET", "/api/v1/servers", None),
    ("GET", "/api/v1/servers?tag=x&q=y&limit=5", None),
    ("POST", "/api/v1/servers", {"name": "anon", "host": "h", "username": "u", "auth_method": "password",
                                 "password": "p"}),
    ("GET", "/api/v1/servers/1", None),
    ("PATCH", "/api/v1/servers/1", {"description": "x"}),
    ("DELETE", "/api/v1/servers/1", None),
    ("GET", "/api/v1/jobs", None),
    ("POST", "/api/v1/jobs", {"name": "anon", "script": "true", "server_ids": [1]}),
    ("GET", "/api/v1/jobs/1", None),
    ("PATCH", "/api/v1/jobs/1", {"description": "x"}),
    ("DELETE", "/api/v1/jobs/1", None),
    ("POST", "/api/v1/jobs/1/run", None),
]


@pytest.mark.parametrize("method, path, body", ANON_401, ids=[f"{m} {p}" for m, p, _ in ANON_401])
def test_anonymous_is_401(anon: Client, method: str, path: str, body: Any) -> None:
    kw = {"json": body} if body is not None else {}
    assert_problem(anon.request(method, path, **kw), 401)


@pytest.mark.parametrize("path", ["/api/health", "/api/openapi.json"])
def test_public_endpoints_need_no_caller(anon: Client, path: str) -> None:
    assert anon.get(path).status_code == 200
