// SPDX-License-Identifier: MIT
// Jobs: a script, the servers it runs on, its environment and schedule.
// secret_env values are sealed and write-only; only their names are shown.

import Foundation
import TsubameCore
import TsubameCrypto
import TsubameFastCGI
import TsubamePostgres

enum Jobs {
    static let columns = """
        j.id, j.name, j.description, j.script, j.env::text AS env_json, to_json(j.secret_env_names)::text AS secret_names_json,
        j.timeout_seconds, j.schedule, j.timezone, j.misfire, j.concurrency, j.max_parallel, j.retries,
        to_json(j.tags)::text AS tags_json, j.enabled, \(NotifyItems.publicSQL("j.notify")) AS notify_json, to_json(j.run_after)::text AS run_after_json, j.run_after_condition,
        (SELECT coalesce(json_agg(js.server_id ORDER BY js.position), '[]') FROM job_servers js WHERE js.job_id = j.id)::text AS servers_json,
        \(tsSQL("j.created_at", as: "created")), \(tsSQL("j.updated_at", as: "updated")),
        (SELECT json_build_object('id', e.id, 'status', e.status, 'finished_at',
                                  to_char(e.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
         FROM executions e WHERE e.job_id = j.id ORDER BY e.id DESC LIMIT 1)::text AS last_json
        """
    static func json(_ r: PGRow) -> JSON {
        var nextRuns: [JSON] = []
        if r.bool("enabled"), let expr = r["schedule"] {
            nextRuns = NextRunsCache.shared.next(expr, timezone: r.string("timezone")).map(JSON.string)
        }
        return .object([
            ("id", .int(r.int64("id"))), ("name", .string(r.string("name"))), ("description", .string(r.string("description"))),
            ("script", .string(r.string("script"))), ("server_ids", r.json("servers_json")), ("env", r.json("env_json")),
            ("secret_env_names", r.json("secret_names_json")), ("timeout_seconds", .int(r.int("timeout_seconds"))),
            ("schedule", .optString(r["schedule"])), ("timezone", .string(r.string("timezone"))), ("misfire", .string(r.string("misfire"))),
            ("next_runs", .array(nextRuns)), ("concurrency", .string(r.string("concurrency"))),
            ("max_parallel", .int(r.int("max_parallel"))), ("retries", .int(r.int("retries"))), ("tags", r.json("tags_json")),
            ("enabled", .bool(r.bool("enabled"))), ("notify", r.json("notify_json")), ("run_after", r.json("run_after_json")),
            ("run_after_condition", .string(r.string("run_after_condition"))), ("last_execution", r.json("last_json")),
            ("created_at", ts(r, "created")), ("updated_at", ts(r, "updated")),
        ])
    }

    static func list(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        let q = try ctx.query()
        let (limit, after) = try ctx.page(q)
        let rows = try ctx.db.query("""
            SELECT \(columns) FROM jobs j
            WHERE j.id > $1 AND ($2::text IS NULL OR $2 = ANY(j.tags))
              AND ($3::text IS NULL OR j.name ILIKE $3 OR j.description ILIKE $3)
            ORDER BY j.id LIMIT $4
            """, [after ?? 0, q["tag"].flatMap { $0.isEmpty ? nil : $0 }, q["q"].flatMap { $0.isEmpty ? nil : likePattern($0) }, limit + 1])
        let (page, next) = Cursor.page(rows, limit: limit) { $0.int64("id") }
        return Reply.list(page.map(json), next: next)
    }

    static func fetch(_ db: PGConnection, _ id: Int64) throws -> PGRow {
        guard let row = try db.query("SELECT \(columns) FROM jobs j WHERE j.id = $1", [id]).first else { throw APIError.notFound("job") }
        return row
    }

    static func get(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        return Reply.json(200, json(try fetch(try ctx.db, ctx.id())))
    }

    struct Input {
        var name, description, script, timezone, misfire, concurrency, runAfterCondition: String?
        var schedule: String??
        var serverIDs, runAfter: [Int64]?
        var env: [(String, String?)]?
        var secretEnv: [(String, String?)]?
        var timeout, maxParallel, retries: Int64?
        var tags: [String]?
        var enabled: Bool?
        var notify: [NotifyItem]?
    }

    static func read(_ ctx: Context, creating: Bool) throws -> Input {
        var b = try BodyReader(try ctx.json())
        let req: Presence = creating ? .required : .optional
        var i = Input()
        i.name = b.string("name", req, min: 1, max: 100, pattern: "^[^\\x00-\\x1f\\x7f]+$", patternHelp: "must not contain control characters")
        i.description = b.string("description", .optional, max: 2000)
        i.script = b.string("script", req, min: 1, max: 1 << 20)
        if let s = i.script {
            if s.utf8.count > 1 << 20 { b.fail("script", "must be at most 1 MiB") }
            else if s.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { b.fail("script", "must not be empty") }
        }
        i.serverIDs = b.ids("server_ids", req, min: 1, max: 1000)
        i.env = b.env("env")
        i.secretEnv = b.env("secret_env", allowNullValues: !creating)
        i.timeout = b.int("timeout_seconds", .optional, range: 1...86400)
        if let v = b.raw("schedule", .optional) {
            if v.isNull { i.schedule = .some(nil) }
            else if let s = v.stringValue {
                do { _ = try CronSchedule(parsing: s); i.schedule = .some(s) } catch { b.fail("schedule", error.message) }
            } else { b.fail("schedule", "must be a cron expression or null, got \(v.typeName)") }
        }
        i.timezone = b.string("timezone", .optional, min: 1, max: 64)
        if let tz = i.timezone, TimeZone(identifier: tz) == nil || !tz.contains(where: { $0.isLetter }) {
            b.fail("timezone", "must be an IANA time zone name such as UTC or Europe/Berlin")
        }
        i.misfire = b.oneOf("misfire", .optional, ["run_once", "skip"])
        i.runAfterCondition = b.oneOf("run_after_condition", .optional, ["success", "failure", "always"])
        i.concurrency = b.oneOf("concurrency", .optional, ["allow", "skip", "queue"])
        i.maxParallel = b.int("max_parallel", .optional, range: 1...1000)
        i.retries = b.int("retries", .optional, range: 0...10)
        i.tags = b.tags("tags")
        i.enabled = b.bool("enabled", .optional)
        i.notify = readNotify(&b)
        i.runAfter = b.ids("run_after", .optional, min: 0, max: 20)
        try b.finish()
        return i
    }

    static func readNotify(_ b: inout BodyReader) -> [NotifyItem]? {
        guard let v = b.raw("notify", .optional) else { return nil }
        guard let items = v.arrayValue else { b.fail("notify", "must be an array, got \(v.typeName)"); return nil }
        if items.count > 20 { b.fail("notify", "must have at most 20 items"); return nil }
        var out: [NotifyItem] = []
        for (n, item) in items.enumerated() {
            guard let parsed = NotifyItem.read(item, field: "notify[\(n)]", &b) else { return nil }
            out.append(parsed)
        }
        return out
    }

    /// 422 naming ids that do not exist.
    static func requireExisting(_ db: PGConnection, table: String, field: String, _ ids: [Int64]) throws {
        guard !ids.isEmpty else { return }
        let found = Set(try db.query("SELECT id FROM \(table) WHERE id = ANY($1::bigint[]) FOR KEY SHARE", [Int64Array(ids)]).map { $0.int64("id") })
        let missing = ids.filter { !found.contains($0) }
        if !missing.isEmpty {
            throw APIError.validation([FieldError(field, "no such \(table == "servers" ? "server" : "job"): \(missing.map(String.init).joined(separator: ", "))")])
        }
    }

    static func envObject(_ pairs: [(String, String?)]) -> JSON { .object(pairs.compactMap { k, v in v.map { (k, .string($0)) } }) }

    static func sealSecrets(_ box: SecretBox, _ pairs: [(String, String?)]) throws -> (Bytea?, String?, TextArray) {
        let present = pairs.compactMap { k, v in v.map { (k, $0) } }
        if present.isEmpty { return (nil, nil, TextArray([])) }
        let sealed = try box.seal(JSON.object(present.map { ($0.0, .string($0.1)) }).encoded())
        return (Bytea(sealed), box.keyID, TextArray(present.map(\.0).sorted()))
    }

    static func setServers(_ db: PGConnection, job: Int64, _ ids: [Int64]) throws {
        try db.query("DELETE FROM job_servers WHERE job_id = $1", [job])
        try db.query("""
            INSERT INTO job_servers (job_id, server_id, position)
            SELECT $1, s, n FROM unnest($2::bigint[]) WITH ORDINALITY AS t(s, n)
            """, [job, Int64Array(ids)])
    }

    static func create(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.operator_)
        let i = try read(ctx, creating: true)
        guard let name = i.name, let script = i.script, let servers = i.serverIDs else { throw APIError.validation([]) }
        let db = try ctx.db
        let (secret, keyID, secretNames) = try sealSecrets(ctx.app.box, i.secretEnv ?? [])
        let notify = try NotifyItems.stored(i.notify ?? [], box: ctx.app.box, current: nil)
        let row = try db.transaction { () throws -> PGRow in
            try requireExisting(db, table: "servers", field: "server_ids", servers)
            try requireExisting(db, table: "jobs", field: "run_after", i.runAfter ?? [])
            let id: Int64
            do {
                id = try db.query("""
                    INSERT INTO jobs (name, description, script, env, secret_env, secret_key_id, secret_env_names, timeout_seconds,
                        schedule, timezone, misfire, concurrency, max_parallel, retries, tags, enabled, notify, run_after, run_after_condition)
                    VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::jsonb, $18, $19) RETURNING id
                    """, [name, i.description ?? "", script, envObject(i.env ?? []), secret, keyID, secretNames, i.timeout ?? 3600,
                          i.schedule ?? nil, i.timezone ?? "UTC", i.misfire ?? "skip", i.concurrency ?? "allow", i.maxParallel ?? 10,
                          i.retries ?? 0, TextArray(i.tags ?? []), i.enabled ?? true, notify,
                          Int64Array(i.runAfter ?? []), i.runAfterCondition ?? "success"])[0].int64("id")
            } catch let e as PGError where e.isUniqueViolation {
                throw APIError.conflict("A job named \(name) already exists.")
            }
            try setServers(db, job: id, servers)
            try ctx.audit("job.create", target: "job:\(id)", detail: .object([("name", .string(name))]))
            return try fetch(db, id)
        }
        return Reply.json(201, json(row))
    }

    static func update(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.operator_)
        let id = ctx.id()
        let i = try read(ctx, creating: false)
        let db = try ctx.db
        let box = ctx.app.box
        let row = try db.transaction { () throws -> PGRow in
            guard let cur = try db.query("SELECT secret_env, notify::text AS notify FROM jobs WHERE id = $1 FOR UPDATE", [id]).first else {
                throw APIError.notFound("job")
            }
            if let s = i.serverIDs { try requireExisting(db, table: "servers", field: "server_ids", s) }
            if let r = i.runAfter {
                if r.contains(id) { throw APIError.validation([FieldError("run_after", "a job cannot run after itself")]) }
                try requireExisting(db, table: "jobs", field: "run_after", r)
                // A job listed here must not itself run (directly or through others) after this one: that would loop.
                if let loop = try db.query("""
                    WITH RECURSIVE after_this(id) AS (
                        SELECT j.id FROM jobs j WHERE $1 = ANY(j.run_after)
                        UNION SELECT j.id FROM jobs j JOIN after_this a ON a.id = ANY(j.run_after)
                    ) SELECT id FROM after_this WHERE id = ANY($2::bigint[]) ORDER BY id LIMIT 1
                    """, [id, Int64Array(r)]).first {
                    throw APIError.validation([FieldError("run_after",
                        "job \(loop.int64("id")) already runs after this job (directly or through others): that would be a cycle")])
                }
            }
            var secretChange: (Bytea?, String?, TextArray)? = nil
            if let changes = i.secretEnv {
                // PATCH merges secrets: a string sets one, null removes it, absent ones stay.
                var current: [(String, String?)] = []
                if let sealed = cur.bytea("secret_env"), let obj = try JSON.parse(try box.open(sealed)).objectValue {
                    current = obj.map { ($0.0, $0.1.stringValue) }
                }
                for (k, v) in changes {
                    current.removeAll { $0.0 == k }
                    if v != nil { current.append((k, v)) }
                }
                secretChange = try sealSecrets(box, current)
            }
            // Items sent back without `secret` keep the stored secret of the same receiver.
            let notify = try i.notify.map { try NotifyItems.stored($0, box: box, current: try JSON.parse(cur.string("notify"))) }
            do {
                try db.query("""
                    UPDATE jobs SET name = coalesce($2, name), description = coalesce($3, description), script = coalesce($4, script),
                        env = coalesce($5::jsonb, env), secret_env = CASE WHEN $6 THEN $7 ELSE secret_env END,
                        secret_key_id = CASE WHEN $6 THEN $8 ELSE secret_key_id END,
                        secret_env_names = CASE WHEN $6 THEN $9 ELSE secret_env_names END,
                        timeout_seconds = coalesce($10, timeout_seconds), schedule = CASE WHEN $11 THEN $12 ELSE schedule END,
                        timezone = coalesce($13, timezone), misfire = coalesce($14, misfire), concurrency = coalesce($15, concurrency),
                        max_parallel = coalesce($16, max_parallel), retries = coalesce($17, retries), tags = coalesce($18, tags),
                        enabled = coalesce($19, enabled), notify = coalesce($20::jsonb, notify), run_after = coalesce($21, run_after),
                        run_after_condition = coalesce($22, run_after_condition), updated_at = now()
                    WHERE id = $1
                    """, [id, i.name, i.description, i.script, i.env.map(envObject), secretChange != nil, secretChange?.0,
                          secretChange?.1, secretChange?.2, i.timeout, i.schedule != nil, i.schedule ?? nil, i.timezone, i.misfire,
                          i.concurrency, i.maxParallel, i.retries, i.tags.map(TextArray.init), i.enabled, notify,
                          i.runAfter.map(Int64Array.init), i.runAfterCondition])
            } catch let e as PGError where e.isUniqueViolation {
                throw APIError.conflict("A job named \(i.name ?? "") already exists.")
            }
            if let s = i.serverIDs { try setServers(db, job: id, s) }
            try ctx.audit("job.update", target: "job:\(id)")
            return try fetch(db, id)
        }
        return Reply.json(200, json(row))
    }

    static func delete(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.operator_)
        let id = ctx.id()
        let db = try ctx.db
        try db.transaction {
            guard let cur = try db.query("DELETE FROM jobs WHERE id = $1 RETURNING name", [id]).first else { throw APIError.notFound("job") }
            try db.query("UPDATE jobs SET run_after = array_remove(run_after, $1) WHERE $1 = ANY(run_after)", [id])
            try ctx.audit("job.delete", target: "job:\(id)", detail: .object([("name", .string(cur.string("name")))]))
        }
        return Reply.noContent()
    }
}

/// The next five fire times per (schedule, time zone), computed once and reused until the first of them passes.
final class NextRunsCache: @unchecked Sendable {
    static let shared = NextRunsCache()
    private let lock = NSLock()
    private var entries: [String: (until: Date, runs: [String])] = [:]

    func next(_ expr: String, timezone: String) -> [String] {
        let key = expr + "|" + timezone
        let now = Date()
        lock.lock()
        if let e = entries[key], e.until > now { lock.unlock(); return e.runs }
        lock.unlock()
        guard let cron = try? CronSchedule(parsing: expr), let tz = TimeZone(identifier: timezone) else { return [] }
        let dates = cron.nextRuns(after: now, count: 5, timeZone: tz)
        let runs = dates.map(Timestamp.format)
        lock.lock()
        if entries.count > 10_000 { entries.removeAll() }
        entries[key] = (dates.first ?? now.addingTimeInterval(60), runs)
        lock.unlock()
        return runs
    }
}

extension Error {
    var message: String { (self as? CronError)?.message ?? String(describing: self) }
}
