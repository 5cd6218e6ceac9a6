# SPDX-License-Identifier: Apache-2.0
"""Property-based run of schemathesis (v4 CLI) against the live API and its own OpenAPI document.

Checks: no 5xx on any generated input, and every documented answer matches its
schema. Runs last (it creates many servers, jobs, users and tokens), as its own
admin user, and leaves out the operations that would sign that admin out or
throttle the address: login, logout, PATCH/DELETE of users, DELETE of tokens.
Running jobs, cancel and re-run are included: no executor runs in the test
stack, so executions stay queued (or become cancelled); 409 is a documented
answer. The log's `wait` is pinned to 0 (schemathesis.toml): a long-poll on a
queued execution would otherwise hold each request for up to 30 s. The
coverage phase also sends methods a path does not have (PUT, TRACE, QUERY…):
they must answer 405 (nginx answers TRACE itself), never 501.
Set TSUBAME_TEST_SCHEMATHESIS_SEED to replay a run, and
TSUBAME_TEST_OPENAPI_FILE=PATH to test against a local document instead of the
served one (e.g. a schema edit before the worker is rebuilt).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from executor import executors_on
from helpers import Client, unique

# testServer connects to the server's host and testJobNotifications to the job's receivers: schemathesis invents
# host names and URLs, and nothing in the suite may connect anywhere but 127.0.0.1 (test_11_runs.py tests servers
# on the loopback fleet, test_14_notify.py notifications against local receivers).
EXCLUDED_OPERATIONS = ["login", "logout", "updateUser", "deleteUser", "deleteToken", "testServer", "testJobNotifications"]
TIME_LIMIT = 240
# Fixed parameter values (schemathesis.toml, passed with --config-file).
CONFIG = """
[[operations]]
include-operation-id = "getExecutionLog"
parameters = { "query.wait" = 0 }

[[operations]]
include-operation-id = "listEvents"
parameters = { "query.wait" = 0 }
"""


def _schemathesis() -> list[str]:
    exe = shutil.which("schemathesis") or shutil.which("st")
    if exe is None:
        candidate = Path(sys.executable).with_name("schemathesis")
        exe = str(candidate) if candidate.exists() else None
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -r Tests/http/requirements.txt)")
    return [exe]


@pytest.mark.timeout(TIME_LIMIT + 30)
def test_schemathesis(base_url: str, create_user: Callable[..., dict], login: Callable[[str, str], Client],
                      tmp_path: Path) -> None:
    # It queues runs of jobs on servers with invented host names: no executor may be there to run them.
    assert not executors_on(), f"tsubame-executor is running on the test database: {executors_on()}"
    cmd = _schemathesis()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd += ["--config-file", str(config)]
    user = create_user("admin", username=unique("fuzz"))
    token = login(user["username"], user["password"]).ok("POST", "/api/v1/tokens", json={"name": unique("fuzz")})
    cmd += [
        "run", os.environ.get("TSUBAME_TEST_OPENAPI_FILE") or f"{base_url}/api/openapi.json",
        "--url", base_url,
        "--header", f"Authorization: Bearer {token['token']}",
        "--checks", "not_a_server_error,response_schema_conformance",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", "20",
        "--workers", "2",
        "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--generation-with-security-parameters", "false",
        "--generation-database", "none",
        "--no-color",
    ]
    for op in EXCLUDED_OPERATIONS:
        cmd += ["--exclude-operation-id", op]
    seed = os.environ.get("TSUBAME_TEST_SCHEMATHESIS_SEED")
    if seed:
        cmd += ["--seed", seed]
    shown = " ".join(c if not c.startswith("Authorization:") else "Authorization: Bearer ***" for c in cmd)
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIME_LIMIT,
                              env=dict(os.environ, NO_COLOR="1"))
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        pytest.fail(f"schemathesis ran longer than {TIME_LIMIT} s: {shown}\n{out[-4000:]}")
    output = proc.stdout + proc.stderr
    print(output[-20000:])
    assert proc.returncode == 0, f"schemathesis failed (exit {proc.returncode}): {shown}\n{output[-12000:]}"
