# SPDX-License-Identifier: MIT
"""Steps of `scripts/bench scale`: the history API on a database of a million executions.

Run by scripts/bench with the stack already started; not meant to be run by hand. Standard library only.
Progress goes to stderr; each step prints its result (JSON) on stdout.

seed      signs in as a browser would, creates an API token, BENCH_SERVERS servers and BENCH_JOBS jobs through
          the API (1-5 servers each, no schedule; one job in 20 keeps its history 90 days instead of the
          default). Prints {"token": ...}.
paths     picks the requests to measure from the generated history (psql): for each kind a file of
          BENCH_PATHS request paths, written to BENCH_WORK/paths-KIND.txt. The oldest day, which the
          retention sweep deletes while it is measured, is left out. Kinds:
            list_first   GET /api/v1/executions?limit=50
            list_job     ... &job_id=J (any job, uniformly)
            list_status  ... &status=S (each of the six statuses, uniformly: running and queued are rare)
            list_server  ... &server_id=S (any server)
            list_deep    ... &cursor=C, C at a random point of the whole history
            list_time    ... &since=D&until=D+1 day, a random day
            log_old      GET /api/v1/executions/{id}/log?after=N&limit=BENCH_LOG_LIMIT, an execution of the
                         older half of the history (by id), N uniform in [0, last_seq)
            log_new      the same for the newer half
            log_tail     ...log?before=2^53-1&limit=2 (what the web UI asks first), any execution
check     one request of each kind, its JSON checked (items, next_cursor, the chunks asked for).

wrk sends the measured requests (scale_wrk.lua: a random kind, then a random path of it).
"""

import base64
import http.client
import json
import os
import random
import subprocess
import sys
import time
from urllib.parse import urlsplit

ENV = os.environ
BASE = ENV.get("BENCH_BASE_URL", "")
U = urlsplit(BASE)
WORK = ENV.get("BENCH_WORK", ".")
LIST_KINDS = ["list_first", "list_job", "list_status", "list_server", "list_deep", "list_time"]
LOG_KINDS = ["log_old", "log_new", "log_tail"]
STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
TOP = 2 ** 53 - 1


def psql(sql):
    r = subprocess.run([ENV["BENCH_PSQL"], "-X", "-q", "-t", "-A", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", ENV["BENCH_DB_URL"]],
                       input=sql, text=True, capture_output=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"psql failed: {r.stderr}\n{sql[:500]}")
    return [line.split("\t") for line in r.stdout.splitlines() if line]


class Client:
    def __init__(self, headers=None):
        self.headers = {"Accept": "application/json", **(headers or {})}
        self.conn = None

    def request(self, method, path, body=None, extra=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(U.hostname, U.port, timeout=60)
            h = dict(self.headers, **(extra or {}))
            if body is not None:
                h["Content-Type"] = "application/json"
            try:
                self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=h)
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r, data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method, path, body=None, extra=None, want=(200, 201)):
        r, data = self.request(method, path, body, extra)
        if r.status not in want:
            sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")
        return r, json.loads(data) if data else None


def seed():
    c = Client()
    r, me = c.call("POST", "/api/v1/auth/login", {"username": "admin", "password": ENV["BENCH_ADMIN_PASSWORD"]})
    session = {"Cookie": r.getheader("Set-Cookie").split(";", 1)[0], "X-CSRF-Token": me["csrf_token"]}
    _, tok = c.call("POST", "/api/v1/tokens", {"name": "bench-scale"}, session)
    bearer = {"Authorization": "Bearer " + tok["token"]}
    rnd = random.Random(20261130)
    nservers, njobs = int(ENV.get("BENCH_SERVERS", "100")), int(ENV.get("BENCH_JOBS", "200"))
    roles = ["web", "db", "worker", "backup", "cache"]
    servers = []
    for i in range(1, nservers + 1):
        role = roles[i % len(roles)]
        _, s = c.call("POST", "/api/v1/servers", {
            "name": f"{role}-{i:03d}", "host": f"10.1.{i // 250}.{i % 250 + 1}", "port": 22, "username": "deploy",
            "auth_method": "password", "password": f"pw-{rnd.getrandbits(64):x}", "description": f"{role} server {i}",
            "tags": [role, rnd.choice(["prod", "staging"])]}, bearer)
        servers.append(s["id"])
    verbs = ["deploy", "backup", "rotate-logs", "health-check", "sync", "cleanup", "renew-certs", "reindex", "report", "build"]
    apps = ["shop", "billing", "search", "auth", "media", "analytics", "mail", "docs", "api", "cms"]
    lines = ["set -eu", "cd /srv/{app}", "git fetch --quiet origin", "git checkout --quiet \"$REF\"", "./bin/migrate --env {env}",
             "systemctl reload {app}", "find /var/log/{app} -name '*.gz' -mtime +14 -delete",
             "pg_dump --format=custom {app} > /backup/{app}-$(date +%F).dump", "curl -fsS http://localhost:8080/health",
             "du -sh /srv/{app}/releases/*", "rsync -a --delete /srv/{app}/shared/ backup:/backup/{app}/", "make -j4 all"]
    for j in range(1, njobs + 1):
        verb, app, env = rnd.choice(verbs), rnd.choice(apps), rnd.choice(["prod", "staging"])
        body = {
            "name": f"{verb}-{app}-{env}-{j:03d}", "description": f"{verb} {app} on {env}",
            "script": "#!/bin/sh\n" + "\n".join(x.format(app=app, env=env) for x in rnd.sample(lines, rnd.randint(3, 9))) + "\n",
            "server_ids": rnd.sample(servers, rnd.randint(1, 5)),
            "env": {"APP": app, "ENV": env, "REF": "main"}, "tags": [verb, env],
            "timeout_seconds": rnd.choice([600, 1800, 3600]), "retries": rnd.choice([0, 0, 1]),
        }
        if rnd.random() < 0.2:
            body["secret_env"] = {"API_TOKEN": f"t-{rnd.getrandbits(96):x}"}
        if j % 20 == 0:
            body["retention_days"] = 90
        c.call("POST", "/api/v1/jobs", body, bearer)
    print(json.dumps({"token": tok["token"], "servers": len(servers), "jobs": njobs}))


def cursor(n):
    return base64.urlsafe_b64encode(f"v1:{n}".encode()).decode().rstrip("=")


def paths():
    n = int(ENV.get("BENCH_PATHS", "2000"))
    limit = int(ENV.get("BENCH_LOG_LIMIT", "100"))
    rnd = random.Random(7)
    (lo, hi, first, last), = psql("""
        WITH kept AS (SELECT * FROM executions WHERE created_at >= (SELECT min(created_at) FROM executions) + interval '1 day')
        SELECT min(id), max(id), extract(epoch FROM min(created_at))::bigint, extract(epoch FROM max(created_at))::bigint FROM kept""")
    lo, hi, first, last = int(lo), int(hi), int(first), int(last)
    jobs = [int(r[0]) for r in psql("SELECT id FROM jobs ORDER BY id")]
    servers = [int(r[0]) for r in psql("SELECT id FROM servers ORDER BY id")]
    # Executions with output, sampled uniformly by id (ids are dense here): the older and the newer half.
    mid = (lo + hi) // 2
    def sample(a, b, k):
        ids = sorted({rnd.randint(a, b) for _ in range(k * 2)})
        rows = psql(f"SELECT id, last_seq FROM executions WHERE id = ANY('{{{','.join(map(str, ids))}}}'::bigint[]) AND last_seq > 0")
        return [(int(i), int(s)) for i, s in rows]
    old, new = sample(lo, mid, n), sample(mid + 1, hi, n)
    day = 86400
    kinds = {
        "list_first": ["/api/v1/executions?limit=50"],
        "list_job": [f"/api/v1/executions?limit=50&job_id={rnd.choice(jobs)}" for _ in range(n)],
        "list_status": [f"/api/v1/executions?limit=50&status={rnd.choice(STATUSES)}" for _ in range(n)],
        "list_server": [f"/api/v1/executions?limit=50&server_id={rnd.choice(servers)}" for _ in range(n)],
        "list_deep": [f"/api/v1/executions?limit=50&cursor={cursor(rnd.randint(lo + 100, hi))}" for _ in range(n)],
        "list_time": [],
        "log_old": [f"/api/v1/executions/{i}/log?after={rnd.randrange(s)}&limit={limit}" for i, s in old],
        "log_new": [f"/api/v1/executions/{i}/log?after={rnd.randrange(s)}&limit={limit}" for i, s in new],
        "log_tail": [f"/api/v1/executions/{i}/log?before={TOP}&limit=2" for i, _ in (old + new)[::2]],
    }
    for _ in range(n):
        t = rnd.randint(first, max(first, last - day))
        iso = lambda s: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))
        kinds["list_time"].append(f"/api/v1/executions?limit=50&since={iso(t)}&until={iso(t + day)}")
    for kind, ps in kinds.items():
        rnd.shuffle(ps)
        with open(os.path.join(WORK, f"paths-{kind}.txt"), "w") as f:
            f.write("\n".join(ps) + "\n")
    print(json.dumps({k: len(v) for k, v in kinds.items()}))


def load_paths(kinds):
    out = {}
    for k in kinds:
        with open(os.path.join(WORK, f"paths-{k}.txt")) as f:
            out[k] = [line.strip() for line in f if line.strip()]
    return out


def bearer():
    return {"Authorization": "Bearer " + ENV["BENCH_TOKEN"]}


def check():
    """One request of each kind, fully checked; prints the bytes of each answer."""
    c = Client(bearer())
    sizes = {}
    for kind, ps in load_paths(LIST_KINDS + LOG_KINDS).items():
        path = ps[0]
        r, data = c.request("GET", path)
        if r.status != 200:
            sys.exit(f"check {kind}: GET {path}: {r.status} {data[:300]!r}")
        d = json.loads(data)
        if kind.startswith("list_"):
            items = d["items"]
            if kind in ("list_first", "list_deep", "list_job") and not items:
                sys.exit(f"check {kind}: GET {path}: no items")
            if kind == "list_first" and (len(items) != 50 or not d["next_cursor"]):
                sys.exit(f"check {kind}: expected 50 items and a next cursor, got {len(items)}")
            ids = [i["id"] for i in items]
            if ids != sorted(ids, reverse=True):
                sys.exit(f"check {kind}: items not newest first")
            if items and not items[0]["targets"]:
                sys.exit(f"check {kind}: an execution without targets")
        else:
            chunks = d["chunks"]
            if not chunks:
                sys.exit(f"check {kind}: GET {path}: no chunks")
            if kind != "log_tail":
                after = int(path.split("after=")[1].split("&")[0])
                if chunks[0]["seq"] != after + 1:
                    sys.exit(f"check {kind}: first seq {chunks[0]['seq']}, expected {after + 1}")
            if d["next_seq"] != chunks[-1]["seq"]:
                sys.exit(f"check {kind}: next_seq {d['next_seq']} is not the last chunk's seq")
        sizes[kind] = len(data)
    print(json.dumps(sizes))


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    steps = {"seed": seed, "paths": paths, "check": check}
    if step not in steps:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(steps)}")
    steps[step]()
