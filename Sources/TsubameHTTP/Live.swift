// SPDX-License-Identifier: MIT
// What watchers read: an execution's log (long-poll, tail, paging back, the
// whole text streamed) and the feed of execution changes (long-poll).
// Waiting requests park in the worker's LiveHub (see there).

import Foundation
import TsubameCore
import TsubameFastCGI
import TsubamePostgres

enum Live {
    /// A log answer carries at most this many bytes of output (and at least one chunk), so a 100 MB log is
    /// read in pages of bounded size whatever `limit` says.
    static let pageBytes = 2 << 20

    static func int(_ q: [String: String], _ name: String, _ range: ClosedRange<Int64>) throws -> Int64? {
        guard let v = q[name], !v.isEmpty else { return nil }
        guard let n = Int64(v), range.contains(n) else {
            throw APIError.badRequest("\(name) must be a whole number from \(range.lowerBound) to \(range.upperBound).")
        }
        return n
    }

    // MARK: - GET /executions/{id}/log

    /// Which chunks a log request asks for: seq in (after, before), the first `limit` of them
    /// (`fromEnd`: the last `limit`, for paging back and the tail).
    struct LogWindow {
        var after: Int64
        var before: Int64?
        var limit: Int64
        var fromEnd: Bool
        /// The status the caller was told (a parked request answers when it changes).
        var status: String? = nil
    }

    static func log(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        let q = try ctx.query()
        let after = try int(q, "after", 0...Int64.max)
        let wait = try int(q, "wait", 0...30) ?? 0
        let limit = try int(q, "limit", 1...5000) ?? 1000
        let tail = try int(q, "tail", 1...5000)
        let before = try int(q, "before", 1...Int64.max)
        if tail != nil && (after != nil || before != nil) {
            throw APIError.badRequest("tail cannot be combined with after or before.")
        }
        if let after, let before, before <= after { throw APIError.badRequest("before must be greater than after.") }
        let id = ctx.id()
        let hub = ctx.app.hub
        let mark = hub?.mark ?? 0
        // The tail is read from the end (like paging back), so the 2 MiB page cap keeps the last chunks.
        var window = LogWindow(after: after ?? 0, before: before, limit: tail ?? limit, fromEnd: before != nil || tail != nil)
        let page = try read(try ctx.db, id, window)
        if let r = respond(page, window, final: wait == 0 || hub == nil || before != nil) { return r }
        // Parked: from now on the question is "anything after what the caller has, or a new status".
        window.after = page.after
        window.fromEnd = false
        window.status = page.status
        let park = Park(topic: .log(id), shareKey: "log:\(id):\(window.after):\(window.limit):\(page.status)", after: window.after,
                        deadline: LiveHub.now + Double(wait)) { [window] app, final in
            respond(try read(try app.database(), id, window), window, final: final)
        }
        return .parked { parked in hub!.park(parked, park, mark: mark) }
    }

    struct LogPage {
        var status: String
        var lastSeq: Int64
        var after: Int64
        var chunks: [PGRow]
    }

    /// The execution's status and last seq and the page of chunks, in one statement (a long-poll's re-check is
    /// this plus nothing). A running byte total stops the page once it holds pageBytes (octet_length reads the
    /// stored size, not the data); read from the end, the page keeps the chunks nearest the end.
    static func read(_ db: PGConnection, _ id: Int64, _ w: LogWindow) throws -> LogPage {
        let order = w.fromEnd ? "DESC" : "ASC"
        let rows = try db.query("""
            WITH e AS (
                SELECT status, last_seq, $2::bigint AS after FROM executions WHERE id = $1
            )
            SELECT e.status, e.last_seq, e.after, c.seq, c.server_id, c.stream, c.data, c.at_text
            FROM e LEFT JOIN LATERAL (
                SELECT seq, server_id, stream, data, at_text FROM (
                    SELECT seq, server_id, stream, data, \(tsSQL("at", as: "at_text")),
                           sum(octet_length(data)) OVER (ORDER BY seq \(order)) - octet_length(data) AS before_bytes
                    FROM log_chunks
                    WHERE e.last_seq > e.after AND execution_id = $1 AND seq > e.after AND ($3::bigint IS NULL OR seq < $3)
                    ORDER BY seq \(order) LIMIT $4
                ) page WHERE before_bytes < $5
            ) c ON true
            ORDER BY c.seq
            """, [id, w.after, w.before, w.limit, pageBytes])
        guard let first = rows.first else { throw APIError.notFound("execution") }
        return LogPage(status: first.string("status"), lastSeq: first.int64("last_seq"), after: first.int64("after"),
                       chunks: rows.filter { $0["seq"] != nil })
    }

    /// The answer, or nil when nothing is newer, the status is what the caller saw, the execution is unfinished
    /// and this is not the final try.
    static func respond(_ page: LogPage, _ w: LogWindow, final: Bool) -> HTTPResponse? {
        let finished = !["queued", "running"].contains(page.status)
        if page.chunks.isEmpty && !finished && !final && (w.status == nil || w.status == page.status) { return nil }
        let next = page.chunks.last?.int64("seq") ?? page.after
        let complete = finished && next >= page.lastSeq
        return Reply.json(200, .object([
            ("chunks", .array(page.chunks.map { c in
                .object([("seq", .int(c.int64("seq"))), ("server_id", c.optInt64("server_id").map(JSON.int) ?? .null),
                         ("stream", .string(c.string("stream"))), ("data", .string(c.string("data"))), ("at", ts(c, "at_text"))])
            })),
            ("next_seq", .int(next)), ("status", .string(page.status)), ("complete", .bool(complete)),
        ]))
    }

    // MARK: - GET /executions/{id}/log.txt

    /// The whole log as text, read and sent a page at a time (never all in memory).
    static func logText(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        let db = try ctx.db
        let id = ctx.id()
        guard try !db.query("SELECT 1 FROM executions WHERE id = $1", [id]).isEmpty else { throw APIError.notFound("execution") }
        var response = HTTPResponse(status: 200, headers: [
            ("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store"),
            ("Content-Disposition", "inline; filename=\"execution-\(id).log\""),
        ])
        response.stream = BodyStream { emit in
            var after: Int64 = 0
            while true {
                let rows = try db.query("""
                    SELECT seq, stream, data, server FROM (
                        SELECT c.seq, c.stream, c.data, coalesce(t.server_name, '') AS server,
                               sum(octet_length(c.data)) OVER (ORDER BY c.seq) - octet_length(c.data) AS before_bytes
                        FROM log_chunks c
                        LEFT JOIN LATERAL (SELECT server_name FROM execution_targets
                                           WHERE execution_id = c.execution_id AND server_id = c.server_id LIMIT 1) t ON true
                        WHERE c.execution_id = $1 AND c.seq > $2 ORDER BY c.seq LIMIT 2000
                    ) page WHERE before_bytes < $3 ORDER BY seq
                    """, [id, after, pageBytes])
                for r in rows {
                    let prefix = r.string("stream") == "system" ? "[\(r.string("server"))] # " : ""
                    emit(Array((prefix + r.string("data")).utf8))
                }
                guard let last = rows.last else { break }
                after = last.int64("seq")
            }
        }
        return response
    }

    // MARK: - GET /events

    static func events(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        let q = try ctx.query()
        let wait = try int(q, "wait", 0...30) ?? 0
        let limit = try int(q, "limit", 1...500) ?? 100
        let hub = ctx.app.hub
        let mark = hub?.mark ?? 0
        let db = try ctx.db
        // No `after`: from now on (the caller loads the current state separately).
        let after = try int(q, "after", 0...Int64.max) ?? Events.latestID(db)
        if let r = try eventsAnswer(db, after: after, limit: limit, final: wait == 0 || hub == nil) { return r }
        let park = Park(topic: .events, shareKey: "events:\(after):\(limit)", after: after, deadline: LiveHub.now + Double(wait)) { app, final in
            try eventsAnswer(try app.database(), after: after, limit: limit, final: final)
        }
        return .parked { parked in hub!.park(parked, park, mark: mark) }
    }

    static func eventsAnswer(_ db: PGConnection, after: Int64, limit: Int64, final: Bool) throws -> HTTPResponse? {
        let events = try db.query("""
            SELECT id, execution_id, type, \(tsSQL("at", as: "at_text")) FROM execution_events WHERE id > $1 ORDER BY id LIMIT $2
            """, [after, limit])
        if events.isEmpty && !final { return nil }
        let ids = Array(Set(events.map { $0.int64("execution_id") }))
        let rows = ids.isEmpty ? [] : try db.query("SELECT \(Executions.columns) FROM executions e WHERE e.id = ANY($1::bigint[])",
                                                   [Int64Array(ids)])
        var byID: [Int64: JSON] = [:]
        for (row, json) in zip(rows, try Executions.render(db, rows)) { byID[row.int64("id")] = json }
        // An execution deleted since is left out; `next` still moves past its events.
        let items: [JSON] = events.compactMap { ev in
            guard let execution = byID[ev.int64("execution_id")] else { return nil }
            return .object([("id", .int(ev.int64("id"))), ("type", .string(ev.string("type"))), ("at", ts(ev, "at_text")),
                            ("execution", execution)])
        }
        return Reply.json(200, .object([("events", .array(items)), ("next", .int(events.last?.int64("id") ?? after))]),
                          )
    }
}
