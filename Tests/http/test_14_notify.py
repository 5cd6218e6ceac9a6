# SPDX-License-Identifier: Apache-2.0
"""Notifications for real: a job's webhook, Slack and e-mail receivers, fed by tsubame-executor (and by the API's
"send test notification") over libcurl, against receivers this module runs on 127.0.0.1.

The receivers: an HTTP server (webhook and Slack payloads; a path can answer 500 first, or answer slowly) and
aiosmtpd SMTP sinks: a plain one on TSUBAME_TEST_SMTP_PORT (scripts/test points TSUBAME_SMTP_URL of the pool and of
executors at it) and, for one test, one that offers STARTTLS with a self-signed certificate made by openssl
(trusted through TSUBAME_SMTP_CA_FILE). Jobs run on the loopback SSH fleet only, as in test_11_runs.py: the module
starts its own executor (restarted with other settings by a few tests) after cancelling what earlier modules left
queued and dropping their pending notifications, and stops it at the end. Nothing connects anywhere but 127.0.0.1.

Timing: the executor retries a failed notification after 1 s, gives up after 2 attempts and lets a transfer take
3 s at most (TSUBAME_NOTIFY_RETRY_SECONDS, _MAX_ATTEMPTS, _TIMEOUT_SECONDS), so no test waits long.
"""
from __future__ import annotations

import email
import email.policy
import email.utils
import hashlib
import hmac
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from executor import (PIDFILE, ExecutorProcess, Fleet, drain_foreign_work, executors_on, log_tail, pidfile_alive, psql,
                      psql_value)
from helpers import BASE_URL, Client, assert_problem, error_fields, job_body, unique

LOOPBACK = "127.0.0.1"
FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}
SECRET = "whsec-" + uuid.uuid4().hex
SMTP_PORT = int(os.environ.get("TSUBAME_TEST_SMTP_PORT") or 0)
EXECUTOR_ENV = {"TSUBAME_NOTIFY_RETRY_SECONDS": "1", "TSUBAME_NOTIFY_MAX_ATTEMPTS": "2", "TSUBAME_NOTIFY_TIMEOUT_SECONDS": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}\nexecutor log:\n{log_tail()}")
        time.sleep(interval)


def signature(secret: str, body: bytes) -> str:
    """What a receiver computes to check X-Tsubame-Signature (README.md, "Notifications")."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -------------------------------------------------------------- receivers


class Receiver:
    """An HTTP server on 127.0.0.1 recording every POST; a path may be told to answer with other statuses first, or
    slowly."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.plans: dict[str, list[int]] = {}
        self.delays: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "body": body, "at": time.monotonic(),
                                              "headers": {k.lower(): v for k, v in self.headers.items()}})
                    plan = receiver.plans.get(self.path)
                    status = plan.pop(0) if plan else 200
                    delay = receiver.delays.get(self.path, 0)
                if delay:
                    time.sleep(delay)
                answer = b'{"ok": true}' if status < 300 else b"receiver is down\nsorry"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender gave up (timeout)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, *, userinfo: str = "") -> str:
        return f"http://{userinfo}{LOOPBACK}:{self.port}{path}"

    def at(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def wait(self, path: str, count: int = 1, timeout: float = 20) -> list[dict[str, Any]]:
        return wait_for(lambda: len(self.at(path)) >= count and self.at(path), timeout, f"{count} POST(s) to {path}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Sink:
    """An aiosmtpd SMTP server on 127.0.0.1 keeping every message (and whether it came over TLS)."""

    def __init__(self, port: int, tls_context: ssl.SSLContext | None = None) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[dict[str, Any]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                sink.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "data": envelope.content,
                                      "tls": session.ssl is not None})
                return "250 OK: queued"

        kwargs: dict[str, Any] = {"tls_context": tls_context} if tls_context else {}
        self.port = port
        self.controller = Controller(Handler(), hostname=LOOPBACK, port=port, **kwargs)
        self.controller.start()

    def to(self, address: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if address in m["to"]]

    def wait(self, address: str, timeout: float = 20) -> email.message.EmailMessage:
        m = wait_for(lambda: self.to(address), timeout, f"a message to {address}")[0]
        msg = email.message_from_bytes(m["data"], policy=email.policy.default)
        msg.tsubame_tls = m["tls"]  # type: ignore[attr-defined]
        msg.tsubame_envelope = (m["from"], m["to"])  # type: ignore[attr-defined]
        return msg

    def stop(self) -> None:
        self.controller.stop()


# -------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    """The plain sink on the port TSUBAME_SMTP_URL of the pool and the executors names."""
    if not SMTP_PORT:
        pytest.skip("TSUBAME_TEST_SMTP_PORT is not set (scripts/test sets it with TSUBAME_SMTP_URL)")
    s = Sink(SMTP_PORT)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    f = Fleet()
    if not f.ports or not f.password:
        pytest.skip("no SSH test fleet (TSUBAME_TEST_SSH_PORTS; scripts/test starts one when run as root)")
    if not os.environ.get("TSUBAME_TEST_BIN_DIR") or not os.environ.get("TSUBAME_TEST_DATABASE_URL"):
        pytest.skip("TSUBAME_TEST_BIN_DIR and TSUBAME_TEST_DATABASE_URL are needed to start tsubame-executor")
    assert f.host == LOOPBACK, f"TSUBAME_TEST_SSH_HOST is {f.host!r}: this module only runs against {LOOPBACK}"
    return f


class Made:
    """Jobs and servers of this module (servers on the loopback fleet only)."""

    def __init__(self, client: Client, fleet: Fleet) -> None:
        self.client, self.fleet = client, fleet
        self.servers: list[int] = []
        self.jobs: list[int] = []
        self._server: int | None = None

    def server(self) -> int:
        if self._server is None:
            s = self.client.ok("POST", "/api/v1/servers", json={
                "name": unique("notify"), "host": LOOPBACK, "port": self.fleet.ports[0], "username": self.fleet.user,
                "auth_method": "password", "password": self.fleet.password})
            self.servers.append(s["id"])
            self._server = s["id"]
        return self._server

    def job(self, script: str, notify: list[dict], **fields: Any) -> dict:
        j = self.client.ok("POST", "/api/v1/jobs", json=job_body([self.server()], script=script, notify=notify, **fields))
        self.jobs.append(j["id"])
        return j

    def cleanup(self) -> None:
        for jid in reversed(self.jobs):
            self.client.delete(f"/api/v1/jobs/{jid}")
        for sid in self.servers:
            self.client.delete(f"/api/v1/servers/{sid}")


@pytest.fixture(scope="module")
def made(admin_token: Client, fleet: Fleet) -> Iterator[Made]:
    m = Made(admin_token, fleet)
    yield m
    m.cleanup()


class Notifying:
    """The module's executor; `restart(**env)` runs it again with other settings (None removes one)."""

    def __init__(self) -> None:
        self.proc = ExecutorProcess(self.new_id(), PIDFILE, dict(EXECUTOR_ENV))

    @staticmethod
    def new_id() -> str:
        return f"test14-{uuid.uuid4().hex[:8]}"

    def restart(self, **env: str | None) -> None:
        if self.proc.running:
            self.proc.stop()
        self.proc.env = dict(EXECUTOR_ENV, **env)
        self.proc.start(self.new_id())


@pytest.fixture(scope="module")
def executor(admin_token: Client, made: Made, sink: Sink) -> Iterator[Notifying]:
    assert PIDFILE, "TSUBAME_TEST_EXECUTOR_PIDFILE is not set"
    other = pidfile_alive(PIDFILE) or executors_on()
    assert not other, f"an executor (pid {other}) is already running on this database: this module starts its own"
    drain_foreign_work(admin_token)
    n = Notifying()
    n.proc.start()
    try:
        yield n
    finally:
        problems = []
        try:
            rc = n.proc.stop()
            if rc not in (0, None):
                problems.append(f"executor exited with {rc}:\n{log_tail()}")
        except AssertionError as e:
            problems.append(str(e))
        if executors_on():
            problems.append(f"executors still running after the module: {executors_on()}")
        hosts = psql("""
            SELECT DISTINCT coalesce(s.host, '(server deleted)') FROM execution_targets t
            LEFT JOIN servers s ON s.id = t.server_id WHERE t.executor_id LIKE 'test14-%'
            """)
        assert {h[0] for h in hosts} <= {LOOPBACK}, f"targets on other hosts were claimed: {hosts}"
        assert not problems, problems


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), readable by the executor's user."""
    work = os.environ.get("TSUBAME_TEST_WORK_DIR")
    base = Path(work) / f"notify-tls-{uuid.uuid4().hex[:6]}" if work else tmp_path_factory.mktemp("tls")
    base.mkdir(exist_ok=True)
    os.chmod(base, 0o755)
    cert, key = base / "cert.pem", base / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    os.chmod(cert, 0o644)
    return cert, key


# -------------------------------------------------------------- helpers


def run(client: Client, job_id: int, env: dict[str, str] | None = None) -> dict:
    r = client.post(f"/api/v1/jobs/{job_id}/run", json={"env": env} if env else {})
    assert r.status_code == 202, r.text[:500]
    return r.json()


def wait_finished(client: Client, eid: int, timeout: float = 30) -> dict:
    return wait_for(lambda: (e := client.ok("GET", f"/api/v1/executions/{eid}"))["status"] in FINISHED and e,
                    timeout, f"execution {eid} finished")


def deliveries(client: Client, **params: Any) -> list[dict]:
    return client.list_all("/api/v1/notifications", params)


def wait_deliveries(client: Client, done: Callable[[list[dict]], bool], what: str, timeout: float = 25,
                    **params: Any) -> list[dict]:
    last: list[dict] = []

    def check() -> bool:
        last[:] = deliveries(client, **params)
        return done(last)

    try:
        wait_for(check, timeout, what, interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}\ndeliveries: {json.dumps(last, indent=1)}") from None
    return last


def settled(items: list[dict], count: int) -> bool:
    return len(items) >= count and all(d["status"] != "pending" for d in items)


# -------------------------------------------------------------- validation and secrets (no executor)


def test_bad_notify_items_answer_422_at_their_field(make_job: Callable[..., dict], admin_token: Client) -> None:
    job = make_job()
    hook = {"on": ["failed"], "type": "webhook", "url": "http://127.0.0.1:9/hook"}
    cases = [
        ([dict(hook, on=[])], "notify[0].on"),
        ([dict(hook, on=["exploded"])], "notify[0].on"),
        ([dict(hook, factor=1.2)], "notify[0].factor"),
        ([dict(hook, factor=101)], "notify[0].factor"),
        ([dict(hook, factor="3")], "notify[0].factor"),
        ([dict(hook, secret="short")], "notify[0].secret"),
        ([dict(hook, secret="x" * 257)], "notify[0].secret"),
        ([dict(hook, secret=12345678)], "notify[0].secret"),
        ([dict(hook, secret_set="yes")], "notify[0].secret_set"),
        ([{"on": ["failed"], "type": "slack", "url": "https://127.0.0.1/x", "secret": "long-enough-secret"}], "notify[0].secret"),
        ([{"on": ["failed"], "type": "email", "to": "ops@example.test", "secret": "long-enough-secret"}], "notify[0].secret"),
        ([{"on": ["failed"], "type": "email", "to": "Ops <ops@example.test>"}], "notify[0].to"),
        ([{"on": ["failed"], "type": "email", "to": "ops@example.test\r\nBcc: x@y.z"}], "notify[0].to"),
        ([{"on": ["failed"], "type": "webhook", "url": "gopher://127.0.0.1/x"}], "notify[0].url"),
        ([{"on": ["failed"], "type": "webhook", "url": "http://127.0.0.1/\u0007"}], "notify[0].url"),
        ([hook, dict(hook, headers={"X": "1"})], "notify[1].headers"),
    ]
    for notify, field in cases:
        r = admin_token.patch(f"/api/v1/jobs/{job['id']}", json={"notify": notify})
        assert field in error_fields(assert_problem(r, 422)), (notify, r.text)
    r = admin_token.post("/api/v1/jobs", json=job_body(job["server_ids"], notify=[dict(hook, factor=0)]))
    assert "notify[0].factor" in error_fields(assert_problem(r, 422))
    # Nothing was changed by the refused PATCHes.
    assert admin_token.ok("GET", f"/api/v1/jobs/{job['id']}")["notify"] == []


def test_events_factor_and_the_old_event_name(make_job: Callable[..., dict], admin_token: Client) -> None:
    job = make_job(notify=[
        {"on": ["started", "succeeded", "failed", "cancelled", "timed_out", "running_long"], "type": "slack",
         "url": "https://127.0.0.1:9/services/T/B/C", "factor": 1.5},
        {"on": ["long_running", "failed", "long_running"], "type": "email", "to": "ops@example.test"},
    ])
    slack, mail = job["notify"]
    assert slack["factor"] == 1.5 and slack["on"][-1] == "running_long" and "secret_set" not in slack
    assert mail == {"on": ["running_long", "failed"], "type": "email", "to": "ops@example.test"}


def test_webhook_secrets_are_write_only_and_kept_when_the_list_is_sent_back(make_job: Callable[..., dict],
                                                                            admin_token: Client, viewer: Client) -> None:
    url = "http://127.0.0.1:9/signed"
    job = make_job(notify=[{"on": ["failed"], "type": "webhook", "url": url, "secret": SECRET},
                           {"on": ["failed"], "type": "webhook", "url": "http://127.0.0.1:9/plain"}])
    assert [n["secret_set"] for n in job["notify"]] == [True, False]
    jid = job["id"]

    def everywhere() -> str:
        texts = [json.dumps(admin_token.ok("GET", f"/api/v1/jobs/{jid}")), json.dumps(viewer.ok("GET", f"/api/v1/jobs/{jid}")),
                 json.dumps(admin_token.list_all("/api/v1/jobs")), json.dumps(admin_token.ok("GET", "/api/v1/audit")),
                 psql_value("SELECT notify::text FROM jobs WHERE id = :id", id=jid)]
        return "\n".join(texts)

    assert SECRET not in everywhere()
    assert "secret_sealed" not in json.dumps(admin_token.ok("GET", f"/api/v1/jobs/{jid}"))
    # The UI sends the list back as GET shows it (secret_set included, no secret): the secret stays.
    shown = admin_token.ok("GET", f"/api/v1/jobs/{jid}")["notify"]
    again = admin_token.ok("PATCH", f"/api/v1/jobs/{jid}", json={"notify": shown})
    assert [n["secret_set"] for n in again["notify"]] == [True, False]
    # Reordered and with a changed event list: still the same receiver, still the secret.
    swapped = admin_token.ok("PATCH", f"/api/v1/jobs/{jid}", json={"notify": [
        {"on": ["failed"], "type": "webhook", "url": "http://127.0.0.1:9/plain"},
        {"on": ["succeeded"], "type": "webhook", "url": url}]})
    assert [n["secret_set"] for n in swapped["notify"]] == [False, True]
    # Another URL is another receiver: no secret.
    moved = admin_token.ok("PATCH", f"/api/v1/jobs/{jid}", json={"notify": [
        {"on": ["failed"], "type": "webhook", "url": url + "-moved"}]})
    assert moved["notify"][0]["secret_set"] is False
    # Set again, then "" removes it.
    admin_token.ok("PATCH", f"/api/v1/jobs/{jid}", json={"notify": [{"on": ["failed"], "type": "webhook", "url": url,
                                                                      "secret": SECRET}]})
    cleared = admin_token.ok("PATCH", f"/api/v1/jobs/{jid}", json={"notify": [{"on": ["failed"], "type": "webhook",
                                                                                "url": url, "secret": ""}]})
    assert cleared["notify"][0]["secret_set"] is False
    assert SECRET not in everywhere()


# -------------------------------------------------------------- delivery by the executor


def test_webhook_and_slack_are_delivered_signed_and_the_log_shows_them(
        executor: Notifying, made: Made, receiver: Receiver, admin_token: Client, viewer: Client) -> None:
    tag = uuid.uuid4().hex[:8]
    hook, slack = f"/hook-{tag}", f"/services/T0/B0/{tag}"
    job = made.job("echo notified", [
        {"on": ["started", "succeeded"], "type": "webhook", "url": receiver.url(hook) + "?token=abc", "secret": SECRET},
        {"on": ["succeeded", "failed"], "type": "slack", "url": receiver.url(slack)},
        {"on": ["failed"], "type": "webhook", "url": receiver.url(f"/never-{tag}")},
    ], name=unique("notify <b>&"))
    e = run(admin_token, job["id"])
    assert wait_finished(admin_token, e["id"])["status"] == "succeeded"
    posts = receiver.wait(hook + "?token=abc", 2)
    events = {}
    for p in posts:
        h = p["headers"]
        assert h["content-type"] == "application/json"
        assert h["x-tsubame-signature"] == signature(SECRET, p["body"]), "the signature covers the exact body"
        body = json.loads(p["body"])
        assert h["x-tsubame-event"] == body["event"] and h["x-tsubame-delivery"] == str(body["delivery_id"])
        assert body["job"] == {"id": job["id"], "name": job["name"]}
        assert body["execution"]["id"] == e["id"] and body["execution"]["trigger"] == "api"
        assert body["url"] == f"{BASE_URL}/#/executions/{e['id']}"
        events[body["event"]] = body
    assert set(events) == {"execution.started", "execution.finished"}
    done = events["execution.finished"]["execution"]
    assert done["status"] == "succeeded" and done["exit_code"] == 0 and done["duration_ms"] >= 0
    assert done["targets"]["total"] == 1 and done["targets"]["succeeded"] == 1
    assert done["finished_at"].endswith("Z") and done["started_at"].endswith("Z")

    text = json.loads(receiver.wait(slack)[0]["body"])
    assert set(text) == {"text"}
    assert "succeeded" in text["text"] and f"#{e['id']}" in text["text"]
    assert "&lt;b&gt;&amp;" in text["text"], "mrkdwn control characters of the job name are escaped"
    assert not receiver.at(f"/never-{tag}")

    log = wait_deliveries(viewer, lambda d: settled(d, 3), "3 deliveries sent", execution_id=e["id"])
    assert len(log) == 3 and {d["status"] for d in log} == {"sent"}
    assert all(d["attempts"] == 1 and d["response_code"] == 200 and d["last_error"] is None and d["sent_at"] for d in log)
    assert sorted(d["event"] for d in log) == ["started", "succeeded", "succeeded"]
    dest = {d["type"] + ":" + d["event"]: d["destination"] for d in log}
    assert dest["webhook:started"] == receiver.url(hook) + "?***", "the query (a token) is hidden"
    assert dest["slack:succeeded"] == receiver.url("/***"), "a Slack URL's path is its secret"
    assert all(d["job_id"] == job["id"] and d["job_name"] == job["name"] for d in log)
    assert "token=abc" not in json.dumps(deliveries(admin_token, job_id=job["id"]))


def test_a_500_is_retried_with_backoff_then_sent(executor: Notifying, made: Made, receiver: Receiver,
                                                  admin_token: Client) -> None:
    path = f"/flaky-{uuid.uuid4().hex[:8]}"
    receiver.plans[path] = [500]
    job = made.job("true", [{"on": ["succeeded"], "type": "webhook", "url": receiver.url(path)}])
    e = run(admin_token, job["id"])
    first, second = receiver.wait(path, 2)
    assert second["at"] - first["at"] >= 0.9, "the retry waits TSUBAME_NOTIFY_RETRY_SECONDS"
    assert first["headers"]["x-tsubame-delivery"] == second["headers"]["x-tsubame-delivery"], "a retry is the same delivery"
    assert first["body"] == second["body"]
    [d] = wait_deliveries(admin_token, lambda d: settled(d, 1), "the retried delivery", execution_id=e["id"])
    assert d["status"] == "sent" and d["attempts"] == 2 and d["response_code"] == 200 and d["last_error"] is None


def test_refused_slow_and_failing_receivers_never_hold_up_or_fail_the_job(
        executor: Notifying, made: Made, receiver: Receiver, admin_token: Client) -> None:
    tag = uuid.uuid4().hex[:8]
    slow, down = f"/slow-{tag}", f"/down-{tag}"
    receiver.delays[slow] = 8
    receiver.plans[down] = [503, 503]
    closed = free_port()
    job = made.job("echo fine", [
        {"on": ["started", "succeeded"], "type": "webhook", "url": f"http://127.0.0.1:{closed}/refused"},
        {"on": ["started"], "type": "webhook", "url": receiver.url(slow)},
        {"on": ["succeeded"], "type": "slack", "url": receiver.url(down)},
    ])
    started = time.monotonic()
    e = run(admin_token, job["id"])
    assert wait_finished(admin_token, e["id"], timeout=20)["status"] == "succeeded"
    assert time.monotonic() - started < 10, "the run did not wait for its notifications"
    log = wait_deliveries(admin_token, lambda d: settled(d, 4), "4 deliveries failed", execution_id=e["id"])
    assert {d["status"] for d in log} == {"failed"}, log
    assert all(d["attempts"] == 2 and d["next_attempt_at"] is None for d in log)
    errors = {(d["destination"].rsplit("/", 1)[-1], d["event"]): d["last_error"] for d in log}
    assert "connect" in errors[("refused", "succeeded")].lower(), errors
    assert "timed out" in errors[(slow.lstrip("/"), "started")], errors
    assert errors[("***", "succeeded")].startswith("HTTP 503: receiver is down sorry"), errors
    assert [d["response_code"] for d in log if d["type"] == "slack"] == [503]


def test_email_over_smtp_with_headers_and_a_link(executor: Notifying, made: Made, sink: Sink, admin_token: Client) -> None:
    to = f"ops-{uuid.uuid4().hex[:8]}@example.test"
    job = made.job("echo boom >&2; exit 3", [{"on": ["failed"], "type": "email", "to": to}], name=unique("mail-ä"))
    e = run(admin_token, job["id"])
    assert wait_finished(admin_token, e["id"])["status"] == "failed"
    msg = sink.wait(to)
    assert msg.tsubame_envelope == ("tsubame-ci@localhost", [to])  # type: ignore[attr-defined]
    assert msg["Subject"] == f"[tsubame-ci] {job['name']} failed (#{e['id']})", "non-ASCII names are RFC 2047 encoded"
    assert msg["To"].addresses[0].addr_spec == to and msg["From"].addresses[0].addr_spec == "tsubame-ci@localhost"
    assert email.utils.parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert msg["Message-ID"].startswith("<tsubame.") and msg["Message-ID"].endswith("@localhost>")
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    body = msg.get_content()
    assert "Status:    failed" in body and "Exit code: 3" in body and f"Execution: #{e['id']} (api)" in body
    assert f"{BASE_URL}/#/executions/{e['id']}" in body
    [d] = wait_deliveries(admin_token, lambda d: settled(d, 1), "the e-mail delivery", execution_id=e["id"])
    assert d["status"] == "sent" and d["destination"] == to and d["response_code"] == 250


def test_email_with_starttls_and_a_private_ca(executor: Notifying, made: Made, admin_token: Client,
                                              tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port = free_port()
    tls_sink = Sink(port, tls_context=context)
    try:
        executor.restart(TSUBAME_SMTP_URL=f"smtp://127.0.0.1:{port}", TSUBAME_SMTP_CA_FILE=str(cert))
        to = f"tls-{uuid.uuid4().hex[:8]}@example.test"
        job = made.job("true", [{"on": ["succeeded"], "type": "email", "to": to}])
        run(admin_token, job["id"])
        assert tls_sink.wait(to).tsubame_tls is True, "STARTTLS was offered, so the message went over TLS"  # type: ignore[attr-defined]

        # Without the CA the certificate is not trusted: the delivery fails and says why; nothing is sent in clear.
        executor.restart(TSUBAME_SMTP_URL=f"smtp://127.0.0.1:{port}")
        to2 = f"untrusted-{uuid.uuid4().hex[:8]}@example.test"
        job2 = made.job("true", [{"on": ["succeeded"], "type": "email", "to": to2}])
        e2 = run(admin_token, job2["id"])
        [d] = wait_deliveries(admin_token, lambda d: settled(d, 1), "the untrusted delivery", execution_id=e2["id"])
        assert d["status"] == "failed" and "certificate" in d["last_error"].lower(), d
        assert not tls_sink.to(to2)
    finally:
        tls_sink.stop()
        executor.restart()


def test_email_without_a_mail_server_fails_at_once_saying_so(executor: Notifying, made: Made, admin_token: Client) -> None:
    executor.restart(TSUBAME_SMTP_URL=None)
    try:
        job = made.job("true", [{"on": ["succeeded"], "type": "email", "to": "nobody@example.test"}])
        e = run(admin_token, job["id"])
        assert wait_finished(admin_token, e["id"])["status"] == "succeeded"
        [d] = wait_deliveries(admin_token, lambda d: settled(d, 1), "the e-mail delivery", execution_id=e["id"])
        assert d["status"] == "failed" and d["attempts"] == 1, "no retry: nothing could send it"
        assert "TSUBAME_SMTP_URL is not set" in d["last_error"]
    finally:
        executor.restart()


def test_cancel_through_the_api_notifies(executor: Notifying, made: Made, receiver: Receiver, admin_token: Client) -> None:
    path = f"/cancelled-{uuid.uuid4().hex[:8]}"
    job = made.job("sleep 30", [{"on": ["cancelled"], "type": "webhook", "url": receiver.url(path)}])
    e = run(admin_token, job["id"])
    wait_for(lambda: admin_token.ok("GET", f"/api/v1/executions/{e['id']}")["status"] == "running", 20, "running")
    admin_token.ok("POST", f"/api/v1/executions/{e['id']}/cancel", status=202)
    body = json.loads(receiver.wait(path)[0]["body"])
    assert body["event"] == "execution.finished" and body["execution"]["status"] == "cancelled"


def test_running_long_fires_once_while_the_run_is_slower_than_its_median(
        executor: Notifying, made: Made, receiver: Receiver, admin_token: Client) -> None:
    path = f"/long-{uuid.uuid4().hex[:8]}"
    job = made.job('sleep "$PAUSE"', [{"on": ["running_long"], "type": "webhook", "url": receiver.url(path), "factor": 2}],
                   env={"PAUSE": "0"})
    for _ in range(3):
        e = run(admin_token, job["id"])
        assert wait_finished(admin_token, e["id"])["status"] == "succeeded"
    assert not receiver.at(path), "short runs are not long"
    slow = run(admin_token, job["id"], env={"PAUSE": "30"})
    body = json.loads(receiver.wait(path, timeout=20)[0]["body"])
    assert body["event"] == "execution.running_long" and body["execution"]["id"] == slow["id"]
    assert body["execution"]["status"] == "running", "sent while it still runs"
    assert body["running_long"]["factor"] == 2 and 0 <= body["running_long"]["median_ms"] < 10000
    assert body["execution"]["duration_ms"] > 2 * body["running_long"]["median_ms"]
    time.sleep(2.5)  # at least one more check of the loop while it runs: still once
    admin_token.ok("POST", f"/api/v1/executions/{slow['id']}/cancel", status=202)
    assert wait_finished(admin_token, slow["id"])["status"] == "cancelled"
    assert len(receiver.at(path)) == 1
    [d] = deliveries(admin_token, execution_id=slow["id"])
    assert d["event"] == "running_long" and d["status"] == "sent"


# -------------------------------------------------------------- send test notification


def test_send_test_notification(make_job: Callable[..., dict], receiver: Receiver, sink: Sink, admin_token: Client,
                                operator: Client, viewer: Client) -> None:
    tag = uuid.uuid4().hex[:8]
    hook, slack = f"/test-hook-{tag}", f"/services/test-{tag}"
    job = make_job(notify=[{"on": ["failed"], "type": "webhook", "url": receiver.url(hook), "secret": SECRET},
                           {"on": ["failed"], "type": "slack", "url": receiver.url(slack)}])
    jid = job["id"]
    out = operator.ok("POST", f"/api/v1/jobs/{jid}/notify-test", status=200)["results"]
    assert [(r["type"], r["ok"], r.get("status_code")) for r in out] == [("webhook", True, 200), ("slack", True, 200)]
    assert out[1]["destination"] == receiver.url("/***") and "error" not in out[0]
    post = receiver.wait(hook)[0]
    body = json.loads(post["body"])
    assert body["event"] == "test" and body["execution"] is None and body["job"]["id"] == jid
    assert post["headers"]["x-tsubame-signature"] == signature(SECRET, post["body"]), "the stored secret signs tests too"
    assert body["delivery_id"] == out[0]["delivery_id"]
    assert "Test notification" in json.loads(receiver.wait(slack)[0]["body"])["text"]

    # One item before it is saved: an e-mail through the pool's TSUBAME_SMTP_URL, and a new secret.
    to = f"test-{tag}@example.test"
    [r] = operator.ok("POST", f"/api/v1/jobs/{jid}/notify-test", status=200,
                      json={"item": {"on": ["failed"], "type": "email", "to": to}})["results"]
    assert r["ok"] is True and r["status_code"] == 250, r
    assert sink.wait(to)["Subject"] == f"[tsubame-ci] Test notification for {job['name']}"
    other = "another-secret-" + tag
    [r] = operator.ok("POST", f"/api/v1/jobs/{jid}/notify-test", status=200,
                      json={"item": {"on": ["failed"], "type": "webhook", "url": receiver.url(hook), "secret": other}})["results"]
    post = receiver.wait(hook, 2)[1]
    assert post["headers"]["x-tsubame-signature"] == signature(other, post["body"])
    # A refused receiver: 200 with ok false and why.
    [r] = operator.ok("POST", f"/api/v1/jobs/{jid}/notify-test", status=200,
                      json={"item": {"on": ["failed"], "type": "webhook", "url": f"http://127.0.0.1:{free_port()}/x"}})["results"]
    assert r["ok"] is False and "connect" in r["error"].lower() and "status_code" not in r

    log = deliveries(viewer, job_id=jid, event="test")
    assert len(log) == 5 and all(d["execution_id"] is None for d in log)
    assert sorted(d["status"] for d in log) == ["failed", "sent", "sent", "sent", "sent"]
    audit = admin_token.ok("GET", "/api/v1/audit")["items"]
    assert any(a["action"] == "job.notify_test" and a["target"] == f"job:{jid}" for a in audit)
    assert SECRET not in json.dumps(audit) and other not in json.dumps(audit)


def test_send_test_notification_errors(make_job: Callable[..., dict], admin_token: Client, viewer: Client,
                                       anon: Client) -> None:
    job = make_job()
    path = f"/api/v1/jobs/{job['id']}/notify-test"
    assert_problem(viewer.post(path, json={}), 403)
    assert_problem(anon.post(path, json={}), 401)
    assert_problem(admin_token.post("/api/v1/jobs/999999999/notify-test", json={}), 404)
    assert_problem(admin_token.post(path, json={}), 409)
    assert_problem(admin_token.post(path), 409)
    bad = admin_token.post(path, json={"item": {"on": ["failed"], "type": "webhook", "url": "ftp://x"}})
    assert error_fields(assert_problem(bad, 422)) == ["item.url"]
    assert "extra" in error_fields(assert_problem(admin_token.post(path, json={"extra": 1}), 422))
    assert_problem(admin_token.post(path, data="{}", headers={"Content-Type": "text/plain"}), 415)
    assert_problem(admin_token.post(path, data="{", headers={"Content-Type": "application/json"}), 400)
    # Without a mail server configured in the pool it would fail saying so; with one (scripts/test) a closed port
    # still answers 200 with ok false: never a 5xx.


def test_delivery_log_filters_paging_and_authz(make_job: Callable[..., dict], admin_token: Client, viewer: Client,
                                               anon: Client) -> None:
    closed = free_port()
    job = make_job(notify=[{"on": ["failed"], "type": "webhook", "url": f"http://u:p@127.0.0.1:{closed}/a?k=v"},
                           {"on": ["failed"], "type": "slack", "url": f"http://127.0.0.1:{closed}/services/x"}])
    for _ in range(2):
        results = admin_token.ok("POST", f"/api/v1/jobs/{job['id']}/notify-test", status=200)["results"]
        assert [r["ok"] for r in results] == [False, False]
    assert results[0]["destination"] == f"http://***@127.0.0.1:{closed}/a?***"
    mine = deliveries(viewer, job_id=job["id"])
    assert len(mine) == 4 and [d["id"] for d in mine] == sorted((d["id"] for d in mine), reverse=True)
    assert {d["status"] for d in mine} == {"failed"} and all("connect" in d["last_error"].lower() for d in mine)
    assert len(deliveries(viewer, job_id=job["id"], type="slack")) == 2
    assert len(deliveries(viewer, job_id=job["id"], status="sent")) == 0
    assert len(deliveries(viewer, job_id=job["id"], event="test", status="failed")) == 4
    assert deliveries(viewer, execution_id=999999999) == []
    page = viewer.ok("GET", "/api/v1/notifications", params={"job_id": job["id"], "limit": 3})
    assert len(page["items"]) == 3 and page["next_cursor"]
    rest = viewer.ok("GET", "/api/v1/notifications", params={"job_id": job["id"], "limit": 3, "cursor": page["next_cursor"]})
    assert [d["id"] for d in page["items"] + rest["items"]] == [d["id"] for d in mine] and rest["next_cursor"] is None
    for params in ({"status": "lost"}, {"event": "boom"}, {"type": "pigeon"}, {"job_id": "0"}, {"execution_id": "x"},
                   {"limit": "0"}, {"cursor": "nope"}):
        assert_problem(viewer.get("/api/v1/notifications", params=params), 400)
    assert_problem(anon.get("/api/v1/notifications"), 401)
    # The log outlives its job.
    admin_token.delete(f"/api/v1/jobs/{job['id']}")
    kept = [d for d in deliveries(viewer, event="test") if d["id"] in {m["id"] for m in mine}]
    assert len(kept) == 4 and all(d["job_id"] is None for d in kept)
