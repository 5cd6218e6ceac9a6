# SPDX-License-Identifier: Apache-2.0
"""Sign-in, sessions, CSRF and API tokens.

Failed logins made here: 2 (wrong password for a fresh user, unknown user).
"""
from __future__ import annotations

from typing import Any, Callable

from helpers import Client, assert_problem, session_cookie_value, set_cookie_lines, unique


def _cookie_attributes(r) -> list[str]:
    for line in set_cookie_lines(r):
        if line.split("=", 1)[0].strip() == "tsubame_session":
            return [a.strip() for a in line.split(";")[1:]]
    raise AssertionError(f"no tsubame_session cookie in {set_cookie_lines(r)}")


def test_login_sets_a_strict_http_only_cookie(create_user: Callable[..., dict]) -> None:
    u = create_user("viewer")
    c = Client()
    r = c.login(u["username"], u["password"])
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["user"]["username"] == u["username"]
    assert body["user"]["role"] == "viewer"
    assert body["user"]["id"] == u["id"]
    assert body["user"]["disabled"] is False and body["user"]["created_at"] == u["created_at"]
    assert isinstance(body["csrf_token"], str) and len(body["csrf_token"]) >= 16
    assert u["password"] not in r.text
    attrs = {a.split("=", 1)[0].lower(): (a.split("=", 1)[1] if "=" in a else "") for a in _cookie_attributes(r)}
    assert "httponly" in attrs, attrs
    assert attrs.get("samesite", "").lower() == "strict", attrs
    assert attrs.get("path") == "/", attrs
    value = session_cookie_value(r)
    assert value and len(value) >= 32, "session cookie should carry a long random value"
    assert body["csrf_token"] != value, "the CSRF token must not be the session cookie"


def test_wrong_password_and_unknown_user_answer_the_same(create_user: Callable[..., dict]) -> None:
    u = create_user("viewer")
    wrong = Client().post("/api/v1/auth/login", json={"username": u["username"], "password": "not-the-password"})
    unknown = Client().post("/api/v1/auth/login", json={"username": unique("nobody"), "password": "whatever-1234"})
    p1, p2 = assert_problem(wrong, 401), assert_problem(unknown, 401)
    assert (p1["type"], p1["title"], p1.get("detail")) == (p2["type"], p2["title"], p2.get("detail"))
    assert not session_cookie_value(wrong) and not session_cookie_value(unknown)


def test_me_with_session_and_with_token(admin: Client, admin_token: Client,
                                        admin_credentials: tuple[str, str]) -> None:
    r = admin.get("/api/v1/auth/me")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["username"] == admin_credentials[0]
    assert body["user"]["role"] == "admin"
    assert body["csrf_token"] == admin.csrf
    r = admin_token.get("/api/v1/auth/me")
    assert r.status_code == 200, r.text
    assert r.json()["user"]["username"] == admin_credentials[0]


def test_me_without_credentials_is_401(anon: Client) -> None:
    assert_problem(anon.get("/api/v1/auth/me"), 401)


def test_garbage_credentials_are_401(anon: Client) -> None:
    assert_problem(Client(token="not-a-real-token").get("/api/v1/auth/me"), 401)
    assert_problem(Client(cookie="not-a-real-session").get("/api/v1/auth/me"), 401)
    assert_problem(anon.get("/api/v1/auth/me", headers={"Authorization": "Bearer"}), 401)
    assert_problem(anon.get("/api/v1/auth/me", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}), 401)


def test_logout_revokes_the_session(create_user: Callable[..., dict], login) -> None:
    u = create_user("operator")
    c = login(u["username"], u["password"])
    other = login(u["username"], u["password"])  # a second session of the same user
    old_cookie, old_csrf = c.cookie, c.csrf
    assert c.get("/api/v1/auth/me").status_code == 200
    r = c.post("/api/v1/auth/logout")
    assert r.status_code == 204, r.text
    assert_problem(c.get("/api/v1/auth/me"), 401)
    replay = Client(cookie=old_cookie, csrf=old_csrf)
    assert_problem(replay.get("/api/v1/servers"), 401)
    assert_problem(replay.post("/api/v1/tokens", json={"name": unique("x")}), 401)
    assert_problem(replay.post("/api/v1/auth/logout"), 401)
    # only that session ended
    assert other.get("/api/v1/auth/me").status_code == 200


def test_logout_without_credentials_is_401(anon: Client) -> None:
    assert_problem(anon.post("/api/v1/auth/logout"), 401)


def test_logout_with_cookie_needs_csrf(create_user: Callable[..., dict], login) -> None:
    u = create_user("viewer")
    c = login(u["username"], u["password"])
    assert_problem(c.post("/api/v1/auth/logout", headers={"X-CSRF-Token": None}), 403)
    assert c.get("/api/v1/auth/me").status_code == 200


def test_cookie_writes_need_the_csrf_header(operator: Client, admin: Client) -> None:
    for c in (operator, admin):
        r = c.post("/api/v1/tokens", json={"name": unique("csrf")}, headers={"X-CSRF-Token": None})
        assert_problem(r, 403)
        r = c.post("/api/v1/tokens", json={"name": unique("csrf")}, headers={"X-CSRF-Token": "wrong-" + c.csrf})
        assert_problem(r, 403)
        r = c.post("/api/v1/tokens", json={"name": unique("csrf")}, headers={"X-CSRF-Token": ""})
        assert_problem(r, 403)
        created = c.post("/api/v1/tokens", json={"name": unique("csrf")})
        assert created.status_code == 201, created.text
        tid = created.json()["id"]
        assert_problem(c.delete(f"/api/v1/tokens/{tid}", headers={"X-CSRF-Token": None}), 403)
        assert c.delete(f"/api/v1/tokens/{tid}").status_code == 204


def test_csrf_token_of_another_session_is_refused(create_user: Callable[..., dict], login) -> None:
    u = create_user("operator")
    a, b = login(u["username"], u["password"]), login(u["username"], u["password"])
    assert a.csrf != b.csrf
    r = a.post("/api/v1/tokens", json={"name": unique("x")}, headers={"X-CSRF-Token": b.csrf})
    assert_problem(r, 403)


def test_csrf_checked_on_patch_and_delete(admin: Client, make_server) -> None:
    s = make_server()
    r = admin.patch(f"/api/v1/servers/{s['id']}", json={"description": "x"}, headers={"X-CSRF-Token": None})
    assert_problem(r, 403)
    r = admin.delete(f"/api/v1/servers/{s['id']}", headers={"X-CSRF-Token": None})
    assert_problem(r, 403)
    assert admin.get(f"/api/v1/servers/{s['id']}").json()["description"] == ""


def test_bearer_writes_need_no_csrf(admin: Client) -> None:
    created = admin.ok("POST", "/api/v1/tokens", json={"name": unique("bearer")})
    c = Client(token=created["token"])
    assert "X-CSRF-Token" not in c.http.headers and "Cookie" not in c.http.headers
    r = c.post("/api/v1/tokens", json={"name": unique("from-bearer")})
    assert r.status_code == 201, r.text
    assert c.delete(f"/api/v1/tokens/{r.json()['id']}").status_code == 204


def test_token_is_shown_once(operator: Client) -> None:
    name = unique("once")
    r = operator.post("/api/v1/tokens", json={"name": name})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    secret = created["token"]
    assert isinstance(secret, str) and len(secret) >= 32
    assert created["name"] == name
    assert created["user_id"] == operator.user["id"]
    assert created["username"] == operator.user["username"]
    assert created["last_used_at"] is None
    assert isinstance(created["created_at"], str)
    # it works
    me = Client(token=secret).get("/api/v1/auth/me")
    assert me.status_code == 200 and me.json()["user"]["id"] == operator.user["id"]
    # and is never shown again
    listing = operator.get("/api/v1/tokens", params={"limit": 200})
    assert listing.status_code == 200
    assert secret not in listing.text
    items = operator.list_all("/api/v1/tokens")
    mine = [t for t in items if t["id"] == created["id"]]
    assert len(mine) == 1 and mine[0]["name"] == name
    assert all("token" not in t for t in items)
    assert set(mine[0]) >= {"id", "name", "user_id", "username", "created_at", "last_used_at"}


def test_tokens_listing_is_own_for_users_all_for_admins(viewer: Client, operator: Client, admin: Client) -> None:
    vt = viewer.ok("POST", "/api/v1/tokens", json={"name": unique("v")})
    ot = operator.ok("POST", "/api/v1/tokens", json={"name": unique("o")})
    viewer_ids = {t["id"] for t in viewer.list_all("/api/v1/tokens")}
    assert vt["id"] in viewer_ids and ot["id"] not in viewer_ids
    assert all(t["user_id"] == viewer.user["id"] for t in viewer.list_all("/api/v1/tokens"))
    admin_ids = {t["id"] for t in admin.list_all("/api/v1/tokens")}
    assert {vt["id"], ot["id"]} <= admin_ids
    # someone else's token is "no such thing" to a non-admin
    assert_problem(viewer.delete(f"/api/v1/tokens/{ot['id']}"), 404)
    assert Client(token=ot["token"]).get("/api/v1/auth/me").status_code == 200
    # admins may revoke the tokens of others
    assert admin.delete(f"/api/v1/tokens/{ot['id']}").status_code == 204
    assert_problem(Client(token=ot["token"]).get("/api/v1/auth/me"), 401)


def test_deleted_token_is_401(admin: Client) -> None:
    created = admin.ok("POST", "/api/v1/tokens", json={"name": unique("gone")})
    c = Client(token=created["token"])
    assert c.get("/api/v1/servers").status_code == 200
    assert admin.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    assert_problem(c.get("/api/v1/servers"), 401)
    assert_problem(c.get("/api/v1/auth/me"), 401)
    assert_problem(admin.delete(f"/api/v1/tokens/{created['id']}"), 404)


def test_token_last_used_at_is_a_time_or_null(admin: Client) -> None:
    created = admin.ok("POST", "/api/v1/tokens", json={"name": unique("used")})
    Client(token=created["token"]).get("/api/v1/auth/me")
    listed = [t for t in admin.list_all("/api/v1/tokens") if t["id"] == created["id"]][0]
    assert listed["last_used_at"] is None or isinstance(listed["last_used_at"], str)
