# SPDX-License-Identifier: Apache-2.0
"""Per-user login throttling.

Runs late on purpose: it makes 6 failed logins (plus one refused correct one)
for a fresh user. With the per-user limit at TSUBAME_LOGIN_MAX_FAILURES=5 and
the per-address limit 20 times that (as scripts/test configures), the whole
suite stays far below the per-address limit, so later logins from 127.0.0.1
still work.
"""
from __future__ import annotations

from typing import Callable

from helpers import Client, assert_problem

PER_USER_LIMIT = 5


def test_per_user_throttle(create_user: Callable[..., dict], admin_credentials: tuple[str, str]) -> None:
    u = create_user("viewer")
    statuses = []
    last = None
    for attempt in range(PER_USER_LIMIT + 1):
        last = Client().post("/api/v1/auth/login",
                             json={"username": u["username"], "password": f"wrong-password-{attempt}"})
        statuses.append(last.status_code)
    assert statuses[:PER_USER_LIMIT - 1] == [401] * (PER_USER_LIMIT - 1), statuses
    assert statuses[PER_USER_LIMIT - 1] in (401, 429), statuses
    assert statuses[PER_USER_LIMIT] == 429, statuses
    assert_problem(last, 429)
    retry_after = last.headers.get("Retry-After", "")
    assert retry_after.isdigit() and 0 < int(retry_after) <= 24 * 3600, f"Retry-After {retry_after!r}"

    # while throttled, even the right password is refused (else guessing could go on)
    right = Client().post("/api/v1/auth/login", json={"username": u["username"], "password": u["password"]})
    assert_problem(right, 429)

    # the throttle is per user: others (same address) still sign in
    admin = Client()
    r = admin.login(*admin_credentials)
    assert r.status_code == 200, f"the admin was throttled too: {r.status_code} {r.text[:300]}"
