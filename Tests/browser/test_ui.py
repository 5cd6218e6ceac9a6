# SPDX-License-Identifier: Apache-2.0
"""The web UI in a real Chromium: sign in, servers, jobs, live logs, cancel, history, XSS, session expiry, sign out.

The tests share one signed-in admin tab and run in file order (a server made
early is used by the jobs later). See conftest.py for the executor and the
safety rules (only 127.0.0.1 fleet servers ever run anything).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import expect

from conftest import Fleet, Made, goto, new_page, sign_in
from executor import psql
from helpers import Client, strong_password, unique

XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_OUTPUT = "<script>alert(1)</script>"
FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}

shared: dict[str, Any] = {}


@pytest.fixture()
def fleet_server(made: Made) -> dict:
    """The fleet server added through the UI by the server test (or one made through the API when that did not run)."""
    if "server" not in shared:
        s = made.server(tags=["ui", "loopback"])
        shared["server"] = {"id": s["id"], "name": s["name"]}
    return shared["server"]


def wait_finished(api: Client, eid: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        e = api.ok("GET", f"/api/v1/executions/{eid}")
        if e["status"] in FINISHED:
            return e
        assert time.monotonic() < deadline, f"execution {eid} did not finish: {e}"
        time.sleep(0.1)


def execution_id(page: Any) -> int:
    m = re.search(r"#/executions/(\d+)$", page.url)
    assert m, page.url
    return int(m.group(1))


SHOWN_AT_END = """text => {
  const log = document.querySelector('.log');
  const last = log && log.lastElementChild;
  if (!last || last.textContent !== text) return false;
  const r = last.getBoundingClientRect(), box = document.querySelector('.log-scroll').getBoundingClientRect();
  return r.bottom <= box.bottom + 1 && r.top >= box.top - 1;
}"""


def expect_last_line_shown(page: Any, text: str) -> None:
    """The log's last line is `text` and the log box is scrolled so that it is in view."""
    page.wait_for_function(SHOWN_AT_END, arg=text, timeout=15000)


def status_badge(page: Any) -> Any:
    return page.locator('[data-ref="exe-status"]')


# --------------------------------------------------------------------------- sign-in, dashboard


def test_signed_in_admin_lands_on_the_dashboard(page: Any) -> None:
    goto(page, "/")
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()
    for label in ("Servers", "Jobs", "Running now", "Success rate (14 days)"):
        expect(page.get_by_role("link", name=re.compile(f"^{re.escape(label)} \\S"))).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("Executions per day"))).to_be_visible()
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Users")).to_be_visible()


# --------------------------------------------------------------------------- servers


def test_a_validation_error_is_shown_at_its_field(page: Any) -> None:
    goto(page, "/servers/new")
    page.get_by_label("Name", exact=True).fill(unique("ui-bad"))
    page.get_by_label("Host", exact=True).fill("127.0.0.1")
    page.get_by_label("Port", exact=True).fill("70000")
    page.get_by_label("Username", exact=True).fill("nobody")
    page.get_by_label("Password", exact=True).fill("never-used-password")
    page.get_by_role("button", name="Add server").click()
    port = page.get_by_label("Port", exact=True)
    expect(port).to_have_attribute("aria-invalid", "true")
    # The message sits in the port's own field and is its accessible description.
    message = page.locator(".field", has=port).locator(".field-error")
    expect(message).to_contain_text("65535")
    expect(port).to_have_accessible_description(re.compile("65535"))
    expect(port).to_be_focused()
    expect(page.get_by_label("Name", exact=True)).not_to_have_attribute("aria-invalid", "true")
    assert page.url.endswith("#/servers/new"), "the form stays open on a 422"


def test_add_a_server_and_test_its_connection(page: Any, fleet: Fleet, made: Made, api: Client) -> None:
    name = unique("ui-srv")
    goto(page, "/servers")
    page.get_by_role("link", name="Add server").first.click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Host", exact=True).fill("127.0.0.1")
    page.get_by_label("Port", exact=True).fill(str(fleet.ports[0]))
    page.get_by_label("Username", exact=True).fill(fleet.user)
    page.get_by_label("Password", exact=True).fill(fleet.password)
    page.get_by_label("Tags", exact=True).fill("ui, loopback")
    page.get_by_role("button", name="Add server").click()
    expect(page.get_by_role("heading", name=f"Edit {name}")).to_be_visible()
    sid = int(re.search(r"#/servers/(\d+)$", page.url).group(1))
    made.servers.append(sid)
    shared["server"] = {"id": sid, "name": name}
    assert api.ok("GET", f"/api/v1/servers/{sid}")["host"] == "127.0.0.1"

    page.get_by_role("button", name="Test connection").click()
    result = page.get_by_role("status").filter(has_text=f"Connected to {name}")
    expect(result).to_be_visible()
    expect(result).to_contain_text(re.compile(r"Latency\s*\d+ ms"))
    shown = result.locator(".fingerprint").inner_text()
    assert any(fp in shown for fp in fleet.host_fingerprints()), (shown, fleet.host_fingerprints())

    # The list shows it with its tags and the pinned key; the tag filter finds it.
    goto(page, "/servers?tag=loopback")
    row = page.get_by_role("row", name=re.compile(re.escape(name)))
    expect(row).to_be_visible()
    expect(row.get_by_role("button", name="Filter by tag ui")).to_be_visible()
    expect(row).to_contain_text("SHA256:")


def test_a_changed_host_key_is_a_warning_an_admin_can_resolve(page: Any, fleet_server: dict, fleet: Fleet,
                                                              api: Client) -> None:
    sid = fleet_server["id"]
    api.ok("POST", f"/api/v1/servers/{sid}/test", status=200)  # pins the fleet's key (when not pinned yet)
    psql("""UPDATE servers SET host_key_fingerprint = 'SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
            WHERE id = :sid AND host = '127.0.0.1'""", sid=sid)
    goto(page, f"/servers/{sid}")
    page.get_by_role("button", name="Test connection").click()
    warning = page.get_by_role("alert").filter(has_text="the host key has changed")
    expect(warning).to_be_visible()
    warning.get_by_role("button", name="Trust the new key").click()
    dialog = page.get_by_role("dialog", name="Trust the new host key?")
    expect(dialog).to_contain_text("intercepting")
    dialog.get_by_role("button", name="Trust the new key").click()
    expect(page.get_by_role("status").filter(has_text=f"Connected to {fleet_server['name']}")).to_be_visible()
    pinned = api.ok("GET", f"/api/v1/servers/{sid}")["host_key"]["fingerprint_sha256"]
    assert pinned in fleet.host_fingerprints()


# --------------------------------------------------------------------------- jobs and live logs


def test_create_a_job_run_it_and_watch_the_log_arrive_live(page: Any, fleet: Fleet, made: Made, api: Client,
                                                           executor: Any, fleet_server: dict) -> None:
    gate = fleet.gate()
    name = unique("ui-job")
    goto(page, "/jobs")
    page.get_by_role("link", name="New job").click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Script", exact=True).fill(
        "echo first line\n"
        "printf '\\033[31mred text\\033[0m\\n'\n"
        f"while [ ! -e {gate} ]; do sleep 0.05; done\n"
        "echo second line >&2\n"
        "echo last line\n")
    page.get_by_label("Filter by tag or name", exact=True).fill("loopback")
    page.get_by_role("checkbox", name=re.compile(f"^{re.escape(fleet_server['name'])}")).check()
    page.get_by_role("button", name="Create job").click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    jid = int(re.search(r"#/jobs/(\d+)$", page.url).group(1))
    made.jobs.append(jid)
    assert api.ok("GET", f"/api/v1/jobs/{jid}")["server_ids"] == [fleet_server["id"]]

    page.get_by_role("button", name="Run now").click()
    dialog = page.get_by_role("dialog", name=f"Run {name}")
    dialog.get_by_role("button", name="Run now").click()
    expect(page.get_by_role("heading", name=re.compile(rf"^{re.escape(name)} #\d+$"))).to_be_visible()
    eid = execution_id(page)
    page.evaluate("window.__sameDocument = true")

    log = page.get_by_role("log", name="Execution output")
    expect(log.get_by_text("first line", exact=True)).to_be_visible()
    expect(log.locator(".f1", has_text="red text")).to_be_visible()  # ANSI red, rendered as a class
    expect(status_badge(page)).to_have_text("Running")
    expect(log.get_by_text("second line")).to_have_count(0)

    gate.touch()
    try:
        expect(log.get_by_text("last line", exact=True)).to_be_visible()
        second = log.get_by_text("second line", exact=True)
        expect(second).to_have_class(re.compile(r"\be\b"))  # stderr is marked
        expect(status_badge(page)).to_have_text("Succeeded")
        expect(page.get_by_role("row", name=re.compile(re.escape(fleet_server["name"])))).to_contain_text("Succeeded")
        assert page.evaluate("window.__sameDocument") is True, "the log must arrive without a reload"
        assert "\x1b" not in log.inner_text()
    finally:
        gate.unlink(missing_ok=True)
    assert wait_finished(api, eid)["status"] == "succeeded"
    shared["job"] = {"id": jid, "name": name}


def test_the_cron_helper_shows_the_next_runs_and_explains_a_bad_expression(page: Any, fleet_server: dict) -> None:
    goto(page, "/jobs/new")
    page.get_by_label("Time zone", exact=True).fill("Asia/Tokyo")
    page.get_by_label("Cron expression", exact=True).fill("30 2 * * *")
    runs = page.get_by_role("list").filter(has_text="02:30")
    expect(runs.get_by_role("listitem")).to_have_count(5)
    expect(page.get_by_text("Next runs (Asia/Tokyo):")).to_be_visible()
    page.get_by_label("Cron expression", exact=True).fill("61 * * * *")
    expect(page.locator("#schedule-preview .field-error")).to_contain_text("schedule")
    expect(page.get_by_label("Cron expression", exact=True)).to_have_attribute("aria-invalid", "true")


def test_cancel_a_running_job(page: Any, made: Made, api: Client, executor: Any, fleet_server: dict) -> None:
    job = made.job([fleet_server["id"]], "echo started\nsleep 60\necho never\n", name=unique("ui-cancel"))
    e = api.ok("POST", f"/api/v1/jobs/{job['id']}/run", status=202)
    goto(page, f"/executions/{e['id']}")
    log = page.get_by_role("log", name="Execution output")
    expect(log.get_by_text("started", exact=True)).to_be_visible()
    expect(status_badge(page)).to_have_text("Running")
    page.get_by_role("button", name="Cancel execution").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel execution").click()
    expect(status_badge(page)).to_have_text("Cancelled")
    expect(page.get_by_role("button", name="Re-run", exact=True)).to_be_visible()
    assert wait_finished(api, e["id"])["status"] == "cancelled"
    shared["cancelled"] = {"job": job, "execution": e["id"]}


class HookReceiver:
    """A webhook receiver on 127.0.0.1 that answers 200 and keeps what it got."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_notifications_editor_sends_a_test_and_shows_the_log(page: Any, made: Made, api: Client, fleet_server: dict) -> None:
    hook = HookReceiver()
    secret = "ui-secret-" + unique("s")
    signed = lambda body, key: "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()  # noqa: E731
    try:
        job = made.job([fleet_server["id"]], "true\n", name=unique("ui-notify"))
        goto(page, f"/jobs/{job['id']}")
        log = page.get_by_role("region", name="Notifications")
        expect(log.get_by_text("This job sends no notifications.")).to_be_visible()
        page.get_by_role("button", name="Add notification").click()
        row = page.locator(".notify-row").last
        row.get_by_label("URL or e-mail address").fill(hook.url)
        row.get_by_label("started", exact=True).check()
        row.get_by_label("running longer than").check()
        row.get_by_label("Running long: times the median duration").fill("2.5")
        row.get_by_label("Signing secret").fill(secret)
        # Before saving: the test goes out with the typed secret.
        row.get_by_role("button", name="Send a test notification").click()
        expect(row.get_by_role("status")).to_have_text(f"Test sent to {hook.url} (HTTP 200).")
        headers, body = hook.posts[-1]
        assert headers["x-tsubame-event"] == "test" and headers["x-tsubame-signature"] == signed(body, secret)

        page.get_by_role("button", name="Save job").click()
        row = page.locator(".notify-row").last
        expect(row.get_by_text("set", exact=True)).to_be_visible()
        saved = api.ok("GET", f"/api/v1/jobs/{job['id']}")["notify"]
        assert saved == [{"on": ["started", "failed", "timed_out", "running_long"], "type": "webhook", "url": hook.url,
                          "factor": 2.5, "secret_set": True}], saved
        expect(page.get_by_text(secret)).to_have_count(0)
        # Saved: the stored secret signs the test (the browser never had it back).
        row.get_by_role("button", name="Send a test notification").click()
        expect(row.get_by_role("status")).to_have_text(f"Test sent to {hook.url} (HTTP 200).")
        assert len(hook.posts) == 2 and hook.posts[-1][0]["x-tsubame-signature"] == signed(hook.posts[-1][1], secret)

        log.get_by_role("button", name="Refresh the notifications").click()
        rows = log.get_by_role("row")
        expect(rows).to_have_count(3)  # the header and the two tests
        expect(rows.nth(1)).to_contain_text("test")
        expect(rows.nth(1)).to_contain_text("Sent")
        expect(rows.nth(1)).to_contain_text("HTTP 200")

        # A bad receiver is explained at its row, and nothing is sent.
        row.get_by_label("URL or e-mail address").fill("ftp://127.0.0.1/x")
        row.get_by_role("button", name="Send a test notification").click()
        expect(row.get_by_role("status")).to_contain_text("url: must be an http or https URL")
        assert len(hook.posts) == 2
    finally:
        hook.close()


def test_filter_the_history(page: Any) -> None:
    job, eid = shared["cancelled"]["job"], shared["cancelled"]["execution"]
    goto(page, "/executions")
    page.get_by_label("Job", exact=True).select_option(label=job["name"])
    page.get_by_label("Status", exact=True).select_option("cancelled")
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"status=cancelled"))
    rows = page.get_by_role("table").get_by_role("row")
    expect(rows).to_have_count(2)  # the header and the one cancelled run
    expect(page.get_by_role("link", name=f"Execution {eid} of {job['name']}")).to_be_visible()
    page.get_by_label("Status", exact=True).select_option("succeeded")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No execution matches these filters.")).to_be_visible()
    page.get_by_role("link", name="Clear the filters").click()
    expect(page.get_by_role("link", name=f"Execution {eid} of {job['name']}")).to_be_visible()


def test_the_audit_log_shows_who_did_what(page: Any, made: Made) -> None:
    server = made.server(name=unique("ui-audited"))
    goto(page, "/audit")
    expect(page.get_by_role("heading", name="Audit", level=1)).to_be_visible()
    table = page.get_by_role("table", name="Audit log")
    row = table.get_by_role("row").filter(has_text=f"server:{server['id']}").first
    expect(row).to_contain_text("server.create")
    expect(row).to_contain_text("admin")


def test_markup_in_names_and_output_is_shown_as_text(page: Any, made: Made, api: Client, executor: Any, fleet_server: dict) -> None:
    body = {"name": XSS_NAME, "description": "<b>bold?</b>", "server_ids": [fleet_server["id"]], "tags": ["xss"],
            "script": f"echo '{XSS_OUTPUT}'\necho '<img src=y onerror=alert(2)>' >&2\n"}
    r = api.post("/api/v1/jobs", json=body)
    if r.status_code == 409:  # a re-run against the same database
        r = api.post("/api/v1/jobs", json={**body, "name": f"{XSS_NAME} {unique()}"})
    assert r.status_code == 201, r.text
    job = r.json()
    made.jobs.append(job["id"])
    e = api.ok("POST", f"/api/v1/jobs/{job['id']}/run", status=202)
    assert wait_finished(api, e["id"])["status"] == "succeeded"

    goto(page, "/jobs?tag=xss")
    expect(page.get_by_role("link", name=job["name"], exact=True)).to_be_visible()
    expect(page.get_by_text("<b>bold?</b>", exact=True)).to_be_visible()
    goto(page, f"/executions/{e['id']}")
    log = page.get_by_role("log", name="Execution output")
    expect(log.get_by_text(XSS_OUTPUT, exact=True)).to_be_visible()
    expect(log.get_by_text("<img src=y onerror=alert(2)>", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name=f"{job['name']} #{e['id']}")).to_be_visible()
    goto(page, "/")
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()
    expect(page.locator("main .loading")).to_have_count(0)  # every panel loaded (the events long-poll never idles)
    assert page.locator('img[src="x"], img[src="y"], main script, main b').count() == 0
    # The page fixture fails the test if a dialog (alert) fired.


def test_a_big_log_opens_at_its_end_and_pages_back(page: Any, made: Made, api: Client, executor: Any, fleet_server: dict) -> None:
    job = made.job([fleet_server["id"]], "echo start\n", name=unique("ui-big"))
    e = api.ok("POST", f"/api/v1/jobs/{job['id']}/run", status=202)
    assert wait_finished(api, e["id"])["status"] == "succeeded"
    # 30 more chunks of 1,000 lines after the run (as test_12_live.py appends): 30,000 lines in all.
    psql("""
        BEGIN;
        INSERT INTO log_chunks (execution_id, seq, server_id, stream, data)
        SELECT :eid, x.last_seq + g, NULL, 'stdout',
               (SELECT string_agg(format('chunk %s line %s', g, i), E'\\n') || E'\\n' FROM generate_series(1, 1000) AS i)
        FROM generate_series(1, 30) AS g, (SELECT last_seq FROM executions WHERE id = :eid) AS x;
        UPDATE executions SET last_seq = last_seq + 30 WHERE id = :eid;
        COMMIT;
        """, eid=e["id"])
    goto(page, f"/executions/{e['id']}")
    log = page.get_by_role("log", name="Execution output")
    expect_last_line_shown(page, "chunk 30 line 1000")
    expect(log.locator(".ln")).to_have_count(5000)  # the DOM holds the last 5,000 lines, no more
    expect(log.get_by_text("chunk 26 line 1", exact=True)).to_have_count(1)
    expect(log.get_by_text("chunk 25 line 1000", exact=True)).to_have_count(0)
    expect(page.get_by_label("Follow output")).to_be_checked()

    page.get_by_role("button", name="Load earlier output").click()
    expect(log.get_by_text("chunk 25 line 1", exact=True)).to_have_count(1)  # 2,500 earlier lines came back
    expect(log.locator(".ln")).to_have_count(5000)  # and as many of the newest went
    expect(log.get_by_text("chunk 30 line 1000", exact=True)).to_have_count(0)
    expect(page.get_by_label("Follow output")).not_to_be_checked()
    page.get_by_role("button", name="Jump to the latest output").click()
    expect_last_line_shown(page, "chunk 30 line 1000")
    expect(page.get_by_label("Follow output")).to_be_checked()


# --------------------------------------------------------------------------- roles, session


def test_a_viewer_sees_no_write_actions(browser: Any, base_url: str, api: Client) -> None:
    password = strong_password()
    user = api.ok("POST", "/api/v1/users", json={"username": unique("ui-viewer"), "password": password, "role": "viewer"})
    ctx, page, watch = new_page(browser, base_url)
    try:
        page.goto("/#/jobs")
        sign_in(page, user["username"], password)
        expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
        expect(page.get_by_role("link", name="New job")).to_have_count(0)
        expect(page.get_by_role("button", name=re.compile("^Run"))).to_have_count(0)
        expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Users")).to_be_hidden()
        goto(page, "/users")
        expect(page.get_by_text("This page needs the admin role")).to_be_visible()
        assert not watch.dialogs and not watch.errors, (watch.dialogs, watch.errors)
    finally:
        ctx.close()


def test_an_expired_session_signs_in_again_and_returns(browser: Any, base_url: str, api: Client) -> None:
    password = strong_password()
    user = api.ok("POST", "/api/v1/users", json={"username": unique("ui-op"), "password": password, "role": "operator"})
    ctx, page, watch = new_page(browser, base_url)
    try:
        page.goto("/#/servers")  # a page without a long-poll: the next click is what meets the 401
        sign_in(page, user["username"], password)
        expect(page.get_by_role("heading", name="Servers", level=1)).to_be_visible()
        psql("DELETE FROM sessions WHERE user_id = :uid", uid=user["id"])  # expired / revoked server-side
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Executions").click()
        expect(page.get_by_role("heading", name="Sign in to tsubame-ci")).to_be_visible()
        expect(page.get_by_text("Your session has ended", exact=False).first).to_be_visible()
        sign_in(page, user["username"], password)
        expect(page.get_by_role("heading", name="Executions", level=1)).to_be_visible()
        assert page.url.endswith("#/executions"), page.url
        assert not watch.dialogs and not watch.errors, (watch.dialogs, watch.errors)
    finally:
        ctx.close()


def test_sign_out(browser: Any, base_url: str, admin_credentials: tuple[str, str]) -> None:
    ctx, page, watch = new_page(browser, base_url)
    try:
        page.goto("/#/servers")
        sign_in(page, *admin_credentials)
        expect(page.get_by_role("heading", name="Servers", level=1)).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in to tsubame-ci")).to_be_visible()
        status = page.evaluate("fetch('/api/v1/auth/me').then(r => r.status)")
        assert status == 401, "the session must be revoked server-side"
        page.reload()
        expect(page.get_by_role("heading", name="Sign in to tsubame-ci")).to_be_visible()
    finally:
        ctx.close()
