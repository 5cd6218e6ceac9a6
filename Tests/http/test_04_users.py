# SPDX-License-Identifier: Apache-2.0
"""User management (admin).

Failed logins made here: 2 (a disabled user, an old password), each for a fresh user.
"""
from __future__ import annotations

from typing import Callable

import pytest

from helpers import Client, assert_problem, error_fields, parse_time, strong_password, unique

USER_FIELDS = {"id", "username", "role", "disabled", "created_at", "updated_at"}


def test_user_crud(admin: Client) -> None:
    name, password = unique("crud"), strong_password()
    r = admin.post("/api/v1/users", json={"username": name, "password": password, "role": "operator"})
    assert r.status_code == 201, r.text
    assert password not in r.text
    u = r.json()
    assert USER_FIELDS <= set(u)
    assert "password" not in u and "password_hash" not in u
    assert (u["username"], u["role"], u["disabled"]) == (name, "operator", False)
    assert isinstance(u["id"], int) and u["id"] >= 1

    got = admin.ok("GET", f"/api/v1/users/{u['id']}")
    assert got == u
    assert any(x["id"] == u["id"] for x in admin.list_all("/api/v1/users"))

    patched = admin.ok("PATCH", f"/api/v1/users/{u['id']}", json={"role": "viewer"})
    assert patched["role"] == "viewer" and patched["username"] == name and patched["disabled"] is False
    assert patched["created_at"] == u["created_at"]
    assert parse_time(patched["updated_at"]) >= parse_time(u["updated_at"])
    # an empty PATCH changes nothing
    same = admin.ok("PATCH", f"/api/v1/users/{u['id']}", json={})
    assert same["role"] == "viewer"

    assert admin.delete(f"/api/v1/users/{u['id']}").status_code == 204
    assert_problem(admin.get(f"/api/v1/users/{u['id']}"), 404)
    assert_problem(admin.delete(f"/api/v1/users/{u['id']}"), 404)
    assert_problem(admin.patch(f"/api/v1/users/{u['id']}", json={"role": "admin"}), 404)


def test_user_list_never_shows_passwords(admin: Client, create_user: Callable[..., dict]) -> None:
    u = create_user("viewer")
    r = admin.get("/api/v1/users", params={"limit": 200})
    assert r.status_code == 200
    assert u["password"] not in r.text
    for item in r.json()["items"]:
        assert USER_FIELDS <= set(item)
        assert not any("password" in k for k in item)


def test_duplicate_username_is_409(admin: Client, create_user: Callable[..., dict]) -> None:
    u = create_user("viewer")
    r = admin.post("/api/v1/users", json={"username": u["username"], "password": strong_password(), "role": "admin"})
    assert_problem(r, 409)


def test_short_password_is_422(admin: Client) -> None:
    r = admin.post("/api/v1/users", json={"username": unique("short"), "password": "123456789", "role": "viewer"})
    p = assert_problem(r, 422)
    assert "password" in error_fields(p), p
    # exactly 10 characters is enough
    r = admin.post("/api/v1/users", json={"username": unique("ten"), "password": "0123456789", "role": "viewer"})
    assert r.status_code == 201, r.text
    admin.delete(f"/api/v1/users/{r.json()['id']}")


def test_short_password_on_patch_is_422(admin: Client, create_user: Callable[..., dict]) -> None:
    u = create_user("viewer")
    p = assert_problem(admin.patch(f"/api/v1/users/{u['id']}", json={"password": "short"}), 422)
    assert "password" in error_fields(p), p


@pytest.mark.parametrize("body, field", [
    ({"username": "has space", "password": "long-enough-pw", "role": "viewer"}, "username"),
    ({"username": "", "password": "long-enough-pw", "role": "viewer"}, "username"),
    ({"username": "x" * 65, "password": "long-enough-pw", "role": "viewer"}, "username"),
    ({"username": "ok-name", "password": "long-enough-pw", "role": "root"}, "role"),
    ({"username": "ok-name", "password": "long-enough-pw"}, "role"),
    ({"password": "long-enough-pw", "role": "viewer"}, "username"),
    ({"username": "ok-name", "role": "viewer"}, "password"),
])
def test_invalid_user_is_422(admin: Client, body: dict, field: str) -> None:
    if body.get("username") == "ok-name":
        body = dict(body, username=unique("ok"))
    p = assert_problem(admin.post("/api/v1/users", json=body), 422)
    assert field in error_fields(p), p


def test_disabled_user_is_locked_out(admin: Client, create_user: Callable[..., dict], login) -> None:
    u = create_user("operator")
    session = login(u["username"], u["password"])
    token = Client(token=session.ok("POST", "/api/v1/tokens", json={"name": unique("t")})["token"])
    assert token.get("/api/v1/auth/me").status_code == 200

    patched = admin.ok("PATCH", f"/api/v1/users/{u['id']}", json={"disabled": True})
    assert patched["disabled"] is True

    assert_problem(Client().post("/api/v1/auth/login", json={"username": u["username"], "password": u["password"]}), 401)
    assert_problem(session.get("/api/v1/auth/me"), 401)
    assert_problem(session.get("/api/v1/servers"), 401)
    assert_problem(token.get("/api/v1/auth/me"), 401)
    assert_problem(token.post("/api/v1/tokens", json={"name": unique("t")}), 401)

    # enabled again: the token works again (or stays revoked), logging in works
    admin.ok("PATCH", f"/api/v1/users/{u['id']}", json={"disabled": False})
    again = login(u["username"], u["password"])
    assert again.get("/api/v1/auth/me").json()["user"]["id"] == u["id"]


def test_password_change(admin: Client, create_user: Callable[..., dict], login) -> None:
    u = create_user("viewer")
    new = strong_password()
    r = admin.patch(f"/api/v1/users/{u['id']}", json={"password": new})
    assert r.status_code == 200, r.text
    assert new not in r.text
    assert login(u["username"], new).user["id"] == u["id"]
    assert_problem(Client().post("/api/v1/auth/login", json={"username": u["username"], "password": u["password"]}), 401)


def test_role_change_takes_effect_on_existing_sessions(admin: Client, create_user: Callable[..., dict],
                                                       login) -> None:
    u = create_user("viewer")
    c = login(u["username"], u["password"])
    assert_problem(c.get("/api/v1/users"), 403)
    admin.ok("PATCH", f"/api/v1/users/{u['id']}", json={"role": "admin"})
    assert c.get("/api/v1/users").status_code == 200
    admin.ok("PATCH", f"/api/v1/users/{u['id']}", json={"role": "viewer"})
    assert_problem(c.get("/api/v1/users"), 403)


def test_deleted_user_sessions_end(admin: Client, create_user: Callable[..., dict], login) -> None:
    u = create_user("operator")
    c = login(u["username"], u["password"])
    t = Client(token=c.ok("POST", "/api/v1/tokens", json={"name": unique("t")})["token"])
    assert admin.delete(f"/api/v1/users/{u['id']}").status_code == 204
    assert_problem(c.get("/api/v1/auth/me"), 401)
    assert_problem(t.get("/api/v1/auth/me"), 401)
