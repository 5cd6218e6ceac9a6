# SPDX-License-Identifier: Apache-2.0
"""Process-level behaviour: a PostgreSQL restart under load is survived without
restarting the pool, and the worker runs unchanged under spawn-fcgi."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from helpers import Client
from test_08_resilience import Load, _healthy, _wait_for


def _need(settings: dict, *keys: str) -> None:
    for key in keys:
        if not os.environ.get(key):
            pytest.skip(f"{key} is not set (run through scripts/test)")


def test_postgres_restart_under_load_is_survived(settings: dict, admin_token: Client, base_url: str) -> None:
    _need(settings, "TSUBAME_TEST_PG_SCRIPT", "TSUBAME_TEST_PG_DIR", "TSUBAME_TEST_PG_PORT")
    script, pg_dir, port = (os.environ[k] for k in ("TSUBAME_TEST_PG_SCRIPT", "TSUBAME_TEST_PG_DIR", "TSUBAME_TEST_PG_PORT"))
    load = Load(base_url, admin_token.token)
    load.start()
    try:
        time.sleep(0.3)
        subprocess.run(["bash", script, "stop", pg_dir], check=True, capture_output=True, timeout=60)
        # While the database is down the API says so with 503 problem+json, never a crash.
        r = requests.get(base_url + "/api/v1/servers", headers={"Authorization": f"Bearer {admin_token.token}"}, timeout=10)
        assert r.status_code == 503, r.text
        assert r.headers["Content-Type"].startswith("application/problem+json")
        h = requests.get(base_url + "/api/health", timeout=10)
        assert h.status_code == 503 and h.json()["database"] == "unreachable"
        subprocess.run(["bash", script, "start", pg_dir, port], check=True, capture_output=True, timeout=120)
        assert _wait_for(lambda: _healthy(base_url), 10), "the API did not recover after the database came back"
        failures_before = len(load.failures)
        time.sleep(1.0)
    finally:
        load.stop.set()
        load.join(timeout=15)
    # After recovery, no request fails: every thread's connection was replaced transparently.
    assert load.failures[failures_before:] == [], load.failures[failures_before:][:5]
    assert load.sent > 20


def _fcgi_record(kind: int, content: bytes) -> bytes:
    return struct.pack(">BBHHBB", 1, kind, 1, len(content), 0, 0) + content


def _fcgi_pair(name: str, value: str) -> bytes:
    def length(n: int) -> bytes:
        return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)
    k, v = name.encode(), value.encode()
    return length(len(k)) + length(len(v)) + k + v


def _fcgi_get(sock_path: str, uri: str) -> str:
    params = b"".join(_fcgi_pair(k, v) for k, v in {"REQUEST_METHOD": "GET", "REQUEST_URI": uri, "REMOTE_ADDR": "127.0.0.1"}.items())
    message = (_fcgi_record(1, struct.pack(">HB5x", 1, 0)) + _fcgi_record(4, params) + _fcgi_record(4, b"") + _fcgi_record(5, b""))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(message)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out, i = b"", 0
    while i + 8 <= len(data):
        _, kind, _, length, padding, _ = struct.unpack(">BBHHBB", data[i:i + 8])
        if kind == 6:
            out += data[i + 8:i + 8 + length]
        i += 8 + length + padding
    return out.decode()


def test_worker_runs_unchanged_under_spawn_fcgi(settings: dict) -> None:
    _need(settings, "TSUBAME_TEST_BIN_DIR", "TSUBAME_TEST_MASTER_KEY_FILE", "TSUBAME_TEST_DATABASE_URL")
    spawn = shutil.which("spawn-fcgi")
    if not spawn:
        pytest.skip("spawn-fcgi is not installed")
    worker = os.path.join(os.environ["TSUBAME_TEST_BIN_DIR"], "tsubame-worker")
    tmp = tempfile.mkdtemp(prefix="tsb-spawn-")
    sock = os.path.join(tmp, "w.sock")
    env = dict(os.environ, TSUBAME_DATABASE_URL=os.environ["TSUBAME_TEST_DATABASE_URL"],
               TSUBAME_MASTER_KEY_FILE=os.environ["TSUBAME_TEST_MASTER_KEY_FILE"], TSUBAME_WORKER_THREADS="2")
    # -n: stay in the foreground so the test owns the process; -M: socket mode.
    proc = subprocess.Popen([spawn, "-n", "-s", sock, "-M", "0600", "--", worker], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: os.path.exists(sock), 10), "spawn-fcgi did not create its socket"
        answer = ""
        for _ in range(50):
            try:
                answer = _fcgi_get(sock, "/api/health")
                break
            except OSError:
                time.sleep(0.1)
        assert answer.startswith("Status: 200"), answer
        assert '"database":"ok"' in answer
        assert _fcgi_get(sock, "/api/v1/servers").startswith("Status: 401")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr.read().decode()[-500:]


def test_worker_refuses_to_start_without_a_listening_socket(settings: dict) -> None:
    _need(settings, "TSUBAME_TEST_BIN_DIR")
    worker = os.path.join(os.environ["TSUBAME_TEST_BIN_DIR"], "tsubame-worker")
    r = subprocess.run([worker], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert r.returncode == 2
    assert b"not a listening socket" in r.stderr


def test_pool_status_and_config_test(settings: dict) -> None:
    _need(settings, "TSUBAME_TEST_BIN_DIR", "TSUBAME_TEST_FCGI_SOCKET")
    pool = os.path.join(os.environ["TSUBAME_TEST_BIN_DIR"], "tsubame-pool")
    env = dict(os.environ, TSUBAME_FCGI_SOCKET=os.environ["TSUBAME_TEST_FCGI_SOCKET"])
    text = subprocess.run([pool, "status"], env=env, capture_output=True, timeout=30, text=True)
    assert text.returncode == 0, text.stderr
    assert "workers:" in text.stdout and "PID" in text.stdout
    js = subprocess.run([pool, "status", "--json"], env=env, capture_output=True, timeout=30, text=True)
    import json
    status = json.loads(js.stdout)
    assert status["workers_running"] >= 1
    assert all("requests" in w and "busy_threads" in w for w in status["workers"])
    bad = subprocess.run([pool, "--test-config"], env=dict(env, TSUBAME_POOL_WORKERS="zero"), capture_output=True, timeout=30, text=True)
    assert bad.returncode == 2 and "TSUBAME_POOL_WORKERS" in bad.stderr
    assert subprocess.run([pool, "--help"], capture_output=True, timeout=30).returncode == 0
