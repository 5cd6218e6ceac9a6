# SPDX-License-Identifier: Apache-2.0
"""HTTP-level tests of tsubame-ci against a live stack (nginx -> pool -> PostgreSQL).

Environment (set by scripts/test):
  TSUBAME_TEST_BASE_URL        http://127.0.0.1:PORT of nginx (required; the suite is skipped without it)
  TSUBAME_TEST_ADMIN_USER      an existing admin account
  TSUBAME_TEST_ADMIN_PASSWORD  its password
  TSUBAME_TEST_DATABASE_URL    the database the stack uses (informational)
  TSUBAME_TEST_POOL_PIDFILE    pid file of the running tsubame-pool master (resilience tests)
  TSUBAME_TEST_BIN_DIR         directory with tsubame, tsubame-pool, tsubame-worker
  TSUBAME_TEST_WORK_DIR        scratch directory of the test run

Failed logins are throttled per user and per address (all tests come from
127.0.0.1). Only tests that need a failed login make one, always for a fresh
user, and the whole suite stays well below the per-address limit; the one
test that trips the per-user limit lives in test_90_throttle.py.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytest

from helpers import (
    BASE_URL,
    Client,
    job_body,
    server_body,
    strong_password,
    unique,
)


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "")
    return value if value else default


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BASE_URL:
        return
    skip = pytest.mark.skip(
        reason="TSUBAME_TEST_BASE_URL is not set: the HTTP suite needs a running stack "
        "(nginx + tsubame-pool + PostgreSQL); run it through scripts/test"
    )
    for item in items:
        # Modules marked no_stack (e.g. the deployment files' checks) need no stack.
        if item.get_closest_marker("no_stack") is None:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    return f"tsubame HTTP suite: base URL {BASE_URL or '(unset: everything is skipped)'}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def base_url() -> str:
    return BASE_URL


@pytest.fixture(scope="session")
def settings() -> dict[str, str | None]:
    return {
        "base_url": BASE_URL,
        "admin_user": _env("TSUBAME_TEST_ADMIN_USER", "admin"),
        "admin_password": _env("TSUBAME_TEST_ADMIN_PASSWORD"),
        "database_url": _env("TSUBAME_TEST_DATABASE_URL"),
        "pool_pidfile": _env("TSUBAME_TEST_POOL_PIDFILE"),
        "bin_dir": _env("TSUBAME_TEST_BIN_DIR"),
        "work_dir": _env("TSUBAME_TEST_WORK_DIR"),
    }


@pytest.fixture(scope="session")
def admin_credentials(settings: dict[str, str | None]) -> tuple[str, str]:
    user, password = settings["admin_user"], settings["admin_password"]
    if not password:
        pytest.fail("TSUBAME_TEST_ADMIN_PASSWORD is not set")
    return user, password  # type: ignore[return-value]


@pytest.fixture()
def anon() -> Client:
    """A client with no credentials."""
    return Client()


@pytest.fixture(scope="session")
def admin(admin_credentials: tuple[str, str]) -> Client:
    """The admin from the environment, signed in with a session cookie and CSRF header."""
    c = Client()
    r = c.login(*admin_credentials)
    assert r.status_code == 200, f"admin login failed: {r.status_code} {r.text[:500]}"
    assert c.user and c.user["role"] == "admin", c.user
    return c


@pytest.fixture(scope="session")
def admin_token(admin: Client) -> Client:
    """The admin, authenticated by an API token (Bearer, no cookie, no CSRF)."""
    created = admin.ok("POST", "/api/v1/tokens", json={"name": unique("suite-admin")})
    return Client(token=created["token"])


@pytest.fixture(scope="session")
def create_user(admin_token: Client) -> Callable[..., dict[str, Any]]:
    """create_user(role, username=None, password=None) -> user JSON plus "password"."""

    def make(role: str = "viewer", username: str | None = None, password: str | None = None) -> dict[str, Any]:
        password = password or strong_password()
        body = {"username": username or unique(role), "password": password, "role": role}
        user = admin_token.ok("POST", "/api/v1/users", json=body)
        user["password"] = password
        return user

    return make


@pytest.fixture(scope="session")
def login() -> Callable[[str, str], Client]:
    def do(username: str, password: str) -> Client:
        c = Client()
        r = c.login(username, password)
        assert r.status_code == 200, f"login of {username} failed: {r.status_code} {r.text[:500]}"
        return c

    return do


@pytest.fixture(scope="session")
def role_clients(create_user: Callable[..., dict], login: Callable[[str, str], Client],
                 admin: Client) -> dict[str, Client]:
    """One signed-in (cookie + CSRF) client per role; "admin" is a fresh admin too."""
    clients = {}
    for role in ("viewer", "operator", "admin"):
        u = create_user(role)
        clients[role] = login(u["username"], u["password"])
        assert clients[role].user["role"] == role
    return clients


@pytest.fixture(scope="session")
def viewer(role_clients: dict[str, Client]) -> Client:
    return role_clients["viewer"]


@pytest.fixture(scope="session")
def operator(role_clients: dict[str, Client]) -> Client:
    return role_clients["operator"]


@pytest.fixture()
def make_server(admin_token: Client) -> Iterator[Callable[..., dict[str, Any]]]:
    """make_server(**fields) -> created Server JSON; deleted again after the test."""
    created: list[int] = []

    def make(**overrides: Any) -> dict[str, Any]:
        s = admin_token.ok("POST", "/api/v1/servers", json=server_body(**overrides))
        created.append(s["id"])
        return s

    yield make
    for sid in reversed(created):
        admin_token.delete(f"/api/v1/servers/{sid}")


@pytest.fixture()
def make_job(admin_token: Client, make_server: Callable[..., dict]) -> Iterator[Callable[..., dict[str, Any]]]:
    """make_job(**fields) -> created Job JSON (on a fresh server unless server_ids given); cleaned up."""
    created: list[int] = []
    shared: list[int] = []

    def make(**overrides: Any) -> dict[str, Any]:
        if "server_ids" not in overrides:
            if not shared:
                shared.append(make_server()["id"])
            overrides["server_ids"] = list(shared)
        j = admin_token.ok("POST", "/api/v1/jobs", json=job_body(**overrides))
        created.append(j["id"])
        return j

    yield make
    for jid in reversed(created):
        admin_token.delete(f"/api/v1/jobs/{jid}")
