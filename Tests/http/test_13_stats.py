# SPDX-License-Identifier: Apache-2.0
"""The dashboard's figures (GET /api/v1/stats) and the cron helper (GET /api/v1/schedule/preview)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Callable

from executor import psql
from helpers import Client, assert_problem, error_fields, parse_time


def test_stats_count_executions_by_status_and_day(viewer: Client, operator: Client,
                                                  make_job: Callable[..., dict]) -> None:
    before = viewer.ok("GET", "/api/v1/stats")
    assert before["days"] == 14 and len(before["daily"]) == 14
    today = datetime.now(timezone.utc).date()
    assert before["daily"][-1]["date"] == today.isoformat()
    assert before["daily"][0]["date"] == (today - timedelta(days=13)).isoformat()
    assert set(before["executions_by_status"]) == {"queued", "running", "succeeded", "failed", "cancelled", "timed_out"}
    job = make_job()
    e1 = operator.ok("POST", f"/api/v1/jobs/{job['id']}/run", status=202)
    e2 = operator.ok("POST", f"/api/v1/jobs/{job['id']}/run", status=202)
    operator.ok("POST", f"/api/v1/executions/{e1['id']}/cancel", status=202)
    # One more that succeeded three days ago (as an executor would have recorded it).
    psql("UPDATE executions SET status = 'succeeded', created_at = now() - interval '3 days', started_at = now() - interval '3 days', "
         "finished_at = now() - interval '3 days' WHERE id = :id; "
         "UPDATE execution_targets SET status = 'cancelled', finished_at = now() WHERE execution_id = :id", id=e2["id"])
    after = viewer.ok("GET", "/api/v1/stats")
    assert after["jobs"] == before["jobs"] + 1 and after["servers"] >= 1
    assert after["executions_by_status"]["cancelled"] == before["executions_by_status"]["cancelled"] + 1
    assert after["executions_by_status"]["succeeded"] == before["executions_by_status"]["succeeded"] + 1
    assert after["daily"][-1]["cancelled"] == before["daily"][-1]["cancelled"] + 1
    assert after["daily"][-4]["succeeded"] == before["daily"][-4]["succeeded"] + 1
    done = sum(after["executions_by_status"][s] for s in ("succeeded", "failed", "cancelled", "timed_out"))
    assert after["success_rate"] == round(after["executions_by_status"]["succeeded"] / done, 3)
    week = viewer.ok("GET", "/api/v1/stats", params={"days": 2})
    assert len(week["daily"]) == 2 and week["executions_by_status"]["succeeded"] <= after["executions_by_status"]["succeeded"]
    for bad in ("0", "91", "x"):
        assert_problem(viewer.get("/api/v1/stats", params={"days": bad}), 400)
    assert_problem(Client().get("/api/v1/stats"), 401)


def test_schedule_preview(viewer: Client) -> None:
    p = viewer.ok("GET", "/api/v1/schedule/preview", params={"schedule": "30 2 * * *", "timezone": "Asia/Tokyo"})
    runs = [parse_time(t) for t in p["next_runs"]]
    assert len(runs) == 5 and runs == sorted(runs) and runs[0] > datetime.now(timezone.utc)
    # 02:30 in Tokyo is 17:30 UTC, every day.
    assert all((t.hour, t.minute) == (17, 30) for t in runs)
    assert all(b - a == timedelta(days=1) for a, b in zip(runs, runs[1:]))
    assert viewer.ok("GET", "/api/v1/schedule/preview", params={"schedule": "@hourly"})["timezone"] == "UTC"
    r = viewer.get("/api/v1/schedule/preview", params={"schedule": "61 * * * *", "timezone": "Mars/Olympus"})
    assert set(error_fields(assert_problem(r, 422))) == {"schedule", "timezone"}
    assert error_fields(assert_problem(viewer.get("/api/v1/schedule/preview"), 422)) == ["schedule"]
