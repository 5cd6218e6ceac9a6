// SPDX-License-Identifier: MIT
// The notification outbox in SQL (migration 0008): claim due deliveries,
// record an attempt, add running_long deliveries, record a test. Rows for
// started and finished executions are made by a trigger on executions.

import Foundation
public import TsubameCore

/// A delivery handed to a sender by `claim`.
public struct ClaimedDelivery: Sendable {
    public let id: Int64
    public let jobID: Int64?
    public let jobName: String
    public let executionID: Int64?
    public let event: String
    public let type: String
    public let target: String
    /// The notify item as stored on the job when the delivery was made (the sealed webhook secret included).
    public let item: JSON
    public let detail: JSON?
    /// This attempt's number (1 for the first).
    public let attempt: Int
    /// The execution summary as it is now (see `Notifications.executionSummary`); nil when it was deleted.
    public let execution: JSON?
}

public enum Notifications {
    /// NOTIFY channel: new deliveries are due.
    public static let channel = "tsubame_notify"

    /// SQL for the summary of execution `e` that notifications carry.
    public static let executionSummary = """
        json_build_object('id', e.id, 'status', e.status, 'trigger', e.trigger,
            'created_at', to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'started_at', to_char(e.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'finished_at', to_char(e.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'duration_ms', (extract(epoch FROM (coalesce(e.finished_at, now()) - e.started_at)) * 1000)::bigint,
            'exit_code', e.exit_code,
            'targets', (SELECT json_build_object('total', count(*),
                            'succeeded', count(*) FILTER (WHERE t.status = 'succeeded'),
                            'failed', count(*) FILTER (WHERE t.status = 'failed'),
                            'timed_out', count(*) FILTER (WHERE t.status = 'timed_out'),
                            'cancelled', count(*) FILTER (WHERE t.status = 'cancelled'),
                            'running', count(*) FILTER (WHERE t.status = 'running'),
                            'queued', count(*) FILTER (WHERE t.status = 'queued'))
                        FROM execution_targets t WHERE t.execution_id = e.id))
        """

    /// Claims up to `limit` due pending deliveries: each gets its attempt counted and its next_attempt_at moved
    /// `leaseSeconds` ahead, so another executor skips it (SKIP LOCKED while this runs, the time afterwards) and it
    /// is due again should this one die before recording the outcome.
    public static func claim(_ db: PGConnection, limit: Int, leaseSeconds: Int) throws -> [ClaimedDelivery] {
        guard limit > 0 else { return [] }
        let rows = try db.query("""
            WITH due AS (
                SELECT id FROM notification_deliveries WHERE status = 'pending' AND next_attempt_at <= now()
                ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
            ), claimed AS (
                UPDATE notification_deliveries d SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.job_id, d.execution_id, d.event, d.type, d.target, d.item, d.detail, d.attempts
            )
            SELECT c.id, c.job_id, c.execution_id, c.event, c.type, c.target, c.item::text AS item, c.detail::text AS detail,
                   c.attempts, coalesce(j.name, e.job_name, '') AS job_name,
                   CASE WHEN e.id IS NOT NULL THEN (\(executionSummary))::text END AS execution
            FROM claimed c LEFT JOIN executions e ON e.id = c.execution_id LEFT JOIN jobs j ON j.id = c.job_id
            ORDER BY c.id
            """, [limit, leaseSeconds])
        return rows.map { r in
            ClaimedDelivery(id: r.int64("id"), jobID: r.optInt64("job_id"), jobName: r.string("job_name"), executionID: r.optInt64("execution_id"),
                            event: r.string("event"), type: r.string("type"), target: r.string("target"),
                            item: (try? JSON.parse(r.string("item"))) ?? .null, detail: r["detail"].flatMap { try? JSON.parse($0) },
                            attempt: r.int("attempts"), execution: r["execution"].flatMap { try? JSON.parse($0) })
        }
    }

    /// Records an attempt of a claimed delivery: sent, failed for good (`retryInSeconds` nil), or pending again.
    public static func record(_ db: PGConnection, id: Int64, ok: Bool, statusCode: Int?, error: String?, retryInSeconds: Int?) throws {
        try db.query("""
            UPDATE notification_deliveries SET
                status = CASE WHEN $2 THEN 'sent' WHEN $5::integer IS NULL THEN 'failed' ELSE 'pending' END,
                sent_at = CASE WHEN $2 THEN now() END, response_code = $3, last_error = CASE WHEN $2 THEN NULL ELSE $4 END,
                next_attempt_at = CASE WHEN $5::integer IS NULL THEN now() ELSE now() + make_interval(secs => $5::integer) END
            WHERE id = $1 AND status = 'pending'
            """, [id, ok, statusCode, error.map { String($0.prefix(1000)) }, retryInSeconds])
    }

    /// Adds a running_long delivery for each running execution that has run longer than its item's factor (default 3)
    /// times the median duration of its job's last 20 succeeded executions (when there are at least 3), once per
    /// execution and receiver. Returns how many were added.
    @discardableResult
    public static func findRunningLong(_ db: PGConnection) throws -> Int {
        let rows = try db.query("""
            WITH cand AS (
                SELECT e.id, e.job_id, e.started_at, n.item
                FROM executions e JOIN jobs j ON j.id = e.job_id CROSS JOIN LATERAL jsonb_array_elements(j.notify) AS n(item)
                WHERE e.status = 'running' AND e.started_at IS NOT NULL AND n.item->'on' ? 'running_long'
            ), med AS (
                SELECT c.job_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY r.d) AS median_s, count(*) AS runs
                FROM (SELECT DISTINCT job_id FROM cand) c
                CROSS JOIN LATERAL (SELECT extract(epoch FROM p.finished_at - p.started_at)::float8 AS d FROM executions p
                                    WHERE p.job_id = c.job_id AND p.status = 'succeeded' AND p.started_at IS NOT NULL
                                    ORDER BY p.id DESC LIMIT 20) r
                GROUP BY c.job_id
            ), ins AS (
                INSERT INTO notification_deliveries (job_id, execution_id, event, type, target, destination, item, detail)
                SELECT c.job_id, c.id, 'running_long', c.item->>'type', coalesce(c.item->>'url', c.item->>'to'),
                       tsubame_notify_destination(c.item->>'type', coalesce(c.item->>'url', c.item->>'to')), c.item,
                       jsonb_build_object('median_ms', round(m.median_s * 1000)::bigint,
                                          'factor', coalesce(c.item->'factor', '3'::jsonb))
                FROM cand c JOIN med m ON m.job_id = c.job_id
                WHERE m.runs >= 3
                  AND now() - c.started_at > make_interval(secs => m.median_s * coalesce((c.item->>'factor')::float8, 3))
                ON CONFLICT (execution_id, type, target) WHERE event = 'running_long' DO NOTHING
                RETURNING id
            )
            SELECT count(*) AS n FROM ins
            """)
        return rows.first?.int("n") ?? 0
    }

    /// A new delivery id (a test notification's body names it before the row is written).
    public static func nextID(_ db: PGConnection) throws -> Int64 {
        try db.query("SELECT nextval(pg_get_serial_sequence('notification_deliveries', 'id')) AS id")[0].int64("id")
    }

    /// Records a test notification's outcome under `id` (from `nextID`); returns the destination people see.
    @discardableResult
    public static func recordTest(_ db: PGConnection, id: Int64, jobID: Int64, type: String, target: String, item: JSON,
                                  ok: Bool, statusCode: Int?, error: String?) throws -> String {
        try db.query("""
            INSERT INTO notification_deliveries (id, job_id, event, type, target, destination, item, status, attempts,
                                                 last_error, response_code, sent_at)
            VALUES ($1, $2, 'test', $3, $4, tsubame_notify_destination($3, $4), $5::jsonb, CASE WHEN $6 THEN 'sent' ELSE 'failed' END, 1,
                    $7, $8, CASE WHEN $6 THEN now() END)
            RETURNING destination
            """, [id, jobID, type, target, item, ok, error.map { String($0.prefix(1000)) }, statusCode])[0].string("destination")
    }

    /// What people see of a receiver (tsubame_notify_destination: Slack paths, userinfo and queries hidden).
    public static func destination(_ db: PGConnection, type: String, target: String) throws -> String {
        try db.query("SELECT tsubame_notify_destination($1, $2) AS d", [type, target])[0].string("d")
    }
}
