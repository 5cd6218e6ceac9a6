# SPDX-License-Identifier: Apache-2.0
"""Browser tests of the web UI: Playwright for Python driving Debian's Chromium (/usr/bin/chromium).

They run against the stack scripts/test starts (after the HTTP tests), with the
same environment (TSUBAME_TEST_*; see Tests/http/conftest.py and executor.py).
The client and executor helpers of Tests/http are reused.

Running jobs needs a real tsubame-executor: the `executor` fixture starts one
(like Tests/http/test_11_runs.py) against the loopback SSH fleet only. Before
it starts, every unfinished execution left by earlier steps is cancelled (the
HTTP suite's schemathesis queues runs on servers with invented hosts) and the
queue is asserted empty; every server the browser tests create is on
127.0.0.1; afterwards every claimed target is asserted to have been on
127.0.0.1 and no executor is left running.

Selectors go by role and label (what a screen-reader user meets); waits are
for conditions (Playwright's expect), never fixed sleeps.
"""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

HTTP_TESTS = Path(__file__).resolve().parents[1] / "http"
sys.path.insert(0, str(HTTP_TESTS))

from executor import (PIDFILE, ExecutorProcess, Fleet, drain_foreign_work, executors_on, log_tail,  # noqa: E402
                      pidfile_alive, psql)
from helpers import BASE_URL, Client, unique  # noqa: E402

CHROMIUM = os.environ.get("TSUBAME_TEST_CHROMIUM", "/usr/bin/chromium")
LOOPBACK = "127.0.0.1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if not BASE_URL:
        reason = "TSUBAME_TEST_BASE_URL is not set: the browser tests need a running stack; run them through scripts/test"
    elif not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM} (Debian package chromium; or set TSUBAME_TEST_CHROMIUM)"
    if reason:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))


# --------------------------------------------------------------------------- stack


@pytest.fixture(scope="session")
def base_url() -> str:
    return BASE_URL


@pytest.fixture(scope="session")
def admin_credentials() -> tuple[str, str]:
    password = os.environ.get("TSUBAME_TEST_ADMIN_PASSWORD", "")
    if not password:
        pytest.fail("TSUBAME_TEST_ADMIN_PASSWORD is not set")
    return os.environ.get("TSUBAME_TEST_ADMIN_USER", "admin"), password


@pytest.fixture(scope="session")
def api(admin_credentials: tuple[str, str]) -> Client:
    """The admin through the API with a token (set-up and checks beside the browser)."""
    c = Client()
    r = c.login(*admin_credentials)
    assert r.status_code == 200, r.text[:300]
    token = c.ok("POST", "/api/v1/tokens", json={"name": unique("browser-suite")})["token"]
    return Client(token=token)


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    f = Fleet()
    if not f.ports or not f.password:
        pytest.skip("no SSH test fleet (TSUBAME_TEST_SSH_PORTS; scripts/test starts one when run as root)")
    assert f.host == LOOPBACK, f"TSUBAME_TEST_SSH_HOST is {f.host!r}: jobs may only run on {LOOPBACK}"
    assert f.shared.is_dir(), f"{f.shared} is missing"
    return f


class Made:
    """Servers and jobs made by the browser tests (through the API or the UI, registered here); removed at the end."""

    def __init__(self, api: Client, fleet: Fleet) -> None:
        self.api, self.fleet = api, fleet
        self.servers: list[int] = []
        self.jobs: list[int] = []

    def server(self, **fields: Any) -> dict:
        body = {"name": unique("ui-srv"), "host": LOOPBACK, "port": self.fleet.ports[0], "username": self.fleet.user,
                "auth_method": "password", "password": self.fleet.password}
        body.update(fields)
        assert body["host"] == LOOPBACK, body
        s = self.api.ok("POST", "/api/v1/servers", json=body)
        self.servers.append(s["id"])
        return s

    def job(self, server_ids: list[int], script: str, **fields: Any) -> dict:
        j = self.api.ok("POST", "/api/v1/jobs", json={"name": unique("ui-job"), "script": script,
                                                       "server_ids": server_ids, **fields})
        self.jobs.append(j["id"])
        return j

    def cleanup(self) -> None:
        for jid in reversed(self.jobs):
            self.api.delete(f"/api/v1/jobs/{jid}")
        for sid in reversed(self.servers):
            self.api.delete(f"/api/v1/servers/{sid}")


@pytest.fixture(scope="session")
def made(api: Client, fleet: Fleet) -> Iterator[Made]:
    m = Made(api, fleet)
    yield m
    m.cleanup()


@pytest.fixture(scope="session")
def executor(api: Client, fleet: Fleet, made: Made) -> Iterator[ExecutorProcess]:
    """One tsubame-executor for the tests that run jobs (on the loopback fleet only)."""
    assert PIDFILE, "TSUBAME_TEST_EXECUTOR_PIDFILE is not set"
    other = pidfile_alive(PIDFILE) or executors_on()
    assert not other, f"an executor (pid {other}) is already running on this database: the browser tests start their own"
    drain_foreign_work(api)
    ex = ExecutorProcess(f"browser-{uuid.uuid4().hex[:6]}", PIDFILE)
    ex.start()
    try:
        yield ex
    finally:
        problems = []
        try:
            rc = ex.stop()
            if rc not in (0, None):
                problems.append(f"executor exited with {rc}:\n{log_tail()}")
        except AssertionError as e:
            problems.append(str(e))
        if executors_on():
            problems.append(f"executors still running: {executors_on()}")
        # Every target this executor claimed was on the loopback fleet (the servers still exist: `made`
        # is cleaned up after this fixture).
        hosts = psql("""
            SELECT DISTINCT coalesce(s.host, '(server deleted)') FROM execution_targets t
            LEFT JOIN servers s ON s.id = t.server_id WHERE t.executor_id = :'id'
            """, id=ex.id)
        foreign = {h[0] for h in hosts} - {LOOPBACK}
        assert not foreign, f"targets on other hosts were claimed: {foreign}"
        assert not problems, problems


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15000)

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Watch:
    """What a page did that it must not: dialogs (alert/confirm from injected script), uncaught errors, CSP violations."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("console", self._console)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, msg: Any) -> None:
        text = msg.text
        if msg.type == "error" and ("Content Security Policy" in text or "TrustedHTML" in text or "Trusted Type" in text):
            self.errors.append(f"csp: {text}")


def new_page(browser: Any, base_url: str, **context_args: Any) -> tuple[Any, Any, Watch]:
    ctx = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900}, color_scheme="light",
                              **context_args)
    ctx.set_default_timeout(15000)
    page = ctx.new_page()
    return ctx, page, Watch(page)


def sign_in(page: Any, username: str, password: str) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="Sign in to tsubame-ci")).to_be_visible()
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


@pytest.fixture(scope="session")
def admin_page(browser: Any, base_url: str, admin_credentials: tuple[str, str]) -> Iterator[tuple[Any, Watch]]:
    """One signed-in admin tab shared by the tests (each navigates where it needs)."""
    ctx, page, watch = new_page(browser, base_url)
    page.goto("/")
    sign_in(page, *admin_credentials)
    yield page, watch
    ctx.close()


@pytest.fixture()
def page(admin_page: tuple[Any, Watch]) -> Iterator[Any]:
    """The admin tab; fails the test on a dialog, an uncaught error or a CSP violation during it."""
    p, watch = admin_page
    watch.dialogs.clear()
    watch.errors.clear()
    yield p
    assert not watch.dialogs, f"a dialog fired: {watch.dialogs}"
    assert not watch.errors, watch.errors


def goto(page: Any, route: str) -> None:
    """Client-side navigation to a hash route (#/jobs/3), as a link click does."""
    page.goto(f"/#{route}")
