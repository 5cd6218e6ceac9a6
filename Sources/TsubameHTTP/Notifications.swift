// SPDX-License-Identifier: MIT
// Notifications in the API: a job's notify items (reading, storing with the
// webhook secret sealed, showing without it), the delivery log, and "send a
// test notification".

import Foundation
import TsubameCore
import TsubameCrypto
import TsubameFastCGI
import TsubameNotify
import TsubamePostgres

/// One notify item as a request gave it.
struct NotifyItem {
    enum Secret { case keep, clear, set(String) }
    var on: [String]
    var type: String
    /// The URL (webhook, slack) or the address (email).
    var target: String
    /// For running_long: the multiple of the median duration (1.5…100; absent = 3).
    var factor: JSON?
    var secret: Secret

    static let events = ["started", "succeeded", "failed", "cancelled", "timed_out", "running_long"]
    static let fields = ["on", "type", "url", "to", "factor", "secret", "secret_set"]
    static let emailPattern = "^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"

    /// Reads one item at `field` (e.g. notify[2]); nil after recording the first problem in `b`.
    static func read(_ item: JSON, field f: String, _ b: inout BodyReader) -> NotifyItem? {
        guard let members = item.objectValue else { b.fail(f, "must be an object"); return nil }
        for (k, _) in members where !fields.contains(k) { b.fail("\(f).\(k)", "is not a known field"); return nil }
        guard let on = item["on"]?.arrayValue, !on.isEmpty,
              on.allSatisfy({ $0.stringValue.map { events.contains($0) || $0 == "long_running" } ?? false }) else {
            b.fail("\(f).on", "must list one or more of: \(events.joined(separator: ", "))"); return nil
        }
        // long_running was this event's first name: still accepted, stored as running_long.
        var list: [String] = []
        for e in on.compactMap(\.stringValue).map({ $0 == "long_running" ? "running_long" : $0 }) where !list.contains(e) { list.append(e) }
        guard let type = item["type"]?.stringValue, ["webhook", "slack", "email"].contains(type) else {
            b.fail("\(f).type", "must be webhook, slack or email"); return nil
        }
        let target: String
        if type == "email" {
            guard let to = item["to"]?.stringValue, to.count <= 254, to.range(of: emailPattern, options: .regularExpression) != nil,
                  item["url"] == nil else {
                b.fail("\(f).to", "must be an e-mail address (and url must be absent)"); return nil
            }
            target = to
        } else {
            guard let url = item["url"]?.stringValue, url.count <= 2000, !url.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }),
                  url.range(of: "^https?://[^\\s/$.?#][^\\s]*$", options: [.regularExpression, .caseInsensitive]) != nil, item["to"] == nil else {
                b.fail("\(f).url", "must be an http or https URL (and to must be absent)"); return nil
            }
            target = url
        }
        var factor: JSON? = nil
        if let v = item["factor"] {
            guard case let .number(text) = v.resolved, let d = Double(text), d >= 1.5, d <= 100 else {
                b.fail("\(f).factor", "must be a number from 1.5 to 100 (running longer than factor × the median duration)"); return nil
            }
            factor = .number(text)
        }
        var secret = Secret.keep
        if let v = item["secret"] {
            guard type == "webhook" else { b.fail("\(f).secret", "only webhook notifications are signed with a secret"); return nil }
            guard let s = v.stringValue else { b.fail("\(f).secret", "must be a string, got \(v.typeName)"); return nil }
            if s.isEmpty { secret = .clear } else {
                guard s.count >= 8, s.count <= 256, !s.utf8.contains(0) else {
                    b.fail("\(f).secret", "must be 8 to 256 characters (or \"\" to remove it)"); return nil
                }
                secret = .set(s)
            }
        }
        if let v = item["secret_set"], v.boolValue == nil {
            b.fail("\(f).secret_set", "is read-only (true or false as the job shows it); send secret to change it"); return nil
        }
        return NotifyItem(on: list, type: type, target: target, factor: factor, secret: secret)
    }
}

enum NotifyItems {
    /// SQL turning a stored notify column into what the API shows: the sealed secret removed, `secret_set` on webhook items.
    static func publicSQL(_ column: String) -> String {
        """
        (SELECT coalesce(jsonb_agg(CASE WHEN n.item->>'type' = 'webhook'
                    THEN (n.item - 'secret_sealed' - 'secret_key_id') || jsonb_build_object('secret_set', n.item ? 'secret_sealed')
                    ELSE n.item END ORDER BY n.pos), '[]'::jsonb)
         FROM jsonb_array_elements(\(column)) WITH ORDINALITY AS n(item, pos))::text
        """
    }

    /// The items as stored: a new secret sealed with `box`; an item without `secret` keeps the sealed secret of the
    /// current item with the same type and URL; `secret: ""` stores none.
    static func stored(_ items: [NotifyItem], box: SecretBox, current: JSON?) throws -> JSON {
        let existing = current?.arrayValue ?? []
        return .array(try items.map { i in
            var m: [(String, JSON)] = [("on", .array(i.on.map(JSON.string))), ("type", .string(i.type)),
                                       (i.type == "email" ? "to" : "url", .string(i.target))]
            if let f = i.factor { m.append(("factor", f)) }
            switch i.secret {
            case .clear: break
            case let .set(s): m += try Receiver.sealSecret(s, box: box)
            case .keep:
                if let old = existing.first(where: { $0["type"]?.stringValue == i.type && $0["url"]?.stringValue == i.target }),
                   let sealed = old["secret_sealed"], let key = old["secret_key_id"] {
                    m += [("secret_sealed", sealed), ("secret_key_id", key)]
                }
            }
            return .object(m)
        })
    }

    /// A stored item without its secret.
    static func withoutSecret(_ item: JSON) -> JSON {
        .object((item.objectValue ?? []).filter { $0.0 != "secret_sealed" && $0.0 != "secret_key_id" })
    }
}

enum Deliveries {
    static let statuses = ["pending", "sent", "failed"]
    static let events = NotifyItem.events + ["test"]

    /// GET /notifications: the delivery log, newest first.
    static func list(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        let q = try ctx.query()
        let (limit, before) = try ctx.page(q)
        func id(_ name: String) throws -> Int64? {
            guard let v = q[name], !v.isEmpty else { return nil }
            guard let n = Routes.parseID(v) else { throw APIError.badRequest("\(name) must be a positive integer id.") }
            return n
        }
        func oneOf(_ name: String, _ allowed: [String]) throws -> String? {
            guard let v = q[name], !v.isEmpty else { return nil }
            guard allowed.contains(v) else { throw APIError.badRequest("\(name) must be one of \(allowed.joined(separator: ", ")).") }
            return v
        }
        let db = try ctx.db
        let rows = try db.query("""
            SELECT d.id, d.job_id, coalesce(j.name, e.job_name) AS job_name, d.execution_id, d.event, d.type, d.destination, d.status,
                   d.attempts, d.last_error, d.response_code, \(tsSQL("d.created_at", as: "created")), \(tsSQL("d.sent_at", as: "sent")),
                   \(tsSQL("CASE WHEN d.status = 'pending' THEN d.next_attempt_at END", as: "next_attempt"))
            FROM notification_deliveries d LEFT JOIN jobs j ON j.id = d.job_id LEFT JOIN executions e ON e.id = d.execution_id
            WHERE ($1 = 0 OR d.id < $1) AND ($2::bigint IS NULL OR d.job_id = $2) AND ($3::bigint IS NULL OR d.execution_id = $3)
              AND ($4::text IS NULL OR d.status = $4) AND ($5::text IS NULL OR d.event = $5) AND ($6::text IS NULL OR d.type = $6)
            ORDER BY d.id DESC LIMIT $7
            """, [before ?? 0, try id("job_id"), try id("execution_id"), try oneOf("status", statuses), try oneOf("event", events),
                  try oneOf("type", ["webhook", "slack", "email"]), limit + 1])
        let (page, next) = Cursor.page(rows, limit: limit) { $0.int64("id") }
        return Reply.list(page.map(json), next: next)
    }

    static func json(_ r: PGRow) -> JSON {
        .object([
            ("id", .int(r.int64("id"))), ("job_id", r.optInt64("job_id").map(JSON.int) ?? .null), ("job_name", .optString(r["job_name"])),
            ("execution_id", r.optInt64("execution_id").map(JSON.int) ?? .null), ("event", .string(r.string("event"))),
            ("type", .string(r.string("type"))), ("destination", .string(r.string("destination"))), ("status", .string(r.string("status"))),
            ("attempts", .int(r.int("attempts"))), ("next_attempt_at", ts(r, "next_attempt")), ("last_error", .optString(r["last_error"])),
            ("response_code", r.optInt64("response_code").map(JSON.int) ?? .null), ("created_at", ts(r, "created")), ("sent_at", ts(r, "sent")),
        ])
    }

    /// POST /jobs/{id}/notify-test: sends a test notification to `item` (before saving it) or to each of the job's
    /// items, now, and answers what came of each (also recorded in the delivery log with event `test`).
    static func test(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.operator_)
        var b = try BodyReader(try ctx.optionalJSON())
        var given: NotifyItem? = nil
        if let raw = b.raw("item", .optional) {
            given = NotifyItem.read(raw, field: "item", &b)
        }
        try b.finish()
        let db = try ctx.db
        let jobID = ctx.id()
        guard let job = try db.query("SELECT id, name, notify::text AS notify FROM jobs WHERE id = $1", [jobID]).first else {
            throw APIError.notFound("job")
        }
        let current = try JSON.parse(job.string("notify"))
        let items = try given.map { try NotifyItems.stored([$0], box: ctx.app.box, current: current).arrayValue ?? [] } ?? (current.arrayValue ?? [])
        guard !items.isEmpty else { throw APIError.conflict("The job has no notifications: add one, or send one as `item` to test it.") }
        let ids = try items.map { _ in try Notifications.nextID(db) }
        let settings = ctx.app.settings.notify
        let box = ctx.app.box
        let name = job.string("name")
        let outcomes = Outcomes(items.count)
        DispatchQueue.concurrentPerform(iterations: items.count) { n in
            let result: TransferResult
            do {
                let receiver = try Receiver(stored: items[n], box: box)
                let notice = Notice(event: "test", deliveryID: ids[n], jobID: jobID, jobName: name, execution: nil, publicURL: settings.publicURL)
                result = Sender.send(notice, to: receiver, settings: settings, timeouts: Timeouts(connectSeconds: settings.timeouts.connectSeconds,
                                                                                           totalSeconds: min(10, settings.timeouts.totalSeconds)))
            } catch {
                result = TransferResult(ok: false, error: "\(error)", permanent: true)
            }
            outcomes.set(n, result)
        }
        var results: [JSON] = []
        for (n, item) in items.enumerated() {
            let r = outcomes.get(n)
            let type = item["type"]?.stringValue ?? ""
            let target = item["url"]?.stringValue ?? item["to"]?.stringValue ?? ""
            let destination = try Notifications.recordTest(db, id: ids[n], jobID: jobID, type: type, target: target,
                                                           item: NotifyItems.withoutSecret(item), ok: r.ok, statusCode: r.statusCode, error: r.error)
            var m: [(String, JSON)] = [("delivery_id", .int(ids[n])), ("type", .string(type)), ("destination", .string(destination)),
                                       ("ok", .bool(r.ok))]
            if let c = r.statusCode { m.append(("status_code", .int(c))) }
            if let e = r.error, !r.ok { m.append(("error", .string(e))) }
            results.append(.object(m))
        }
        try ctx.audit("job.notify_test", target: "job:\(jobID)", detail: .object([
            ("results", .array(results.map { .object([("type", $0["type"] ?? .null), ("ok", $0["ok"] ?? .null)]) })),
        ]))
        return Reply.json(200, .object([("results", .array(results))]))
    }
}

/// Results written by concurrent senders.
private final class Outcomes: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [TransferResult]
    init(_ n: Int) { results = Array(repeating: TransferResult(ok: false, error: "not sent"), count: n) }
    func set(_ i: Int, _ r: TransferResult) { lock.lock(); results[i] = r; lock.unlock() }
    func get(_ i: Int) -> TransferResult { lock.lock(); defer { lock.unlock() }; return results[i] }
}
