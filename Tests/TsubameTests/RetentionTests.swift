// SPDX-License-Identifier: MIT
// Deleting old history against a real PostgreSQL, with the clock passed in.

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameHTTP
@testable import TsubamePostgres

@Suite(.serialized, .enabled(if: TestDB.enabled, "set TSUBAME_TEST_DATABASE_URL to run the PostgreSQL-backed tests"))
struct RetentionTests {
    let db: PGConnection
    let admin: Client
    let server: Int64

    init() throws {
        let url = try TestDB.sibling("retention")
        db = try TestDB.reset(url)
        try TestDB.addUser(db, "admin", role: "admin")
        admin = Client(try TestDB.makeApp(base: url))
        admin.login("admin")
        server = admin.post("/api/v1/servers", #"{"name":"s","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"}"#)
            .json["id"]?.int64Value ?? 0
    }

    func job(retentionDays: Int? = nil) throws -> Int64 {
        let id = admin.post("/api/v1/jobs", #"{"name":"j-\#(UUID().uuidString.prefix(8))","script":"true","server_ids":[\#(server)]}"#)
            .json["id"]?.int64Value ?? 0
        try db.query("UPDATE jobs SET retention_days = $2 WHERE id = $1", [id, retentionDays])
        return id
    }

    /// A run of `job` created `daysAgo` days before 2026-06-01, finished (or not), with a log line.
    func run(_ job: Int64, daysAgo: Int, status: String = "succeeded") throws -> Int64 {
        let id = admin.post("/api/v1/jobs/\(job)/run").json["id"]?.int64Value ?? 0
        let final = status != "queued" && status != "running"
        try db.query("""
            UPDATE executions SET created_at = '2026-06-01T00:00:00Z'::timestamptz - make_interval(days => $2), status = $3,
                   started_at = CASE WHEN $3 <> 'queued' THEN now() END, finished_at = CASE WHEN $4 THEN now() END WHERE id = $1
            """, [id, daysAgo, status, final])
        _ = try Queue.appendLog(db, executionID: id, pieces: [LogPiece(serverID: server, stream: "system", data: "line")])
        return id
    }

    func exists(_ id: Int64) throws -> Bool { !(try db.query("SELECT 1 FROM executions WHERE id = $1", [id]).isEmpty) }
    let now = Timestamp.parse("2026-06-01T00:00:00Z")!

    @Test func oldRunsGoByTheirJobsRetentionInBatchesAndUnfinishedOnesStay() throws {
        let plain = try job(), keepYear = try job(retentionDays: 365), keepWeek = try job(retentionDays: 7)
        let oldPlain = try (0..<5).map { _ in try run(plain, daysAgo: 40) }
        let newPlain = try run(plain, daysAgo: 10)
        let stuck = try run(plain, daysAgo: 90, status: "running")
        let yearOld = try run(keepYear, daysAgo: 200)
        let weekOld = try run(keepWeek, daysAgo: 8)
        let deletedJob = try job()
        let orphan = try run(deletedJob, daysAgo: 31)
        #expect(admin.delete("/api/v1/jobs/\(deletedJob)").status == 204)
        try db.query("INSERT INTO audit_log (action, at) VALUES ('old', $1::timestamptz - interval '400 days'), ('new', $1)", [now])

        let first = try Retention.sweep(db, defaultDays: 30, auditDays: 365, batch: 4, now: now)
        #expect(first.executions == 4 && first.auditEntries == 1)
        let second = try Retention.sweep(db, defaultDays: 30, auditDays: 365, batch: 4, now: now)
        #expect(second.executions == 3)
        #expect(try Retention.sweep(db, defaultDays: 30, auditDays: 365, batch: 4, now: now) == .init())
        for id in oldPlain + [weekOld, orphan] { #expect(try !exists(id), "execution \(id) should be gone") }
        for id in [newPlain, stuck, yearOld] { #expect(try exists(id), "execution \(id) should stay") }
        // Their targets and output went with them; the rest stays.
        #expect(try db.query("SELECT count(*) AS n FROM log_chunks WHERE execution_id = ANY($1)", [Int64Array(oldPlain)])[0].int("n") == 0)
        #expect(try db.query("SELECT count(*) AS n FROM execution_targets WHERE execution_id = ANY($1)", [Int64Array(oldPlain)])[0].int("n") == 0)
        #expect(try db.query("SELECT count(*) AS n FROM log_chunks WHERE execution_id = $1", [newPlain])[0].int("n") == 1)
        #expect(try db.query("SELECT action FROM audit_log WHERE action IN ('old', 'new')").map { $0.string("action") } == ["new"])
        // 0 keeps forever, but a job's own retention still applies.
        _ = try run(plain, daysAgo: 3000)
        let short = try run(keepWeek, daysAgo: 30)
        #expect(try Retention.sweep(db, defaultDays: 0, auditDays: 0, now: now) == .init(executions: 1))
        #expect(try !exists(short))
    }

    @Test func aRetryOutlivesTheRunItRepeated() throws {
        let plain = try job()
        let old = try run(plain, daysAgo: 40)
        let retry = admin.post("/api/v1/executions/\(old)/rerun").json["id"]?.int64Value ?? 0
        #expect(try db.query("SELECT parent_id FROM executions WHERE id = $1", [retry])[0].optInt64("parent_id") == old)
        try db.query("UPDATE executions SET created_at = $2::timestamptz - interval '1 day' WHERE id = $1", [retry, now])
        #expect(try Retention.sweep(db, defaultDays: 30, auditDays: 0, now: now) == .init(executions: 1))
        #expect(try !exists(old) && exists(retry))
        #expect(try db.query("SELECT parent_id FROM executions WHERE id = $1", [retry])[0].optInt64("parent_id") == nil)
        // Found through its index (migration 0012), not by reading every execution.
        let plan = try db.transaction { () throws -> String in
            try db.query("SET LOCAL enable_seqscan = off")  // (the table is tiny here)
            return try db.query("EXPLAIN SELECT id FROM executions WHERE parent_id = 1").map { $0.string("QUERY PLAN") }.joined()
        }
        #expect(plan.contains("executions_parent_id_idx"), "\(plan)")
    }
}
