#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes Sources/TsubameHTTP/Resources/openapi.json (the document GET /api/openapi.json serves).

The JSON is generated so that shared shapes (Problem responses, list pages, field
rules) are written once. Edit this file and run `python3 Tests/http/gen_openapi.py`,
then check the result with `openapi-spec-validator`. Only what is implemented is
described: add paths here as they land.
"""
import json
import sys
from pathlib import Path

REF = lambda name: {"$ref": f"#/components/schemas/{name}"}
RESP = lambda name: {"$ref": f"#/components/responses/{name}"}

ID = {"type": "integer", "format": "int64", "minimum": 1}
TIME = {"type": "string", "format": "date-time"}
TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
TAG = {"type": "string", "minLength": 1, "maxLength": 50, "pattern": "^[A-Za-z0-9_.:-]+$"}
TAGS = {"type": "array", "maxItems": 20, "items": TAG}
ENV_NAME = "^[A-Za-z_][A-Za-z0-9_]{0,127}$"
ENV = {
    "type": "object",
    "maxProperties": 100,
    "propertyNames": {"pattern": ENV_NAME},
    "additionalProperties": {"type": "string", "maxLength": 32768},
}
EXECUTION_STATUS = {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]}
TRIGGER = {"type": "string", "enum": ["manual", "schedule", "api", "dependency", "retry"]}

schemas = {}

schemas["Problem"] = {
    "type": "object",
    "description": "RFC 9457 problem details. Every 4xx/5xx answer of the API has this shape "
    "and the media type application/problem+json.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "examples": ["about:blank"]},
        "title": {"type": "string", "examples": ["Validation failed"]},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string", "examples": ["port"]},
                    "message": {"type": "string", "examples": ["must be between 1 and 65535"]},
                },
            },
        },
    },
}

schemas["Health"] = {
    "type": "object",
    "required": ["status", "database", "executors"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "database": {"type": "string", "enum": ["ok", "unreachable"]},
        "executors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "host", "last_seen"],
                "properties": {
                    "id": {"type": ["integer", "string"]},
                    "host": {"type": "string"},
                    "last_seen": TIME,
                },
            },
        },
    },
}

ROLE = {"type": "string", "enum": ["viewer", "operator", "admin"]}
USERNAME = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_.@-]+$"}
PASSWORD = {"type": "string", "minLength": 10, "maxLength": 1024, "writeOnly": True}

schemas["User"] = {
    "type": "object",
    "required": ["id", "username", "role", "disabled", "created_at", "updated_at"],
    "properties": {
        "id": ID,
        "username": {"type": "string"},
        "role": ROLE,
        "disabled": {"type": "boolean"},
        "created_at": TIME,
        "updated_at": TIME,
    },
}
schemas["UserCreate"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["username", "password", "role"],
    "properties": {"username": USERNAME, "password": PASSWORD, "role": ROLE},
}
schemas["UserPatch"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Every field is optional; absent fields are left as they are. Disabling a user "
    "also ends their sessions and makes their API tokens unusable.",
    "properties": {"password": PASSWORD, "role": ROLE, "disabled": {"type": "boolean"}},
}
schemas["Login"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["username", "password"],
    "properties": {"username": {"type": "string"}, "password": {"type": "string", "writeOnly": True}},
}
schemas["Session"] = {
    "type": "object",
    "required": ["user", "csrf_token"],
    "properties": {
        "user": REF("User"),
        "csrf_token": {
            "type": "string",
            "description": "Send as X-CSRF-Token on every cookie-authenticated POST/PATCH/DELETE.",
        },
    },
}

schemas["Me"] = {
    "type": "object",
    "required": ["user", "csrf_token"],
    "properties": {
        "user": REF("User"),
        "csrf_token": {
            "type": ["string", "null"],
            "description": "The CSRF token of the caller's session (null or empty when the caller "
                           "authenticated with a Bearer token).",
        },
    },
}

schemas["Token"] = {
    "type": "object",
    "required": ["id", "name", "user_id", "username", "created_at", "last_used_at"],
    "properties": {
        "id": ID,
        "name": {"type": "string"},
        "user_id": ID,
        "username": {"type": "string"},
        "created_at": TIME,
        "last_used_at": TIME_OR_NULL,
    },
}
schemas["TokenCreated"] = {
    "allOf": [
        REF("Token"),
        {
            "type": "object",
            "required": ["token"],
            "properties": {
                "token": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The secret, shown only in this answer (stored hashed). "
                    "Use it as `Authorization: Bearer TOKEN`.",
                }
            },
        },
    ]
}
schemas["TokenCreate"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100}},
}

schemas["HostKey"] = {
    "type": "object",
    "required": ["algorithm", "fingerprint_sha256", "trusted_at"],
    "properties": {
        "algorithm": {"type": "string", "examples": ["ssh-ed25519"]},
        "fingerprint_sha256": {
            "type": "string",
            "pattern": "^SHA256:[A-Za-z0-9+/]+$",
            "description": "As `ssh-keygen -lf` prints it: `SHA256:` + unpadded base64.",
        },
        "trusted_at": TIME,
    },
}
AUTH_METHOD = {"type": "string", "enum": ["password", "key"]}
schemas["Server"] = {
    "type": "object",
    "description": "An SSH target. Password, private key and passphrase are write-only and never returned.",
    "required": [
        "id", "name", "host", "port", "username", "auth_method", "description", "tags",
        "host_key", "has_password", "has_private_key", "has_passphrase", "max_concurrent", "created_at", "updated_at",
    ],
    "properties": {
        "id": ID,
        "name": {"type": "string"},
        "host": {"type": "string"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "username": {"type": "string"},
        "auth_method": AUTH_METHOD,
        "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "host_key": {"oneOf": [REF("HostKey"), {"type": "null"}]},
        "has_password": {"type": "boolean"},
        "has_private_key": {"type": "boolean"},
        "has_passphrase": {"type": "boolean"},
        "max_concurrent": {"type": "integer", "minimum": 1, "maximum": 1000,
                           "description": "Targets that may run on this server at once, over all jobs and executors."},
        "created_at": TIME,
        "updated_at": TIME,
    },
}
SERVER_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": 100},
    "host": {"type": "string", "minLength": 1, "maxLength": 255},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 22},
    "username": {"type": "string", "minLength": 1, "maxLength": 64},
    "auth_method": AUTH_METHOD,
    "password": {"type": "string", "writeOnly": True},
    "private_key": {"type": "string", "writeOnly": True, "description": "PEM or OpenSSH private key."},
    "passphrase": {"type": "string", "writeOnly": True},
    "description": {"type": "string", "maxLength": 2000},
    "tags": TAGS,
    "max_concurrent": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 4,
                       "description": "Targets that may run on this server at once, over all jobs and executors."},
}
schemas["ServerCreate"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "host", "username", "auth_method"],
    "properties": SERVER_FIELDS,
    "description": "auth_method `password` requires `password`; `key` requires `private_key`.",
    "allOf": [
        {
            "if": {"properties": {"auth_method": {"const": "password"}}, "required": ["auth_method"]},
            "then": {"required": ["password"]},
        },
        {
            "if": {"properties": {"auth_method": {"const": "key"}}, "required": ["auth_method"]},
            "then": {"required": ["private_key"]},
        },
    ],
}
schemas["ServerPatch"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Every field is optional. `host_key: null` clears a pinned host key "
    "(the next connection trusts the key it sees).",
    "properties": dict(
        SERVER_FIELDS,
        port={"type": "integer", "minimum": 1, "maximum": 65535},
        host_key={"type": "null"},
    ),
}

SSH_FAILURES = ["dns", "refused", "unreachable", "timeout", "hostKeyChanged", "authFailed", "rsaSHA1Refused",
                "shellNotFound", "protocolError", "disconnected"]
schemas["ServerTestResult"] = {
    "type": "object",
    "description": "The outcome of connecting, checking the host key, authenticating and running `true`.",
    "required": ["ok", "latency_ms", "host_key"],
    "properties": {
        "ok": {"type": "boolean"},
        "latency_ms": {"type": "number", "minimum": 0,
                       "description": "Milliseconds from the start of the connection to the end of `true` "
                                      "(or to the failure)."},
        "host_key": {
            "description": "The key the server presented (also when it did not match the pinned one); null when "
                           "none was seen. `trusted_at` is set when this key is the pinned one.",
            "oneOf": [{
                "type": "object",
                "required": ["algorithm", "fingerprint_sha256", "trusted_at"],
                "properties": {
                    "algorithm": {"type": ["string", "null"], "examples": ["ssh-ed25519"]},
                    "fingerprint_sha256": {"type": "string", "pattern": "^SHA256:[A-Za-z0-9+/]+$"},
                    "trusted_at": TIME_OR_NULL,
                },
            }, {"type": "null"}],
        },
        "error": {"type": "string", "description": "When ok is false: what went wrong and what to do."},
        "failure": {"type": "string", "enum": SSH_FAILURES, "description": "When ok is false: the kind of failure."},
    },
}

NOTIFY_ON = ["started", "succeeded", "failed", "cancelled", "timed_out", "running_long"]
NOTIFY_ON_DOC = ("Events: `started` (the first server started), the final statuses `succeeded`, `failed`, `cancelled`, "
                 "`timed_out`, and `running_long` (running longer than `factor` × the median duration of the job's last 20 "
                 "succeeded runs; needs at least 3 of them; sent once per run).")
NOTIFY = {
    "type": "object",
    "required": ["on", "type"],
    "description": "Where to send a notification and on which events. Delivery is asynchronous (an executor sends it, "
                   "retrying with backoff) and recorded in GET /api/v1/notifications; it never affects the run.",
    "properties": {
        "on": {
            "type": "array",
            "items": {"type": "string", "enum": NOTIFY_ON},
            "description": NOTIFY_ON_DOC,
            "examples": [["failed", "timed_out"]],
        },
        "type": {"type": "string", "enum": ["webhook", "slack", "email"],
                 "description": "`webhook`: POST of a JSON body (signed with `X-Tsubame-Signature` when a secret is set); "
                                "`slack`: a Slack incoming-webhook message; `email`: a plain-text mail over SMTP "
                                "(TSUBAME_SMTP_URL)."},
        "url": {"type": "string", "description": "For webhook and slack: an http or https URL."},
        "to": {"type": "string", "description": "For email: the address."},
        "factor": {"type": "number", "minimum": 1.5, "maximum": 100,
                   "description": "For running_long: the multiple of the median duration (default 3)."},
    },
}
schemas["NotifyInput"] = dict(NOTIFY, additionalProperties=False, properties=dict(
    NOTIFY["properties"],
    on={"type": "array", "minItems": 1, "items": {"type": "string", "enum": NOTIFY_ON + ["long_running"]},
        "description": NOTIFY_ON_DOC + " `long_running` is the old name of `running_long` (stored as running_long).",
        "examples": [["failed", "timed_out"]]},
    secret={"type": "string", "writeOnly": True,
            "description": "Webhook only, write-only: 8 to 256 characters that sign each POST "
                           "(`X-Tsubame-Signature: sha256=<hex HMAC-SHA256(secret, body)>`). Absent: an item with the "
                           "same type and url keeps its stored secret; `\"\"` removes it."},
    secret_set={"type": "boolean", "readOnly": True, "description": "Read-only; ignored when sent back."}))
schemas["Notify"] = dict(NOTIFY, properties=dict(
    NOTIFY["properties"], url={"type": ["string", "null"]}, to={"type": ["string", "null"]},
    secret_set={"type": "boolean", "description": "Webhook items: whether a signing secret is stored (it is never shown)."}))

NOTIFY_EVENT = {"type": "string", "enum": NOTIFY_ON + ["test"]}
DELIVERY_STATUS = {"type": "string", "enum": ["pending", "sent", "failed"]}
schemas["NotificationDelivery"] = {
    "type": "object",
    "description": "One notification to one receiver and what came of it. Pending ones are sent (again) at "
                   "`next_attempt_at`; after the last attempt (TSUBAME_NOTIFY_MAX_ATTEMPTS) a failing one is `failed`.",
    "required": ["id", "job_id", "job_name", "execution_id", "event", "type", "destination", "status", "attempts",
                 "next_attempt_at", "last_error", "response_code", "created_at", "sent_at"],
    "properties": {
        "id": ID,
        "job_id": {"type": ["integer", "null"], "format": "int64", "minimum": 1, "description": "Null once the job was deleted."},
        "job_name": {"type": ["string", "null"]},
        "execution_id": {"type": ["integer", "null"], "format": "int64", "minimum": 1,
                         "description": "Null for a test notification."},
        "event": NOTIFY_EVENT,
        "type": {"type": "string", "enum": ["webhook", "slack", "email"]},
        "destination": {"type": "string",
                        "description": "The receiver as people may see it: the e-mail address, or the URL without "
                                       "credentials and query (and, for Slack, without its secret path)."},
        "status": DELIVERY_STATUS,
        "attempts": {"type": "integer", "minimum": 0},
        "next_attempt_at": dict(TIME_OR_NULL, description="When pending: the next attempt."),
        "last_error": {"type": ["string", "null"], "description": "Why the last attempt failed."},
        "response_code": {"type": ["integer", "null"], "description": "The receiver's last answer: HTTP status or SMTP reply code."},
        "created_at": TIME,
        "sent_at": TIME_OR_NULL,
    },
}
schemas["NotifyTestRequest"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Optional; without `item`, every notification of the job is tested.",
    "properties": {"item": dict(REF("NotifyInput"),
                                description="A notification to test before saving it (its `on` is required but not used; "
                                            "without `secret` it uses the stored secret of the job's item with the same url).")},
}
schemas["NotifyTestResult"] = {
    "type": "object",
    "required": ["results"],
    "properties": {"results": {"type": "array", "items": {
        "type": "object",
        "required": ["delivery_id", "type", "destination", "ok"],
        "properties": {
            "delivery_id": ID,
            "type": {"type": "string", "enum": ["webhook", "slack", "email"]},
            "destination": {"type": "string"},
            "ok": {"type": "boolean"},
            "status_code": {"type": "integer", "description": "The HTTP status or SMTP reply code, when there was an answer."},
            "error": {"type": "string", "description": "When ok is false: what went wrong."},
        },
    }}},
}

RUN_AFTER_CONDITION = {"type": "string", "enum": ["success", "failure", "always"], "default": "success",
                       "description": "Which outcome of a `run_after` job's run starts this job: `success` (succeeded), "
                                      "`failure` (failed or timed out) or `always` (any, cancelled included)."}
schemas["Job"] = {
    "type": "object",
    "required": [
        "id", "name", "description", "script", "server_ids", "env", "secret_env_names",
        "timeout_seconds", "schedule", "timezone", "misfire", "next_runs", "concurrency",
        "max_parallel", "retries", "tags", "enabled", "notify", "run_after", "run_after_condition", "retention_days", "last_execution",
        "created_at", "updated_at",
    ],
    "properties": {
        "id": ID,
        "name": {"type": "string"},
        "description": {"type": "string"},
        "script": {"type": "string"},
        "server_ids": {"type": "array", "items": ID},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "secret_env_names": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Names of the secret variables; their values are never returned.",
        },
        "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 86400},
        "schedule": {"type": ["string", "null"]},
        "timezone": {"type": "string"},
        "misfire": {"type": "string", "enum": ["run_once", "skip"]},
        "next_runs": {
            "type": "array",
            "maxItems": 5,
            "items": TIME,
            "description": "The next 5 scheduled times; empty when there is no schedule or the job is disabled.",
        },
        "concurrency": {"type": "string", "enum": ["allow", "skip", "queue"]},
        "max_parallel": {"type": "integer", "minimum": 1, "maximum": 1000},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string"}},
        "enabled": {"type": "boolean"},
        "notify": {"type": "array", "items": REF("Notify")},
        "run_after": {"type": "array", "items": ID},
        "run_after_condition": RUN_AFTER_CONDITION,
        "retention_days": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 36500}, {"type": "null"}],
                       "description": "Days its finished executions are kept; null: TSUBAME_RETENTION_DAYS (30)."},
        "last_execution": {
            "description": "The newest execution of the job, or null when it never ran.",
            "oneOf": [
                {
                    "type": "object",
                    "required": ["id", "status", "finished_at"],
                    "properties": {
                        "id": ID,
                        "status": EXECUTION_STATUS,
                        "finished_at": TIME_OR_NULL,
                    },
                },
                {"type": "null"},
            ],
        },
        "created_at": TIME,
        "updated_at": TIME,
    },
}
JOB_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": 100},
    "description": {"type": "string", "maxLength": 2000},
    "script": {"type": "string", "minLength": 1, "description": "At most 1 MiB (UTF-8 bytes)."},
    "server_ids": {"type": "array", "minItems": 1, "maxItems": 1000, "items": ID,
                   "description": "Existing server ids."},
    "env": ENV,
    "secret_env": dict(ENV, writeOnly=True,
                       description="Write-only; values are masked as *** in stored logs."),
    "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 86400, "default": 3600},
    "schedule": {
        "type": ["string", "null"],
        "description": "5-field cron expression or @hourly/@daily/@weekly/@monthly; null = no schedule.",
        "examples": ["*/5 * * * *", "@daily"],
    },
    "timezone": {"type": "string", "default": "UTC", "description": "IANA time zone name."},
    "misfire": {"type": "string", "enum": ["run_once", "skip"]},
    "concurrency": {"type": "string", "enum": ["allow", "skip", "queue"], "default": "allow"},
    "max_parallel": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
    "retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 0},
    "tags": TAGS,
    "enabled": {"type": "boolean", "default": True},
    "notify": {"type": "array", "items": REF("NotifyInput")},
    "run_after": {"type": "array", "items": ID,
                  "description": "Ids of existing jobs: when a run of any of them succeeds, this job runs "
                                 "(`trigger: dependency`, `parent_id` = that run). 422 when it would make a cycle."},
    "run_after_condition": RUN_AFTER_CONDITION,
    "retention_days": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 36500}, {"type": "null"}],
                       "description": "Days its finished executions are kept; null: TSUBAME_RETENTION_DAYS (30)."},
}
schemas["JobCreate"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "script", "server_ids"],
    "properties": JOB_FIELDS,
}


def strip_defaults(props):
    out = {}
    for k, v in props.items():
        v = dict(v)
        v.pop("default", None)
        out[k] = v
    return out


schemas["JobPatch"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Every field is optional; absent fields are left as they are. Fields are replaced "
                   "as a whole, except `secret_env`, which is merged (its values cannot be read back).",
    "properties": dict(strip_defaults(JOB_FIELDS), secret_env={
        "type": "object",
        "propertyNames": {"pattern": ENV_NAME},
        "additionalProperties": {"type": ["string", "null"]},
        "writeOnly": True,
        "description": "Merged into the stored secrets: a string sets one, null removes it, "
                       "names not mentioned stay.",
    }),
}


WAITING_REASON = {
    "type": "string",
    "description": "Present only while queued (on an execution: while any of its targets is): why it has not "
                   "started: no executor alive, retry backoff, dependency pending (a job it runs after is "
                   "unfinished), job concurrency (concurrency `queue` behind an older run, or max_parallel "
                   "reached), server busy (its max_concurrent reached), or waiting to be claimed.",
    "examples": ["no executor alive: start tsubame-executor"],
}
schemas["ExecutionTarget"] = {
    "type": "object",
    "description": "The run of an execution on one server, in the job's server order.",
    "required": ["server_id", "server_name", "status", "exit_code", "started_at", "finished_at", "error", "attempt"],
    "properties": {
        "server_id": {"type": ["integer", "null"], "format": "int64", "minimum": 1,
                      "description": "The server it ran on; server_name is its name at enqueue time."},
        "server_name": {"type": "string"},
        "status": EXECUTION_STATUS,
        "exit_code": {"type": ["integer", "null"]},
        "started_at": TIME_OR_NULL,
        "finished_at": TIME_OR_NULL,
        "error": {"type": ["string", "null"],
                  "description": "Why the target did not run to an exit code (cancelled, executor lost, SSH failure…)."},
        "attempt": {"type": "integer", "minimum": 0, "description": "How many times it was started (retries count)."},
        "waiting_reason": WAITING_REASON,
    },
}
schemas["Execution"] = {
    "type": "object",
    "description": "One run of a job. Status: `queued` → `running` → one of `succeeded`, `failed`, "
                   "`cancelled`, `timed_out`. `exit_code` is 0 when every target exited 0, else the first "
                   "non-zero target code in server order, null when no target produced one.",
    "required": [
        "id", "job_id", "job_name", "status", "trigger", "triggered_by", "parent_id", "created_at", "started_at",
        "finished_at", "duration_ms", "exit_code", "output_truncated", "targets",
    ],
    "properties": {
        "id": ID,
        "job_id": {"type": ["integer", "null"], "format": "int64", "minimum": 1,
                   "description": "Null once the job was deleted (job_name keeps its name)."},
        "job_name": {"type": "string"},
        "status": EXECUTION_STATUS,
        "trigger": dict(TRIGGER, description="`manual` when started from a signed-in session, `api` with a "
                                             "Bearer token, `retry` for a re-run."),
        "triggered_by": {
            "oneOf": [
                {"type": "object", "required": ["id", "username"],
                 "properties": {"id": ID, "username": {"type": "string"}}},
                {"type": "null"},
            ],
        },
        "parent_id": {"type": ["integer", "null"], "format": "int64", "minimum": 1,
                      "description": "For a re-run: the execution it repeats."},
        "created_at": TIME,
        "started_at": TIME_OR_NULL,
        "finished_at": TIME_OR_NULL,
        "duration_ms": {"type": ["integer", "null"], "minimum": 0,
                        "description": "From start to finish (to now while running); null before it started."},
        "exit_code": {"type": ["integer", "null"]},
        "output_truncated": {"type": "boolean"},
        "targets": {"type": "array", "items": REF("ExecutionTarget")},
        "waiting_reason": WAITING_REASON,
    },
}
schemas["RunRequest"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Optional; an empty body runs the job as it is.",
    "properties": {
        "env": dict(ENV, description="Overrides the job's env for this execution only."),
    },
}
schemas["RerunRequest"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Optional; an empty body re-runs every server of the job.",
    "properties": {
        "only_failed": {"type": "boolean", "default": False,
                        "description": "Only the servers that did not succeed (409 when there are none, "
                                       "or while the execution is unfinished)."},
    },
}
schemas["LogChunk"] = {
    "type": "object",
    "required": ["seq", "server_id", "stream", "data", "at"],
    "properties": {
        "seq": {"type": "integer", "format": "int64", "minimum": 1,
                "description": "Strictly increasing per execution."},
        "server_id": {"type": ["integer", "null"], "format": "int64",
                      "description": "The target's server; null for lines about the whole execution."},
        "stream": {"type": "string", "enum": ["stdout", "stderr", "system"]},
        "data": {"type": "string", "description": "Text (invalid UTF-8 replaced); ANSI escapes are kept."},
        "at": TIME,
    },
}
schemas["ExecutionLog"] = {
    "type": "object",
    "required": ["chunks", "next_seq", "status", "complete"],
    "properties": {
        "chunks": {"type": "array", "items": REF("LogChunk"), "description": "Chunks with seq > after, in seq order."},
        "next_seq": {"type": "integer", "format": "int64", "minimum": 0,
                     "description": "Send as `after` next time: the last seq returned, or `after` when none was."},
        "status": EXECUTION_STATUS,
        "complete": {"type": "boolean",
                     "description": "True when the execution has finished and every chunk up to next_seq was returned."},
    },
}

schemas["Event"] = {
    "type": "object",
    "required": ["id", "type", "at", "execution"],
    "properties": {
        "id": {"type": "integer", "format": "int64", "minimum": 1},
        "type": {"type": "string", "enum": ["execution.created", "execution.updated", "execution.finished"]},
        "at": {"type": "string", "format": "date-time"},
        "execution": dict(REF("Execution"), description="The execution as it is now (not as it was at the event)."),
    },
}
schemas["EventPage"] = {
    "type": "object",
    "required": ["events", "next"],
    "properties": {
        "events": {"type": "array", "items": REF("Event")},
        "next": {"type": "integer", "format": "int64", "minimum": 0,
                 "description": "Send as `after` next time: the last id returned, or `after` when none was."},
    },
}

COUNT = {"type": "integer", "minimum": 0}
schemas["Stats"] = {
    "type": "object",
    "required": ["servers", "jobs", "running", "executions_by_status", "success_rate", "days", "daily"],
    "properties": {
        "servers": COUNT, "jobs": COUNT, "running": COUNT,
        "executions_by_status": {"type": "object", "additionalProperties": COUNT,
                                 "description": "Executions created in the window, by status (every status present)."},
        "success_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                         "description": "succeeded / finished in the window; null when none finished."},
        "days": {"type": "integer", "minimum": 1, "maximum": 90},
        "daily": {"type": "array", "items": {
            "type": "object", "required": ["date", "succeeded", "failed", "cancelled", "timed_out"],
            "properties": {"date": {"type": "string", "format": "date"}, "succeeded": COUNT, "failed": COUNT,
                           "cancelled": COUNT, "timed_out": COUNT}}},
    },
}
schemas["AuditEntry"] = {
    "type": "object",
    "required": ["id", "at", "user_id", "username", "action", "target", "address", "detail"],
    "properties": {
        "id": {"type": "integer", "format": "int64"}, "at": {"type": "string", "format": "date-time"},
        "user_id": {"type": ["integer", "null"], "format": "int64"}, "username": {"type": "string"},
        "action": {"type": "string", "description": "e.g. `server.create`, `job.run`, `auth.login`."},
        "target": {"type": "string", "description": "e.g. `server:12`."}, "address": {"type": "string"},
        "detail": {"type": "object"},
    },
}
schemas["SchedulePreview"] = {
    "type": "object",
    "required": ["schedule", "timezone", "next_runs"],
    "properties": {"schedule": {"type": "string"}, "timezone": {"type": "string"},
                   "next_runs": {"type": "array", "items": {"type": "string", "format": "date-time"}}},
}


def list_schema(item):
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": REF(item)},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` to get the next page; null on the last page.",
            },
        },
    }


schemas["UserList"] = list_schema("User")
schemas["TokenList"] = list_schema("Token")
schemas["ServerList"] = list_schema("Server")
schemas["JobList"] = list_schema("Job")
schemas["ExecutionList"] = list_schema("Execution")
schemas["AuditList"] = list_schema("AuditEntry")
schemas["NotificationDeliveryList"] = list_schema("NotificationDelivery")

# ---- responses -------------------------------------------------------------


def problem(desc, headers=None):
    r = {"description": desc,
         "content": {"application/problem+json": {"schema": REF("Problem")}}}
    if headers:
        r["headers"] = headers
    return r


responses = {
    "BadRequest": problem("Malformed JSON, invalid UTF-8, nesting too deep, or a malformed query parameter."),
    "Unauthorized": problem("Not signed in (no, expired or revoked session or token)."),
    "Forbidden": problem("Signed in, but the role may not do this; or a cookie-authenticated "
                         "write without a valid X-CSRF-Token."),
    "NotFound": problem("No such object (also for a path id that is not a positive 64-bit integer)."),
    "Conflict": problem("Duplicate name, delete while referenced, or a state that does not allow the action "
                        "(cancel of a finished execution, re-run of nothing)."),
    "PayloadTooLarge": problem("Body larger than 2 MiB."),
    "UnsupportedMediaType": problem("Body not sent as application/json."),
    "ValidationFailed": problem("Validation failed; `errors` names each field (unknown fields are rejected too)."),
    "TooManyRequests": problem(
        "Too many failed sign-ins from this address or for this user.",
        {"Retry-After": {"description": "Seconds to wait before trying again.",
                         "schema": {"type": "integer", "minimum": 0}}},
    ),
    "ServiceUnavailable": problem("The database is unreachable."),
}

# ---- operations ------------------------------------------------------------

READ_SEC = [{"cookieAuth": []}, {"bearerAuth": []}]
WRITE_SEC = [{"cookieAuth": [], "csrfToken": []}, {"bearerAuth": []}]

ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": ID}
LIST_PARAMS = [
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
    {"name": "cursor", "in": "query", "required": False,
     "description": "Opaque; the next_cursor of the previous page.", "schema": {"type": "string"}},
]
FILTER_PARAMS = [
    {"name": "tag", "in": "query", "required": False, "description": "Only objects carrying this tag.",
     "schema": {"type": "string"}},
    {"name": "q", "in": "query", "required": False,
     "description": "Search text: objects whose name contains it.",
     "schema": {"type": "string"}},
]


def json_ok(desc, schema, headers=None):
    r = {"description": desc, "content": {"application/json": {"schema": schema}}}
    if headers:
        r["headers"] = headers
    return r


def body(name, required=True):
    return {"required": required, "content": {"application/json": {"schema": REF(name)}}}


def errs(*codes):
    names = {
        "400": "BadRequest", "401": "Unauthorized", "403": "Forbidden", "404": "NotFound",
        "409": "Conflict", "413": "PayloadTooLarge", "415": "UnsupportedMediaType",
        "422": "ValidationFailed", "429": "TooManyRequests", "503": "ServiceUnavailable",
    }
    return {c: RESP(names[c]) for c in codes}


def op(op_id, summary, tag, responses_, security=READ_SEC, params=None, request=None, desc=None):
    o = {"operationId": op_id, "summary": summary, "tags": [tag], "security": security}
    if desc:
        o["description"] = desc
    if params:
        o["parameters"] = params
    if request:
        o["requestBody"] = request
    o["responses"] = responses_
    return o


NO_CONTENT = {"204": {"description": "Done."}}
WRITE_ERRS = ("400", "401", "403", "413", "415", "422", "503")

paths = {}


def links(kind):
    """Links from a created object to the operations on it (used by stateful testing)."""
    ops = {"servers": ["getServer", "updateServer", "deleteServer"],
           "jobs": ["getJob", "updateJob", "deleteJob", "runJob"],
           "executions": ["getExecution", "cancelExecution", "rerunExecution", "getExecutionLog",
                          "getExecutionLogText"],
           "users": ["getUser", "updateUser", "deleteUser"],
           "tokens": ["deleteToken"]}[kind]
    return {op_id: {"operationId": op_id, "parameters": {"id": "$response.body#/id"}} for op_id in ops}


def with_links(response, kind):
    return dict(response, links=links(kind))

paths["/api/health"] = {
    "get": op("getHealth", "Liveness and database health", "operations", {
        "200": json_ok("Healthy.", REF("Health")),
        "503": json_ok("Degraded: the database is unreachable "
                       "(`{\"status\":\"degraded\",\"database\":\"unreachable\",\"executors\":[]}`).",
                       REF("Health")),
    }, security=[]),
}
paths["/api/openapi.json"] = {
    "get": op("getOpenAPI", "This document", "operations", {
        "200": json_ok("The OpenAPI 3.1 document.", {"type": "object"}),
    }, security=[]),
}

SET_COOKIE = {"Set-Cookie": {
    "description": "`tsubame_session=…; Path=/; HttpOnly; SameSite=Strict` (+ `Secure` unless "
                   "configured for plain-HTTP development).",
    "schema": {"type": "string"}}}
paths["/api/v1/auth/login"] = {
    "post": op("login", "Sign in with username and password", "auth", dict(
        {"200": json_ok("Signed in; the session cookie is set.", REF("Session"), SET_COOKIE)},
        **errs("400", "401", "413", "415", "422", "429", "503")),
        security=[], request=body("Login"),
        desc="A wrong username and a wrong password give the same 401. Repeated failures from one "
             "address or for one user within the throttling window give 429 with Retry-After."),
}
paths["/api/v1/auth/logout"] = {
    "post": op("logout", "Sign out (revokes the session server-side)", "auth",
               dict(NO_CONTENT, **errs("401", "403", "503")), security=WRITE_SEC),
}
paths["/api/v1/auth/me"] = {
    "get": op("me", "The signed-in user and the CSRF token of the session", "auth",
              dict({"200": json_ok("The caller.", REF("Me"))}, **errs("401", "503"))),
}

paths["/api/v1/tokens"] = {
    "get": op("listTokens", "List API tokens (own; admins see all)", "tokens",
              dict({"200": json_ok("A page of tokens (never containing the secrets).", REF("TokenList"))},
                   **errs("400", "401", "503")), params=LIST_PARAMS),
    "post": op("createToken", "Create an API token for yourself", "tokens",
               dict({"201": with_links(json_ok("Created; `token` is shown only here.", REF("TokenCreated")), "tokens")},
                    **errs(*WRITE_ERRS)), security=WRITE_SEC, request=body("TokenCreate")),
}
paths["/api/v1/tokens/{id}"] = {
    "parameters": [ID_PARAM],
    "delete": op("deleteToken", "Revoke an API token (own; admins any)", "tokens",
                 dict(NO_CONTENT, **errs("401", "403", "404", "503")), security=WRITE_SEC),
}

paths["/api/v1/users"] = {
    "get": op("listUsers", "List users (admin)", "users",
              dict({"200": json_ok("A page of users.", REF("UserList"))}, **errs("400", "401", "403", "503")),
              params=LIST_PARAMS),
    "post": op("createUser", "Create a user (admin)", "users",
               dict({"201": with_links(json_ok("Created.", REF("User")), "users")}, **errs(*WRITE_ERRS, "409")),
               security=WRITE_SEC, request=body("UserCreate")),
}
paths["/api/v1/users/{id}"] = {
    "parameters": [ID_PARAM],
    "get": op("getUser", "Get a user (admin)", "users",
              dict({"200": json_ok("The user.", REF("User"))}, **errs("401", "403", "404", "503"))),
    "patch": op("updateUser", "Change password, role or disabled flag (admin)", "users",
                dict({"200": json_ok("Updated.", REF("User"))}, **errs(*WRITE_ERRS, "404", "409")),
                security=WRITE_SEC, request=body("UserPatch")),
    "delete": op("deleteUser", "Delete a user (admin)", "users",
                 dict(NO_CONTENT, **errs("401", "403", "404", "409", "503")), security=WRITE_SEC),
}

paths["/api/v1/servers"] = {
    "get": op("listServers", "List servers", "servers",
              dict({"200": json_ok("A page of servers.", REF("ServerList"))}, **errs("400", "401", "503")),
              params=FILTER_PARAMS + LIST_PARAMS),
    "post": op("createServer", "Add a server (admin)", "servers",
               dict({"201": with_links(json_ok("Created.", REF("Server")), "servers")}, **errs(*WRITE_ERRS, "409")),
               security=WRITE_SEC, request=body("ServerCreate")),
}
paths["/api/v1/servers/{id}"] = {
    "parameters": [ID_PARAM],
    "get": op("getServer", "Get a server", "servers",
              dict({"200": json_ok("The server.", REF("Server"))}, **errs("401", "404", "503"))),
    "patch": op("updateServer", "Change a server (admin)", "servers",
                dict({"200": json_ok("Updated.", REF("Server"))}, **errs(*WRITE_ERRS, "404", "409")),
                security=WRITE_SEC, request=body("ServerPatch")),
    "delete": op("deleteServer", "Delete a server (admin); 409 while a job targets it", "servers",
                 dict(NO_CONTENT, **errs("401", "403", "404", "409", "503")), security=WRITE_SEC),
}

paths["/api/v1/servers/{id}/test"] = {
    "parameters": [ID_PARAM],
    "post": op("testServer", "Test the SSH connection to a server (operator, admin)", "servers",
               dict({"200": json_ok("The outcome (also when the connection failed: see `ok` and `error`).",
                                    REF("ServerTestResult"))},
                    **errs("401", "403", "404", "409", "503")),
               security=WRITE_SEC,
               desc="Connects, checks the host key, authenticates and runs `true`. The host key is trusted on "
                    "first use and pinned; a changed key is refused before any credential is sent (`ok: false`) "
                    "until an admin clears it with PATCH `{\"host_key\": null}`. 409 when the server has no "
                    "credential for its auth method. No request body."),
}

paths["/api/v1/jobs"] = {
    "get": op("listJobs", "List jobs", "jobs",
              dict({"200": json_ok("A page of jobs.", REF("JobList"))}, **errs("400", "401", "503")),
              params=FILTER_PARAMS + LIST_PARAMS),
    "post": op("createJob", "Create a job (operator, admin)", "jobs",
               dict({"201": with_links(json_ok("Created.", REF("Job")), "jobs")}, **errs(*WRITE_ERRS, "409")),
               security=WRITE_SEC, request=body("JobCreate")),
}
paths["/api/v1/jobs/{id}"] = {
    "parameters": [ID_PARAM],
    "get": op("getJob", "Get a job", "jobs",
              dict({"200": json_ok("The job.", REF("Job"))}, **errs("401", "404", "503"))),
    "patch": op("updateJob", "Change a job (operator, admin)", "jobs",
                dict({"200": json_ok("Updated.", REF("Job"))}, **errs(*WRITE_ERRS, "404", "409")),
                security=WRITE_SEC, request=body("JobPatch")),
    "delete": op("deleteJob", "Delete a job (operator, admin)", "jobs",
                 dict(NO_CONTENT, **errs("401", "403", "404", "409", "503")), security=WRITE_SEC),
}
LOCATION = {"Location": {"description": "`/api/v1/executions/{id}` of the new execution.",
                          "schema": {"type": "string"}}}


def execution_created(desc):
    return with_links(json_ok(desc, REF("Execution"), LOCATION), "executions")


paths["/api/v1/jobs/{id}/run"] = {
    "parameters": [ID_PARAM],
    "post": op("runJob", "Run a job now (operator, admin)", "jobs",
               dict({"202": execution_created("Queued: the new execution (status `queued`).")},
                    **errs(*WRITE_ERRS, "404", "409")),
               security=WRITE_SEC, request=body("RunRequest", required=False),
               desc="Creates an execution with one target per server of the job, in the job's server "
                    "order. `trigger` is `manual` for a session, `api` for a Bearer token. The body is "
                    "optional; `env` overrides the job's env for this execution. 409 when the job's "
                    "`concurrency` is `skip` and it has an unfinished execution."),
}

paths["/api/v1/jobs/{id}/notify-test"] = {
    "parameters": [ID_PARAM],
    "post": op("testJobNotifications", "Send a test notification now (operator, admin)", "jobs",
               dict({"200": json_ok("What came of each send (also when it failed: see `ok` and `error`).",
                                    REF("NotifyTestResult"))},
                    **errs(*WRITE_ERRS, "404", "409")),
               security=WRITE_SEC, request=body("NotifyTestRequest", required=False),
               desc="Sends a notification with `event: test` to `item`, or to each notification of the job, at once "
                    "(10 s at most each) and records it in the delivery log. 409 when the job has none and no `item` "
                    "was sent."),
}

EXECUTION_FILTERS = [
    {"name": "job_id", "in": "query", "required": False, "description": "Only executions of this job.",
     "schema": ID},
    {"name": "server_id", "in": "query", "required": False,
     "description": "Only executions with a target on this server.", "schema": ID},
    {"name": "status", "in": "query", "required": False, "schema": EXECUTION_STATUS},
    {"name": "since", "in": "query", "required": False,
     "description": "Only executions created at or after this RFC 3339 time.", "schema": TIME},
    {"name": "until", "in": "query", "required": False,
     "description": "Only executions created before this RFC 3339 time.", "schema": TIME},
]
paths["/api/v1/executions"] = {
    "get": op("listExecutions", "List executions, newest first", "executions",
              dict({"200": json_ok("A page of executions, newest first.", REF("ExecutionList"))},
                   **errs("400", "401", "503")),
              params=EXECUTION_FILTERS + LIST_PARAMS,
              desc="Newest first: by id, or with since or until by created_at (then id); a `next_cursor` "
                   "continues the order it came from and is refused (400) by the other. 400 when job_id or "
                   "server_id is not a positive integer, status is not a known one, since/until is not an "
                   "RFC 3339 time, or the cursor is not one this server issued for this order."),
}
paths["/api/v1/executions/{id}"] = {
    "parameters": [ID_PARAM],
    "get": op("getExecution", "Get an execution with its targets", "executions",
              dict({"200": json_ok("The execution.", REF("Execution"))}, **errs("401", "404", "503"))),
}
paths["/api/v1/executions/{id}/cancel"] = {
    "parameters": [ID_PARAM],
    "post": op("cancelExecution", "Cancel an execution (operator, admin)", "executions",
               dict({"202": json_ok("Cancel requested: queued targets are cancelled at once, running ones are "
                                    "stopped by their executor. The execution as it is now.", REF("Execution"))},
                    **errs("401", "403", "404", "409", "503")),
               security=WRITE_SEC,
               desc="Repeatable while the execution is unfinished; 409 once it has finished."),
}
paths["/api/v1/executions/{id}/rerun"] = {
    "parameters": [ID_PARAM],
    "post": op("rerunExecution", "Run an execution's job again (operator, admin)", "executions",
               dict({"202": execution_created("Queued: the new execution (`trigger: retry`, `parent_id` = "
                                              "this execution).")},
                    **errs(*WRITE_ERRS, "404", "409")),
               security=WRITE_SEC, request=body("RerunRequest", required=False),
               desc="409 when the job was deleted, or with `only_failed` while the execution is unfinished "
                    "or when no server failed."),
}
LOG_PARAMS = [
    {"name": "after", "in": "query", "required": False,
     "description": "Only chunks with a greater seq (the next_seq of the previous answer).",
     "schema": {"type": "integer", "format": "int64", "minimum": 0, "default": 0}},
    {"name": "wait", "in": "query", "required": False,
     "description": "When nothing newer exists and the execution is unfinished, wait up to this many "
                    "seconds for output or a status change.",
     "schema": {"type": "integer", "minimum": 0, "maximum": 30, "default": 0}},
    {"name": "limit", "in": "query", "required": False,
     "description": "At most this many chunks (an answer also stops once it holds 2 MiB of output, after at "
                    "least one chunk; `next_seq` says where to go on).",
     "schema": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 1000}},
    {"name": "tail", "in": "query", "required": False,
     "description": "The last N chunks (the end of a long log, at once; with the 2 MiB cap, the chunks nearest "
                    "the end); not with `after` or `before`.",
     "schema": {"type": "integer", "minimum": 1, "maximum": 5000}},
    {"name": "before", "in": "query", "required": False,
     "description": "Paging back: the last `limit` chunks with a smaller seq (answers at once, no wait).",
     "schema": {"type": "integer", "format": "int64", "minimum": 1}},
]
paths["/api/v1/executions/{id}/log"] = {
    "parameters": [ID_PARAM],
    "get": op("getExecutionLog", "Read (or long-poll) the log of an execution", "executions",
              dict({"200": json_ok("Chunks after `after`.", REF("ExecutionLog"))},
                   **errs("400", "401", "404", "503")),
              params=LOG_PARAMS,
              desc="A client that resumes with `after` = the last next_seq never misses nor repeats output. "
                   "A waiting request holds no server thread: thousands may wait at once."),
}
paths["/api/v1/executions/{id}/log.txt"] = {
    "parameters": [ID_PARAM],
    "get": op("getExecutionLogText", "The whole log as plain text", "executions",
              dict({"200": {"description": "The log; system lines are prefixed with `[server] # `.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}}},
                   **errs("401", "404", "503"))),
}

paths["/api/v1/events"] = {
    "get": op("listEvents", "Long-poll the feed of execution changes", "executions",
              dict({"200": json_ok("Events after `after`, oldest first.", REF("EventPage"))},
                   **errs("400", "401", "503")),
              params=[
                  {"name": "after", "in": "query", "required": False,
                   "description": "Only events with a greater id (the `next` of the previous answer). "
                                  "Without it: only events from now on.",
                   "schema": {"type": "integer", "format": "int64", "minimum": 0}},
                  {"name": "wait", "in": "query", "required": False,
                   "description": "When nothing newer exists, wait up to this many seconds for an event.",
                   "schema": {"type": "integer", "minimum": 0, "maximum": 30, "default": 0}},
                  {"name": "limit", "in": "query", "required": False, "description": "At most this many events.",
                   "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
              ],
              desc="Events are kept for a day. Ids only grow and become visible in order, so resuming with "
                   "`after` = `next` never misses nor repeats one."),
}

paths["/api/v1/notifications"] = {
    "get": op("listNotifications", "The notification delivery log, newest first", "executions",
              dict({"200": json_ok("A page of deliveries, newest first.", REF("NotificationDeliveryList"))},
                   **errs("400", "401", "503")),
              params=[
                  {"name": "job_id", "in": "query", "required": False, "schema": ID},
                  {"name": "execution_id", "in": "query", "required": False, "schema": ID},
                  {"name": "status", "in": "query", "required": False, "schema": DELIVERY_STATUS},
                  {"name": "event", "in": "query", "required": False, "schema": NOTIFY_EVENT},
                  {"name": "type", "in": "query", "required": False,
                   "schema": {"type": "string", "enum": ["webhook", "slack", "email"]}},
              ] + LIST_PARAMS,
              desc="400 when job_id or execution_id is not a positive integer or status, event or type is not a known one."),
}
paths["/api/v1/audit"] = {
    "get": op("listAudit", "The audit log, newest first (admin)", "operations",
              dict({"200": json_ok("A page of audit entries.", REF("AuditList"))},
                   **errs("400", "401", "403", "503")),
              params=LIST_PARAMS,
              desc="Every write and every sign-in (and failed sign-in): who, what, which object, from which address."),
}
paths["/api/v1/stats"] = {
    "get": op("getStats", "Counts, success rate and daily history for the dashboard", "operations",
              dict({"200": json_ok("The figures over the last `days` days (UTC).", REF("Stats"))},
                   **errs("400", "401", "503")),
              params=[{"name": "days", "in": "query", "required": False, "description": "Days of history, today included.",
                       "schema": {"type": "integer", "minimum": 1, "maximum": 90, "default": 14}}]),
}
paths["/api/v1/schedule/preview"] = {
    "get": op("previewSchedule", "The next 5 times of a cron expression in a time zone", "jobs",
              dict({"200": json_ok("The next run times.", REF("SchedulePreview"))},
                   **errs("400", "401", "422", "503")),
              params=[{"name": "schedule", "in": "query", "required": True, "description": "A 5-field cron expression or @macro.",
                       "schema": {"type": "string"}},
                      {"name": "timezone", "in": "query", "required": False, "description": "IANA time zone (default UTC).",
                       "schema": {"type": "string"}}],
              desc="The job editor's helper: the same rules as a job's `schedule` and `timezone` (422 names the field)."),
}

doc = {
    "openapi": "3.1.0",
    "info": {
        "title": "tsubame-ci API",
        "version": "1.0.0",
        "description": (
            "REST API of tsubame-ci (v1), as implemented in this milestone. JSON in UTF-8 both ways; "
            "request bodies must be `application/json` (else 415); unknown fields are rejected (422). "
            "Errors are `application/problem+json`. A path id that is not a positive 64-bit integer "
            "answers 404. A method a path does not support answers 405. Bodies over 2 MiB answer 413. "
            "Cookie-authenticated POST/PATCH/DELETE must carry `X-CSRF-Token`; Bearer tokens need none."
        ),
    },
    "servers": [{"url": "/"}],
    "tags": [
        {"name": "operations"}, {"name": "auth"}, {"name": "tokens"}, {"name": "users"},
        {"name": "servers"}, {"name": "jobs"}, {"name": "executions"},
    ],
    "security": READ_SEC,
    "paths": paths,
    "components": {
        "securitySchemes": {
            "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "tsubame_session",
                           "description": "Session cookie set by POST /api/v1/auth/login."},
            "csrfToken": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token",
                          "description": "The csrf_token of the session; required with cookieAuth on writes."},
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "API token from POST /api/v1/tokens."},
        },
        "schemas": schemas,
        "responses": responses,
    },
}

out = sys.argv[1] if len(sys.argv) > 1 else str(
    Path(__file__).resolve().parents[2] / "Sources" / "TsubameHTTP" / "Resources" / "openapi.json")
with open(out, "w") as f:
    json.dump(doc, f, indent=2, ensure_ascii=False)
    f.write("\n")
