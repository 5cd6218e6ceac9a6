// SPDX-License-Identifier: MIT
// The dashboard's numbers, and the cron helper's preview.

import Foundation
import TsubameCore
import TsubameFastCGI
import TsubamePostgres

enum Stats {
    static let finished = ["succeeded", "failed", "cancelled", "timed_out"]

    /// GET /stats?days=N: counts, the success rate and a per-day history (UTC days, today last) over the last N days.
    static func get(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        let days = try Live.int(try ctx.query(), "days", 1...90) ?? 14
        let db = try ctx.db
        let totals = try db.query("""
            SELECT (SELECT count(*) FROM servers) AS servers, (SELECT count(*) FROM jobs) AS jobs,
                   (SELECT count(*) FROM executions WHERE status = 'running') AS running
            """)[0]
        let since = "date_trunc('day', now() AT TIME ZONE 'UTC') - make_interval(days => $1 - 1)"
        let byStatus = try db.query("""
            SELECT status, count(*) AS n FROM executions WHERE created_at AT TIME ZONE 'UTC' >= \(since) GROUP BY status
            """, [days])
        let daily = try db.query("""
            SELECT to_char(d, 'YYYY-MM-DD') AS date,
                   count(e.id) FILTER (WHERE e.status = 'succeeded') AS succeeded, count(e.id) FILTER (WHERE e.status = 'failed') AS failed,
                   count(e.id) FILTER (WHERE e.status = 'cancelled') AS cancelled, count(e.id) FILTER (WHERE e.status = 'timed_out') AS timed_out
            FROM generate_series(\(since), date_trunc('day', now() AT TIME ZONE 'UTC'), interval '1 day') AS d
            LEFT JOIN executions e ON e.created_at AT TIME ZONE 'UTC' >= d AND e.created_at AT TIME ZONE 'UTC' < d + interval '1 day'
            GROUP BY d ORDER BY d
            """, [days])
        var counts: [String: Int64] = [:]
        for r in byStatus { counts[r.string("status")] = r.int64("n") }
        let done = finished.reduce(Int64(0)) { $0 + (counts[$1] ?? 0) }
        let rate: JSON = done == 0 ? .null : .double((Double(counts["succeeded"] ?? 0) / Double(done) * 1000).rounded() / 1000)
        return Reply.json(200, .object([
            ("servers", .int(totals.int64("servers"))), ("jobs", .int(totals.int64("jobs"))), ("running", .int(totals.int64("running"))),
            ("executions_by_status", .object(Executions.statuses.map { ($0, .int(counts[$0] ?? 0)) })),
            ("success_rate", rate), ("days", .int(days)),
            ("daily", .array(daily.map { d in
                .object([("date", .string(d.string("date")))] + finished.map { ($0, .int(d.int64($0))) })
            })),
        ]))
    }

    /// GET /schedule/preview?schedule=CRON&timezone=TZ: the next 5 times, or 422 with what is wrong (the job editor's helper).
    static func preview(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        let q = try ctx.query()
        let expr = q["schedule"] ?? ""
        let zone = q["timezone"].flatMap { $0.isEmpty ? nil : $0 } ?? "UTC"
        var errors: [FieldError] = []
        var cron: CronSchedule?
        do { cron = try CronSchedule(parsing: expr) } catch { errors.append(FieldError("schedule", error.message)) }
        let tz = zone.contains(where: { $0.isLetter }) ? TimeZone(identifier: zone) : nil
        if tz == nil { errors.append(FieldError("timezone", "must be an IANA time zone name such as UTC or Europe/Berlin")) }
        guard let cron, let tz, errors.isEmpty else { throw APIError.validation(errors) }
        let runs = cron.nextRuns(after: Date(), count: 5, timeZone: tz)
        return Reply.json(200, .object([("schedule", .string(expr)), ("timezone", .string(zone)),
                                        ("next_runs", .array(runs.map { .string(Timestamp.format($0)) }))]))
    }
}
