# SPDX-License-Identifier: Apache-2.0
"""The fault-injection suite (issue 7), run by scripts/chaos against its own throw-away stack.

It reuses the HTTP suite's client (Tests/http/helpers.py) and its executor and psql helpers
(Tests/http/executor.py); scripts/chaos sets the same TSUBAME_TEST_* variables as scripts/test, plus:
  TSUBAME_CHAOS_NETNS, _NETNS_IF, _NETNS_ADDR, _NETNS_HOST_ADDR   the namespace of the partition scenario
  TSUBAME_CHAOS_NETNS_SKIP                                        why there is none (the scenario is skipped)
  TSUBAME_CHAOS_SOAK_EXECUTIONS                                   executions of the soak (10,000)
Each module starts the executors it needs and leaves none running; each leaves no unfinished execution.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))

from helpers import BASE_URL, Client, unique  # noqa: E402

from chaos import Fleet, Made  # noqa: E402  (Tests/chaos/chaos.py)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BASE_URL and os.environ.get("TSUBAME_TEST_SSH_PORTS"):
        return
    skip = pytest.mark.skip(reason="the chaos suite needs the stack and sshd fleet of scripts/chaos (run it as root)")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def base_url() -> str:
    return BASE_URL


@pytest.fixture(scope="session")
def admin_token() -> Client:
    """The admin, by an API token."""
    c = Client()
    r = c.login(os.environ.get("TSUBAME_TEST_ADMIN_USER", "admin"), os.environ.get("TSUBAME_TEST_ADMIN_PASSWORD", ""))
    assert r.status_code == 200, f"admin login failed: {r.status_code} {r.text[:300]}"
    created = c.ok("POST", "/api/v1/tokens", json={"name": unique("chaos")})
    return Client(token=created["token"])


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    f = Fleet()
    assert f.host == "127.0.0.1" and len(f.ports) >= 3, (f.host, f.ports)
    return f


@pytest.fixture(scope="module")
def made(admin_token: Client, fleet: Fleet) -> Iterator[Made]:
    m = Made(admin_token, fleet)
    yield m
    m.cleanup()
