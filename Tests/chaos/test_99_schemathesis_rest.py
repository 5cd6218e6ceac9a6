# SPDX-License-Identifier: Apache-2.0
"""Schemathesis over the operations scripts/test's run leaves out, last of all.

Tests/http/test_99_schemathesis.py fuzzes the whole API (no 5xx, every answer as documented) except seven
operations: login, logout, updateUser, deleteUser and deleteToken (they would sign its admin out or throttle
127.0.0.1 for the tests after it) and testServer and testJobNotifications (they connect to the invented hosts
and URLs). Here, at the end of the chaos run, nothing comes after, so the first five are fuzzed too, with the
same checks, as an admin of their own. The last two stay out: nothing here may connect anywhere but 127.0.0.1
(their own tests use local servers and receivers: Tests/http/test_11_runs.py and test_14_notify.py).
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from chaos import figure, no_executor_running
from helpers import Client, unique
from test_99_schemathesis import _schemathesis  # Tests/http

# In this order, each pass as an admin of its own (made beforehand: a pass may delete or demote any user): the
# user changes first, then sign-in (whose throttling answers 429 from then on), then what ends sessions and tokens.
PASSES = [["updateUser", "deleteUser"], ["login"], ["logout", "deleteToken"]]
OPERATIONS = [op for ops in PASSES for op in ops]
TIME_LIMIT = 240


def _token(admin: Client) -> str:
    password = "pw-" + unique("fuzz")
    user = admin.ok("POST", "/api/v1/users", json={"username": unique("fuzz"), "password": password, "role": "admin"})
    c = Client()
    assert c.login(user["username"], password).status_code == 200
    return c.ok("POST", "/api/v1/tokens", json={"name": unique("fuzz")})["token"]


@pytest.mark.timeout(TIME_LIMIT + 30)
def test_schemathesis_on_the_operations_scripts_test_leaves_out(admin_token: Client, base_url: str,
                                                                tmp_path: Path) -> None:
    no_executor_running()
    tokens = [_token(admin_token) for _ in PASSES]
    cases = 0
    for ops, token in zip(PASSES, tokens):
        cmd = _schemathesis() + [
            "run", f"{base_url}/api/openapi.json",
            "--url", base_url,
            "--header", f"Authorization: Bearer {token}",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "30",
            "--workers", "2",
            "--request-timeout", "30",
            "--suppress-health-check", "all",
            "--generation-with-security-parameters", "false",
            "--generation-database", "none",
            "--no-color",
        ]
        for op in ops:
            cmd += ["--include-operation-id", op]
        seed = os.environ.get("TSUBAME_TEST_SCHEMATHESIS_SEED")
        if seed:
            cmd += ["--seed", seed]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIME_LIMIT // len(PASSES),
                              env=dict(os.environ, NO_COLOR="1"))
        output = proc.stdout + proc.stderr
        print(output[-6000:])
        assert proc.returncode == 0, f"schemathesis on {ops} failed (exit {proc.returncode}):\n{output[-12000:]}"
        m = re.search(r"(\d+) generated, (\d+) passed", output)
        cases += int(m[1]) if m else 0
    figure("schemathesis-rest", operations=OPERATIONS, test_cases=cases)
