// SPDX-License-Identifier: MIT
// What the claim may start, against a real PostgreSQL: a server's max_concurrent, a run's max_parallel, a job's
// concurrency (skip, queue) and run_after, together; and the waiting_reason each queued target shows.

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameHTTP
@testable import TsubamePostgres

@Suite(.serialized, .enabled(if: TestDB.enabled, "set TSUBAME_TEST_DATABASE_URL to run the PostgreSQL-backed tests"))
struct ConcurrencyTests {
    let db: PGConnection
    let admin: Client

    init() throws {
        let url = try TestDB.sibling("conc")
        db = try TestDB.reset(url)
        try TestDB.addUser(db, "admin", role: "admin")
        admin = Client(try TestDB.makeApp(base: url))
        admin.login("admin")
        // An executor that is alive as far as the database knows (waiting reasons say "no executor alive" otherwise).
        try db.query("INSERT INTO executors (id, host, pid) VALUES ('ex-test', 'test', 1)")
    }

    func server(_ name: String, maxConcurrent: Int? = nil) -> Int64 {
        let limit = maxConcurrent.map { #","max_concurrent":\#($0)"# } ?? ""
        let r = admin.post("/api/v1/servers", """
            {"name":"\(name)","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"\(limit)}
            """)
        #expect(r.status == 201, "\(r.text)")
        return r.json["id"]?.int64Value ?? 0
    }

    func job(_ servers: [Int64], maxParallel: Int = 10, concurrency: String = "allow", runAfter: [Int64] = []) -> Int64 {
        let r = admin.post("/api/v1/jobs", """
            {"name":"j-\(UUID().uuidString.prefix(8))","script":"true","server_ids":\(servers),"max_parallel":\(maxParallel),
             "concurrency":"\(concurrency)","run_after":\(runAfter)}
            """)
        #expect(r.status == 201, "\(r.text)")
        return r.json["id"]?.int64Value ?? 0
    }

    func run(_ job: Int64) -> Int64 {
        let r = admin.post("/api/v1/jobs/\(job)/run")
        #expect(r.status == 202, "\(r.text)")
        return r.json["id"]?.int64Value ?? 0
    }

    /// Claims everything claimable now; returns (execution, server) pairs.
    func claim(limit: Int = 100) throws -> [(Int64, Int64?)] {
        try Queue.claim(db, executor: "ex-test", limit: limit, leaseSeconds: 30).map { ($0.executionID, $0.serverID) }
    }

    func finishAll(_ execution: Int64, _ status: String = "succeeded") throws {
        for t in try db.query("SELECT id FROM execution_targets WHERE execution_id = $1 AND status = 'running'", [execution]) {
            #expect(try Queue.finishTarget(db, targetID: t.int64("id"), executor: "ex-test", status: status,
                                           exitCode: status == "succeeded" ? 0 : 1, error: nil, retryDelaySeconds: nil))
        }
    }

    func execution(_ id: Int64) -> JSON { admin.get("/api/v1/executions/\(id)").json }

    @Test func aServerRunsAtMostItsMaxConcurrentTargetsOverAllJobs() throws {
        let small = server("small", maxConcurrent: 2), other = server("other")
        #expect(admin.get("/api/v1/servers/\(other)").json["max_concurrent"]?.int64Value == 4)
        let a = job([small]), b = job([small, other])
        let runs = [run(a), run(b), run(a)]
        let first = try claim()
        // small takes two (the oldest two), other takes b's target: the busy server holds up nobody else.
        #expect(first.filter { $0.1 == small }.map(\.0) == [runs[0], runs[1]])
        #expect(first.filter { $0.1 == other }.map(\.0) == [runs[1]])
        let third = execution(runs[2])
        let reason = third["waiting_reason"]?.stringValue ?? ""
        #expect(reason.hasPrefix("server busy: small already runs 2 targets"), "\(third)")
        #expect(third["targets"]?.arrayValue?.first?["waiting_reason"]?.stringValue == reason)
        #expect(try claim().isEmpty)
        try finishAll(runs[0])
        #expect(try claim().map(\.0) == [runs[2]])
        // The limit is validated and can be changed.
        #expect(admin.patch("/api/v1/servers/\(small)", #"{"max_concurrent":0}"#).status == 422)
        #expect(admin.patch("/api/v1/servers/\(small)", #"{"max_concurrent":1001}"#).status == 422)
        #expect(admin.patch("/api/v1/servers/\(small)", #"{"max_concurrent":"3"}"#).status == 422)
        #expect(admin.patch("/api/v1/servers/\(small)", #"{"max_concurrent":3}"#).json["max_concurrent"]?.int64Value == 3)
    }

    @Test func maxParallelAndServerLimitsCombineWithoutWastingASlot() throws {
        let busy = server("busy", maxConcurrent: 1), s2 = server("s2"), s3 = server("s3"), s4 = server("s4")
        let blocker = job([busy])
        let wide = job([busy, s2, s3, s4], maxParallel: 2)
        let r0 = run(blocker)
        #expect(try claim().map(\.0) == [r0])
        let r1 = run(wide)
        // busy is full: wide's first target waits for it, and its max_parallel 2 goes to s2 and s3.
        let got = try claim()
        #expect(got.map(\.0) == [r1, r1] && got.map(\.1) == [s2, s3])
        let e = execution(r1)
        let reasons = (e["targets"]?.arrayValue ?? []).compactMap { $0["waiting_reason"]?.stringValue }
        #expect(reasons.count == 2 && reasons.allSatisfy { $0.contains("max_parallel (2)") }, "\(e)")
        try finishAll(r0)
        try finishAll(r1)
        let next = try claim()
        #expect(Set(next.compactMap(\.1)) == [busy, s4])
    }

    @Test func concurrencyQueueRunsOneExecutionOfAJobAtATimeInOrder() throws {
        let s = server("q1"), t = server("q2")
        let q = job([s, t], concurrency: "queue")
        let runs = [run(q), run(q), run(q)]
        #expect(Set(try claim().map(\.0)) == [runs[0]])
        let second = execution(runs[1])
        #expect(second["waiting_reason"]?.stringValue
                == "job concurrency: queued behind execution #\(runs[0]) of this job (concurrency: queue)", "\(second)")
        #expect(execution(runs[2])["waiting_reason"]?.stringValue?.contains("#\(runs[0])") == true)
        try finishAll(runs[0], "failed")
        #expect(Set(try claim().map(\.0)) == [runs[1]])
        #expect(execution(runs[2])["waiting_reason"]?.stringValue?.contains("#\(runs[1])") == true)
        // A cancelled queued run never starts.
        #expect(admin.post("/api/v1/executions/\(runs[2])/cancel").status == 202)
        try finishAll(runs[1])
        #expect(try claim().isEmpty)
    }

    @Test func concurrencySkipRefusesAManualRunWhileTheJobRuns() throws {
        let s = server("sk")
        let j = job([s], concurrency: "skip")
        let first = run(j)
        let r = admin.post("/api/v1/jobs/\(j)/run")
        #expect(r.status == 409 && r.text.contains("#\(first)") && r.text.contains("concurrency is skip"), "\(r.text)")
        #expect(try claim().map(\.0) == [first])
        try finishAll(first, "failed")
        // A re-run of the finished one is a new run like any other: allowed now, refused while it runs.
        let again = admin.post("/api/v1/executions/\(first)/rerun")
        #expect(again.status == 202, "\(again.text)")
        #expect(admin.post("/api/v1/executions/\(first)/rerun").status == 409)
        #expect(try db.query("SELECT count(*) AS n FROM executions WHERE job_id = $1", [j])[0].int("n") == 2)
    }

    @Test func aJobWaitsForTheUnfinishedRunOfAJobItRunsAfter() throws {
        let s = server("d1"), t = server("d2")
        let parent = job([s])
        let child = job([t], runAfter: [parent])
        let p = run(parent)
        let c = run(child)
        #expect(try claim().map(\.0) == [p])
        let waiting = execution(c)
        #expect(waiting["waiting_reason"]?.stringValue?.hasPrefix("dependency pending: runs after job ") == true, "\(waiting)")
        #expect(waiting["waiting_reason"]?.stringValue?.contains("#\(p)") == true)
        try finishAll(p)
        // The parent's success queued a dependency run too; both of the child's runs may go now (concurrency allow).
        let dependent = try db.query("SELECT id, parent_id FROM executions WHERE job_id = $1 AND trigger = 'dependency'", [child])
        #expect(dependent.count == 1 && dependent.first?.int64("parent_id") == p)
        #expect(Set(try claim().map(\.0)) == Set([c] + dependent.map { $0.int64("id") }))
    }

    @Test func waitingReasonsForNoExecutorRetryAndCancel() throws {
        let s = server("w1")
        let j = job([s])
        let e = run(j)
        try db.query("UPDATE executors SET last_seen = now() - interval '1 hour'")
        #expect(execution(e)["waiting_reason"] == "no executor alive: start tsubame-executor")
        try db.query("UPDATE executors SET last_seen = now()")
        #expect(execution(e)["waiting_reason"] == "waiting for an executor to pick it up")
        try db.query("UPDATE execution_targets SET run_at = now() + interval '1 minute' WHERE execution_id = $1", [e])
        #expect(execution(e)["waiting_reason"]?.stringValue?.hasPrefix("retry backoff") == true)
        #expect(try claim().isEmpty)
        try db.query("UPDATE execution_targets SET run_at = now() WHERE execution_id = $1", [e])
        #expect(try claim(limit: 0).isEmpty)
        #expect(try claim(limit: 1).map(\.0) == [e])
        try finishAll(e)
        #expect(execution(e)["waiting_reason"] == nil)
    }
}
