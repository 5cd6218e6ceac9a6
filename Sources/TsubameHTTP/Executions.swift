// SPDX-License-Identifier: MIT
// Runs: enqueue, history, detail, cancel, re-run and the log.

import Foundation
import TsubameCore
import TsubameFastCGI
import TsubamePostgres

enum Executions {
    static let columns = """
        e.id, e.job_id, e.job_name, e.status, e.trigger, e.triggered_by, e.triggered_by_name, e.parent_id, e.exit_code,
        e.output_truncated, \(tsSQL("e.created_at", as: "created")), \(tsSQL("e.started_at", as: "started")),
        \(tsSQL("e.finished_at", as: "finished")),
        (extract(epoch FROM (coalesce(e.finished_at, now()) - e.started_at)) * 1000)::bigint AS duration_ms,
        -- The reason of its queued targets (tsubame_waiting_reason, migration 0007), a specific one before the generic.
        (SELECT r.reason FROM (SELECT tsubame_waiting_reason(q.id) AS reason, q.position, q.id FROM execution_targets q
                               WHERE q.execution_id = e.id AND q.status = 'queued') r
         ORDER BY r.reason = 'waiting for an executor to pick it up', r.position, r.id LIMIT 1) AS waiting_reason
        """
    static let targetColumns = """
        t.execution_id, t.server_id, t.server_name, t.status, t.exit_code, t.error, t.attempt,
        CASE WHEN t.status = 'queued' THEN tsubame_waiting_reason(t.id) END AS waiting_reason,
        \(tsSQL("t.started_at", as: "started")), \(tsSQL("t.finished_at", as: "finished"))
        """

    static func json(_ r: PGRow, targets: [PGRow]) -> JSON {
        var members: [(String, JSON)] = [
            ("id", .int(r.int64("id"))), ("job_id", r.optInt64("job_id").map(JSON.int) ?? .null),
            ("job_name", .string(r.string("job_name"))), ("status", .string(r.string("status"))), ("trigger", .string(r.string("trigger"))),
            ("triggered_by", r.optInt64("triggered_by").map { .object([("id", .int($0)), ("username", .string(r.string("triggered_by_name")))]) } ?? .null),
            ("parent_id", r.optInt64("parent_id").map(JSON.int) ?? .null),
            ("created_at", ts(r, "created")), ("started_at", ts(r, "started")), ("finished_at", ts(r, "finished")),
            ("duration_ms", r.optInt64("duration_ms").map(JSON.int) ?? .null),
            ("exit_code", r.optInt64("exit_code").map(JSON.int) ?? .null),
            ("output_truncated", .bool(r.bool("output_truncated"))),
            ("targets", .array(targets.map { t in
                var m: [(String, JSON)] = [
                    ("server_id", t.optInt64("server_id").map(JSON.int) ?? .null), ("server_name", .string(t.string("server_name"))),
                    ("status", .string(t.string("status"))), ("exit_code", t.optInt64("exit_code").map(JSON.int) ?? .null),
                    ("started_at", ts(t, "started")), ("finished_at", ts(t, "finished")), ("error", .optString(t["error"])),
                    ("attempt", .int(t.int("attempt"))),
                ]
                if let reason = t["waiting_reason"] { m.append(("waiting_reason", .string(reason))) }
                return .object(m)
            })),
        ]
        if let reason = r["waiting_reason"] { members.append(("waiting_reason", .string(reason))) }
        return .object(members)
    }

    /// Executions with their targets, in the order of `rows`.
    static func render(_ db: PGConnection, _ rows: [PGRow]) throws -> [JSON] {
        guard !rows.isEmpty else { return [] }
        let targets = try db.query("""
            SELECT \(targetColumns) FROM execution_targets t WHERE t.execution_id = ANY($1::bigint[]) ORDER BY t.execution_id, t.position, t.id
            """, [Int64Array(rows.map { $0.int64("id") })])
        let byExecution = Dictionary(grouping: targets) { $0.int64("execution_id") }
        return rows.map { json($0, targets: byExecution[$0.int64("id")] ?? []) }
    }

    static func fetch(_ db: PGConnection, _ id: Int64) throws -> JSON {
        guard let row = try db.query("SELECT \(columns) FROM executions e WHERE e.id = $1", [id]).first else {
            throw APIError.notFound("execution")
        }
        return try render(db, [row])[0]
    }

    static let statuses = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]

    /// GET /executions: newest first, keyset-paged. The statement names only the filters given (one prepared statement
    /// per combination), so each plan fits its filters: a job's runs come from (job_id, id), a server's from its targets
    /// in execution order, a time window from created_at. With since or until the list is ordered by created_at (then
    /// id) and its cursor carries both: in id order, a day in the past would first skip every newer execution (0.4 s
    /// at a million executions, scripts/bench scale). Ids grow with created_at, so the two orders agree but for runs
    /// created at the same moment.
    static func list(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        var q = try ctx.query()
        let cursor = q.removeValue(forKey: "cursor").flatMap { $0.isEmpty ? nil : $0 }
        let (limit, _) = try ctx.page(q)
        func id(_ name: String) throws -> Int64? {
            guard let v = q[name], !v.isEmpty else { return nil }
            guard let n = Routes.parseID(v) else { throw APIError.badRequest("\(name) must be a positive integer id.") }
            return n
        }
        func time(_ name: String) throws -> Date? {
            guard let v = q[name], !v.isEmpty else { return nil }
            // Years 0001–9999 only, handed to PostgreSQL as UTC so no offset it rejects gets through.
            guard let d = Timestamp.parse(v), d.timeIntervalSince1970 >= -62_135_596_800, d.timeIntervalSince1970 < 253_402_300_800 else {
                throw APIError.badRequest("\(name) must be an RFC 3339 time such as 2026-11-29T23:14:53Z.")
            }
            return d
        }
        let status = q["status"].flatMap { $0.isEmpty ? nil : $0 }
        if let s = status, !statuses.contains(s) { throw APIError.badRequest("status must be one of \(statuses.joined(separator: ", ")).") }
        let job = try id("job_id"), server = try id("server_id"), since = try time("since"), until = try time("until")
        let byTime = since != nil || until != nil
        var params: [any PGParameter] = []
        func p(_ v: any PGParameter) -> String { params.append(v); return "$\(params.count)" }
        var conditions: [String] = []
        var afterID: Int64? = nil
        if let cursor {
            if byTime {
                guard let c = Cursor.decodeTimed(cursor) else {
                    throw APIError.badRequest("cursor is not one this server issued for a list with since or until.")
                }
                conditions.append("(e.created_at, e.id) < (\(p(c.at))::timestamptz, \(p(c.id))::bigint)")
            } else {
                guard let id = Cursor.decode(cursor) else { throw APIError.badRequest("cursor is not one this server issued.") }
                afterID = id
                conditions.append("e.id < \(p(id))::bigint")
            }
        }
        if let job { conditions.append("e.job_id = \(p(job))::bigint") }
        // Written out (one of six known words), so that every plan knows it: queued and running come from their
        // partial index, the others from the id or created_at order.
        if let status { conditions.append("e.status = '\(status)'") }
        if let since { conditions.append("e.created_at >= \(p(since))::timestamptz") }
        if let until { conditions.append("e.created_at < \(p(until))::timestamptz") }
        if let server {
            // Read in execution order from (server_id, execution_id DESC), merged with the executions' own order.
            conditions.append("e.id IN (SELECT t.execution_id FROM execution_targets t WHERE t.server_id = \(p(server))::bigint"
                              + (afterID.map { " AND t.execution_id < \(p($0))::bigint" } ?? "") + ")")
        }
        let db = try ctx.db
        let rows = try db.query("""
            SELECT \(columns)\(byTime ? ", to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS created_cursor" : "")
            FROM executions e
            \(conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "))
            ORDER BY \(byTime ? "e.created_at DESC, e.id DESC" : "e.id DESC") LIMIT \(p(limit + 1))
            """, params)
        let page = Array(rows.prefix(limit))
        var next = JSON.null
        if rows.count > limit, let last = page.last {
            next = .string(byTime ? Cursor.encodeTimed(id: last.int64("id"), at: last.string("created_cursor")) : Cursor.encode(last.int64("id")))
        }
        return Reply.list(try render(db, page), next: next)
    }

    static func get(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        return Reply.json(200, try fetch(try ctx.db, ctx.id()))
    }

    /// POST /jobs/{id}/run
    static func run(_ ctx: Context) throws -> HTTPResponse {
        let p = try ctx.require(.operator_)
        var b = try BodyReader(try ctx.optionalJSON())
        let env = b.env("env")
        try b.finish()
        let db = try ctx.db
        let trigger = p.sessionID == nil ? "api" : "manual"
        let id = try enqueueUnlessSkipped(db, jobID: ctx.id()) {
            try Queue.enqueue(db, jobID: ctx.id(), trigger: trigger, userID: p.userID, username: p.username, envOverrides: env.map(Jobs.envObject))
        }
        try ctx.audit("job.run", target: "job:\(ctx.id())", detail: .object([("execution_id", .int(id))]))
        return Reply.json(202, try fetch(db, id), headers: [("Location", "/api/v1/executions/\(id)")])
    }

    /// Runs `enqueue` under the job's row lock, unless the job says concurrency = skip and has an unfinished run (409).
    static func enqueueUnlessSkipped(_ db: PGConnection, jobID: Int64, _ enqueue: () throws -> Int64?) throws -> Int64 {
        try db.transaction { () throws -> Int64 in
            guard let job = try db.query("SELECT concurrency FROM jobs WHERE id = $1 FOR NO KEY UPDATE", [jobID]).first else {
                throw APIError.notFound("job")
            }
            if job.string("concurrency") == "skip", let busy = try db.query("""
                SELECT id FROM executions WHERE job_id = $1 AND status IN ('queued', 'running') ORDER BY id LIMIT 1
                """, [jobID]).first {
                throw APIError.conflict("The job is already running (execution #\(busy.int64("id"))) and its concurrency is skip: "
                                        + "wait for it to finish, cancel it, or set concurrency to allow or queue.")
            }
            guard let id = try enqueue() else { throw APIError.notFound("job") }
            return id
        }
    }

    static func cancel(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.operator_)
        try BodyReader(try ctx.optionalJSON()).finish()
        let db = try ctx.db
        switch try Queue.requestCancel(db, executionID: ctx.id()) {
        case nil: throw APIError.notFound("execution")
        case false?: throw APIError.conflict("The execution has already finished.")
        case true?:
            try ctx.audit("execution.cancel", target: "execution:\(ctx.id())")
            return Reply.json(202, try fetch(db, ctx.id()))
        }
    }

    static func rerun(_ ctx: Context) throws -> HTTPResponse {
        let p = try ctx.require(.operator_)
        var b = try BodyReader(try ctx.optionalJSON())
        let onlyFailed = b.bool("only_failed", .optional) ?? false
        try b.finish()
        let db = try ctx.db
        guard let e = try db.query("SELECT job_id, status FROM executions WHERE id = $1", [ctx.id()]).first else {
            throw APIError.notFound("execution")
        }
        guard let jobID = e.optInt64("job_id") else { throw APIError.conflict("The job of this execution was deleted.") }
        var servers: [Int64]? = nil
        if onlyFailed {
            if ["queued", "running"].contains(e.string("status")) { throw APIError.conflict("The execution is still running.") }
            servers = try db.query("""
                SELECT server_id FROM execution_targets WHERE execution_id = $1 AND status <> 'succeeded' AND server_id IS NOT NULL
                """, [ctx.id()]).map { $0.int64("server_id") }
            if servers!.isEmpty { throw APIError.conflict("No server failed in this execution: nothing to re-run.") }
        }
        let id = try enqueueUnlessSkipped(db, jobID: jobID) {
            try Queue.enqueue(db, jobID: jobID, trigger: "retry", userID: p.userID, username: p.username, envOverrides: nil,
                              parentID: ctx.id(), onlyServers: servers)
        }
        try ctx.audit("execution.rerun", target: "execution:\(ctx.id())", detail: .object([("execution_id", .int(id))]))
        return Reply.json(202, try fetch(db, id), headers: [("Location", "/api/v1/executions/\(id)")])
    }
}
