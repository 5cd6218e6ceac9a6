# SPDX-License-Identifier: Apache-2.0
"""Seeds a fresh stack with a little realistic data and captures the web UI's main screens (scripts/screenshots).

Environment (set by scripts/screenshots):
  SHOT_BASE_URL, SHOT_ADMIN_PASSWORD, SHOT_DB_URL, SHOT_PSQL, SHOT_OUT (directory for the PNGs),
  SHOT_PORTS (the loopback fleet's sshd ports), SHOT_SSH_USER, SHOT_SSH_PASSWORD
Every server is on 127.0.0.1 (the fleet): an executor runs the jobs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests
from playwright.sync_api import expect, sync_playwright

BASE = os.environ["SHOT_BASE_URL"]
OUT = Path(os.environ["SHOT_OUT"])
PORTS = [int(p) for p in os.environ["SHOT_PORTS"].split(",")]
FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}


class Api:
    def __init__(self) -> None:
        self.s = requests.Session()
        r = self.s.post(f"{BASE}/api/v1/auth/login", json={"username": "admin", "password": os.environ["SHOT_ADMIN_PASSWORD"]})
        r.raise_for_status()
        token = r.json()["csrf_token"]
        cookie = r.headers["Set-Cookie"].split(";", 1)[0]
        self.s.headers.update({"X-CSRF-Token": token, "Cookie": cookie})

    def call(self, method: str, path: str, body: dict | None = None, want: int = 200) -> dict:
        r = self.s.request(method, BASE + path, json=body, timeout=60)
        assert r.status_code == want, f"{method} {path}: {r.status_code} {r.text[:400]}"
        return r.json() if r.content else {}


def psql(sql: str) -> None:
    subprocess.run([os.environ["SHOT_PSQL"], "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", os.environ["SHOT_DB_URL"]],
                   input=sql, text=True, check=True, capture_output=True)


def wait(api: Api, eid: int, want: set[str] = FINISHED, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        e = api.call("GET", f"/api/v1/executions/{eid}")
        if e["status"] in want:
            return e
        assert time.monotonic() < deadline, f"execution {eid}: {e['status']}"
        time.sleep(0.2)


DEPLOY = r"""#!/bin/sh
set -eu
c() { printf '\033[%sm%s\033[0m\n' "$1" "$2"; }
c '1;34' "==> deploying web release 2026.11.3 on $(hostname)"
echo "fetching artifact web-2026.11.3.tar.gz (14.2 MB)"
sleep 0.3
c 32 "✔ checksum ok (sha256 7f3c…e91a)"
echo "unpacking into /srv/web/releases/2026.11.3"
c 33 "warning: 2 static assets unchanged, reusing"
sleep 0.3
echo "running migrations: 3 pending"
for m in 0041_add_index 0042_backfill_slugs 0043_drop_legacy; do echo "  applied $m"; done
c 32 "✔ health check passed (HTTP 200 in 38 ms)"
echo "switching symlink current -> 2026.11.3"
c '1;32' "deploy finished"
"""

BACKUP = """#!/bin/sh
set -eu
echo "dumping database app (retention ${RETENTION_DAYS} days)"
sleep 0.4
echo "wrote /var/backups/app-$(date +%F).sql.zst (212 MB)"
echo "uploaded with key ${BACKUP_KEY}"
"""

DISK = """#!/bin/sh
used=$(( ${SSH_CONNECTION##* } % 100 ))
echo "/ is ${used}% full"
if [ "$used" -gt 60 ]; then echo "disk usage above 60%" >&2; exit 3; fi
"""


def seed(api: Api) -> dict:
    ports = PORTS + PORTS[:1] * (3 - len(PORTS))
    user, pw = os.environ["SHOT_SSH_USER"], os.environ["SHOT_SSH_PASSWORD"]
    servers = {}
    for name, port, tags, desc in (("web-1", ports[0], ["web", "prod"], "Frontend, rack A"),
                                   ("web-2", ports[1], ["web", "prod"], "Frontend, rack B"),
                                   ("db-1", ports[2], ["db", "prod"], "PostgreSQL primary")):
        s = api.call("POST", "/api/v1/servers", {"name": name, "host": "127.0.0.1", "port": port, "username": user,
                                                 "auth_method": "password", "password": pw, "tags": tags,
                                                 "description": desc}, 201)
        api.call("POST", f"/api/v1/servers/{s['id']}/test")
        servers[name] = s["id"]
    web, db = [servers["web-1"], servers["web-2"]], [servers["db-1"]]
    jobs = {
        "deploy-web": api.call("POST", "/api/v1/jobs", {
            "name": "deploy-web", "description": "Roll out the web release", "script": DEPLOY, "server_ids": web,
            "tags": ["deploy", "web"], "timeout_seconds": 900, "max_parallel": 2}, 201),
        "nightly-backup": api.call("POST", "/api/v1/jobs", {
            "name": "nightly-backup", "description": "pg_dump to object storage", "script": BACKUP, "server_ids": db,
            "env": {"RETENTION_DAYS": "14"}, "secret_env": {"BACKUP_KEY": "s3cr3t-backup-key"},
            "schedule": "0 2 * * *", "timezone": "Europe/Berlin", "retries": 2, "tags": ["backup", "nightly"],
            "notify": [{"on": ["failed", "timed_out"], "type": "email", "to": "ops@example.com"}]}, 201),
        "disk-check": api.call("POST", "/api/v1/jobs", {
            "name": "disk-check", "description": "Alert when a disk fills up", "script": DISK,
            "server_ids": web + db, "schedule": "*/15 * * * *", "tags": ["monitoring"]}, 201),
        "log-rotate": api.call("POST", "/api/v1/jobs", {
            "name": "log-rotate", "script": "echo rotating logs\nfor i in $(seq 1 300); do echo \"compressed app.log.$i\"; sleep 0.4; done\n",
            "server_ids": web, "tags": ["maintenance"]}, 201),
    }
    # Two weeks of history for the chart (finished rows only: nothing for an executor to claim).
    psql(f"""
        INSERT INTO executions (job_id, job_name, status, trigger, script, timeout_seconds, max_parallel,
                                created_at, started_at, finished_at, exit_code)
        SELECT j.id, j.name, s.status, 'schedule', j.script, 3600, 10, t, t, t + (20 + random() * 200) * interval '1 s',
               CASE s.status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 ELSE NULL END
        FROM generate_series(1, 13) AS d(n)
        CROSS JOIN LATERAL (SELECT now() - d.n * interval '1 day' - random() * interval '20 hours' AS t) AS tt
        CROSS JOIN jobs j
        CROSS JOIN LATERAL (SELECT CASE WHEN random() < 0.12 THEN 'failed' WHEN random() < 0.05 THEN 'timed_out'
                                        WHEN random() < 0.04 THEN 'cancelled' ELSE 'succeeded' END AS status
                            FROM generate_series(1, 2 + (d.n * 7 + j.id * 3) % 5) AS k(i)) AS s
        WHERE j.id IN ({jobs['deploy-web']['id']}, {jobs['nightly-backup']['id']}, {jobs['disk-check']['id']});
        """)
    runs = {}
    for name in ("nightly-backup", "disk-check", "deploy-web"):
        e = api.call("POST", f"/api/v1/jobs/{jobs[name]['id']}/run", {}, 202)
        runs[name] = wait(api, e["id"])
    runs["log-rotate"] = api.call("POST", f"/api/v1/jobs/{jobs['log-rotate']['id']}/run", {}, 202)
    wait(api, runs["log-rotate"]["id"], {"running"})
    for username, role in (("alice", "operator"), ("bob", "viewer"), ("carol", "admin")):
        api.call("POST", "/api/v1/users", {"username": username, "password": "correct-horse-battery", "role": role}, 201)
    api.call("POST", "/api/v1/tokens", {"name": "ci-deploy"}, 201)
    return {"servers": servers, "jobs": jobs, "runs": runs}


def capture(data: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        ctx = browser.new_context(base_url=BASE, viewport={"width": 1280, "height": 860}, color_scheme="light",
                                  device_scale_factor=1)
        page = ctx.new_page()
        expect.set_options(timeout=15000)

        def shot(name: str, full: bool = False) -> None:
            expect(page.locator("main .loading")).to_have_count(0)
            page.mouse.move(0, 0)
            page.screenshot(path=str(OUT / f"{name}.png"), full_page=full)
            print(f"wrote {OUT / name}.png", file=sys.stderr)

        page.goto("/")
        expect(page.get_by_role("heading", name="Sign in to tsubame-ci")).to_be_visible()
        page.get_by_label("Username", exact=True).fill("admin")
        shot("signin")
        page.get_by_label("Password", exact=True).fill(os.environ["SHOT_ADMIN_PASSWORD"])
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        expect(page.get_by_text("log-rotate #")).to_be_visible()
        shot("dashboard")

        page.goto("/#/servers")
        expect(page.get_by_role("heading", name="Servers", level=1)).to_be_visible()
        expect(page.get_by_role("link", name="db-1", exact=True)).to_be_visible()
        shot("servers")
        page.goto(f"/#/servers/{data['servers']['web-1']}")
        expect(page.get_by_role("heading", name="Edit web-1")).to_be_visible()
        page.get_by_role("button", name="Test connection").click()
        expect(page.get_by_text("Connected to web-1")).to_be_visible()
        shot("server")

        page.goto("/#/jobs")
        expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
        expect(page.get_by_role("link", name="nightly-backup", exact=True)).to_be_visible()
        shot("jobs")
        page.goto(f"/#/jobs/{data['jobs']['nightly-backup']['id']}")
        expect(page.get_by_role("heading", name="nightly-backup", level=1)).to_be_visible()
        expect(page.get_by_text("Next runs (Europe/Berlin)")).to_be_visible()
        shot("job")
        page.get_by_role("heading", name="Limits", exact=True).evaluate("h => { h.scrollIntoView(); window.scrollBy(0, -80); }")
        shot("job-schedule")

        page.goto("/#/executions")
        expect(page.get_by_role("heading", name="Executions", level=1)).to_be_visible()
        expect(page.get_by_role("link", name="deploy-web").first).to_be_visible()
        shot("executions")
        page.goto(f"/#/executions/{data['runs']['deploy-web']['id']}")
        expect(page.get_by_role("heading", name=f"deploy-web #{data['runs']['deploy-web']['id']}")).to_be_visible()
        expect(page.get_by_role("log").get_by_text("deploy finished").first).to_be_visible()
        shot("execution")
        page.goto(f"/#/executions/{data['runs']['log-rotate']['id']}")
        expect(page.get_by_role("heading", name=f"log-rotate #{data['runs']['log-rotate']['id']}")).to_be_visible()
        expect(page.get_by_role("log").get_by_text("compressed app.log.3", exact=True).first).to_be_visible()
        shot("execution-live")

        page.goto("/#/users")
        expect(page.get_by_role("heading", name="Users", level=1)).to_be_visible()
        expect(page.get_by_text("carol")).to_be_visible()
        shot("users")
        page.goto("/#/tokens")
        expect(page.get_by_role("heading", name="API tokens", level=1)).to_be_visible()
        page.get_by_label("Token name", exact=True).fill("nightly-report")
        page.get_by_role("button", name="Create token").click()
        expect(page.get_by_text("Copy it now")).to_be_visible()
        shot("tokens")
        browser.close()


def main() -> None:
    api = Api()
    data = seed(api)
    try:
        capture(data)
    finally:
        api.call("POST", f"/api/v1/executions/{data['runs']['log-rotate']['id']}/cancel", None, 202)


if __name__ == "__main__":
    main()
