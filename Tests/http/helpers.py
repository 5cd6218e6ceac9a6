# SPDX-License-Identifier: Apache-2.0
"""Client and assertion helpers shared by the HTTP tests (imported by conftest and the tests)."""
from __future__ import annotations

import http.cookiejar
import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
OPENAPI_FILE = REPO_ROOT / "Sources" / "TsubameHTTP" / "Resources" / "openapi.json"
SESSION_COOKIE = "tsubame_session"
TIMEOUT = 30
MISSING = object()
BASE_URL = os.environ.get("TSUBAME_TEST_BASE_URL", "").rstrip("/")


# --------------------------------------------------------------------------- client


class Client:
    """A thin wrapper over requests.Session bound to the base URL.

    Cookies are handled by hand (the session cookie may carry `Secure`, which a
    cookie jar would refuse to send over plain HTTP), so `cookie` is exactly
    what the last login set, and the CSRF header is sent on every request once
    known.
    """

    def __init__(self, base_url: str = "", *, token: str | None = None,
                 cookie: str | None = None, csrf: str | None = None) -> None:
        self.base_url = base_url or BASE_URL
        self.http = requests.Session()
        self.http.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self.token: str | None = None
        self.cookie: str | None = None
        self.csrf: str | None = None
        self.user: dict[str, Any] | None = None
        if token:
            self.set_token(token)
        if cookie:
            self.set_cookie(cookie)
        if csrf:
            self.set_csrf(csrf)

    # auth state -----------------------------------------------------------
    def set_token(self, token: str) -> None:
        self.token = token
        self.http.headers["Authorization"] = f"Bearer {token}"

    def set_cookie(self, cookie: str) -> None:
        self.cookie = cookie
        self.http.headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"

    def set_csrf(self, csrf: str) -> None:
        self.csrf = csrf
        self.http.headers["X-CSRF-Token"] = csrf

    def login(self, username: str, password: str) -> requests.Response:
        r = self.post("/api/v1/auth/login", json={"username": username, "password": password})
        if r.status_code == 200:
            cookie = session_cookie_value(r)
            assert cookie, f"login answered 200 without a {SESSION_COOKIE} cookie: {r.headers}"
            self.set_cookie(cookie)
            body = r.json()
            self.set_csrf(body["csrf_token"])
            self.user = body["user"]
        return r

    # requests ---------------------------------------------------------------
    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.base_url + path

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("allow_redirects", False)
        return self.http.request(method, self.url(path), **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = MISSING, **kw: Any) -> requests.Response:
        if json is not MISSING:
            kw["json"] = json
        return self.request("POST", path, **kw)

    def patch(self, path: str, json: Any = MISSING, **kw: Any) -> requests.Response:
        if json is not MISSING:
            kw["json"] = json
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    # helpers that must succeed ---------------------------------------------
    def ok(self, method: str, path: str, status: int | None = None, **kw: Any) -> Any:
        r = self.request(method, path, **kw)
        want = status or {"POST": 201, "DELETE": 204}.get(method, 200)
        assert r.status_code == want, f"{method} {path}: want {want}, got {r.status_code}: {r.text[:800]}"
        return r.json() if r.content else None

    def list_all(self, path: str, params: dict[str, Any] | None = None, limit: int = 200) -> list[dict]:
        """Every item of a keyset-paginated list."""
        items: list[dict] = []
        params = dict(params or {}, limit=limit)
        for _ in range(1000):
            page = self.ok("GET", path, params=params)
            items.extend(page["items"])
            if page["next_cursor"] is None:
                return items
            params["cursor"] = page["next_cursor"]
        raise AssertionError(f"{path}: pagination did not end")


def session_cookie_value(r: requests.Response) -> str | None:
    for line in set_cookie_lines(r):
        name, _, rest = line.partition("=")
        if name.strip() == SESSION_COOKIE:
            return rest.split(";", 1)[0].strip()
    return None


def set_cookie_lines(r: requests.Response) -> list[str]:
    raw = getattr(r.raw, "headers", None)
    if raw is not None and hasattr(raw, "getlist"):
        return list(raw.getlist("Set-Cookie"))
    value = r.headers.get("Set-Cookie")
    return [value] if value else []


def assert_problem(r: requests.Response, status: int | set[int] | tuple[int, ...]) -> dict[str, Any]:
    """The response is an RFC 9457 problem with the expected status."""
    wanted = {status} if isinstance(status, int) else set(status)
    where = f"{r.request.method} {r.request.url}"
    assert r.status_code in wanted, f"{where}: want {sorted(wanted)}, got {r.status_code}: {r.text[:800]}"
    ctype = r.headers.get("Content-Type", "")
    assert ctype.startswith("application/problem+json"), f"{where}: Content-Type {ctype!r}: {r.text[:300]}"
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"{where}: problem body is not JSON: {r.text[:300]!r}")
    assert isinstance(body, dict), f"{where}: problem body is not an object: {body!r}"
    assert body.get("status") == r.status_code, f"{where}: problem status {body.get('status')!r}"
    assert isinstance(body.get("title"), str) and body["title"], f"{where}: problem without title: {body}"
    assert isinstance(body.get("type"), str), f"{where}: problem without type: {body}"
    if "errors" in body:
        assert isinstance(body["errors"], list), body
        for e in body["errors"]:
            assert isinstance(e.get("field"), str) and isinstance(e.get("message"), str), body
    return body


def error_fields(problem: dict[str, Any]) -> list[str]:
    return [e.get("field") for e in problem.get("errors") or []]


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def strong_password() -> str:
    return "pw-" + uuid.uuid4().hex


def server_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": unique("srv"),
        "host": "127.0.0.1",
        "port": 22,
        "username": "tsubame",
        "auth_method": "password",
        "password": "secret-" + uuid.uuid4().hex,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not MISSING}


def job_body(server_ids: list[int], **overrides: Any) -> dict[str, Any]:
    body = {"name": unique("job"), "script": "echo hello\n", "server_ids": server_ids}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not MISSING}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_time(value: str) -> datetime:
    """An RFC 3339 time as an aware datetime (any number of fractional digits)."""
    m = _RFC3339.match(value)
    assert m, f"not an RFC 3339 time: {value!r}"
    y, mo, d, h, mi, s, frac, tz = m.groups()
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    if tz in ("Z", "z"):
        tzinfo = timezone.utc
    else:
        sign = 1 if tz[0] == "+" else -1
        tzinfo = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=tzinfo)
