// SPDX-License-Identifier: MIT
// The scheduler against a real PostgreSQL, with the clock passed in: no test waits for a minute.

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameHTTP
@testable import TsubamePostgres

@Suite(.serialized, .enabled(if: TestDB.enabled, "set TSUBAME_TEST_DATABASE_URL to run the PostgreSQL-backed tests"))
struct SchedulerTests {
    let db: PGConnection
    let admin: Client
    let url: String
    let server: Int64

    init() throws {
        url = try TestDB.sibling("sched")
        db = try TestDB.reset(url)
        try TestDB.addUser(db, "admin", role: "admin")
        admin = Client(try TestDB.makeApp(base: url))
        admin.login("admin")
        server = admin.post("/api/v1/servers", #"{"name":"s","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"}"#)
            .json["id"]?.int64Value ?? 0
    }

    func t(_ s: String) -> Date { Timestamp.parse(s)! }

    func job(_ schedule: String, timezone: String = "UTC", misfire: String = "skip", concurrency: String = "allow",
             enabled: Bool = true) -> Int64 {
        let r = admin.post("/api/v1/jobs", """
            {"name":"j-\(UUID().uuidString.prefix(8))","script":"true","server_ids":[\(server)],"schedule":"\(schedule)",
             "timezone":"\(timezone)","misfire":"\(misfire)","concurrency":"\(concurrency)","enabled":\(enabled)}
            """)
        #expect(r.status == 201, "\(r.text)")
        return r.json["id"]?.int64Value ?? 0
    }

    func slots(_ job: Int64) throws -> [String] {
        try db.query("""
            SELECT to_char(schedule_slot AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS s FROM executions
            WHERE job_id = $1 AND trigger = 'schedule' ORDER BY schedule_slot
            """, [job]).map { $0.string("s") }
    }

    func nextRun(_ job: Int64) throws -> String {
        try db.query("SELECT to_char(next_run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS s FROM jobs WHERE id = $1",
                     [job])[0].string("s")
    }

    @Test func aSlotFiresOnceOnTimeAndTheNextIsKept() throws {
        let j = job("*/5 * * * *")
        // The first tick only learns the next slot: nothing from before the schedule existed fires.
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:02:00Z")).created.isEmpty)
        #expect(try nextRun(j) == "2026-01-10T10:05:00Z")
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:04:59Z")).created.isEmpty)
        let fired = try Scheduler.tick(db, now: t("2026-01-10T10:05:00.400Z"))
        #expect(fired.created.count == 1 && fired.leader)
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:05:01Z")).created.isEmpty)
        #expect(try slots(j) == ["2026-01-10T10:05:00Z"])
        #expect(try nextRun(j) == "2026-01-10T10:10:00Z")
        let e = admin.get("/api/v1/executions/\(fired.created[0])").json
        #expect(e["trigger"]?.stringValue == "schedule" && e["triggered_by"] == .null && e["status"]?.stringValue == "queued")
        #expect(e["targets"]?.arrayValue?.count == 1)
        // Late but within the grace period: still on time.
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:10:45Z")).created.count == 1)
        #expect(try slots(j).last == "2026-01-10T10:10:00Z")
    }

    @Test func twoSchedulersRacingForOneSlotMakeOneExecution() throws {
        let j = job("0 * * * *")
        _ = try Scheduler.tick(db, now: t("2026-01-10T09:30:00Z"))
        let other = try PGConnection(url)
        let results = Counts()
        let conns = [db, other]
        let now = t("2026-01-10T10:00:01Z")
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            results.add((try? Scheduler.tick(conns[i], now: now).created.count) ?? -100)
        }
        #expect(results.total == 1, "\(results.total)")
        #expect(try slots(j) == ["2026-01-10T10:00:00Z"])
        // Even without the lock, the (job, slot) key refuses a second execution for the slot.
        #expect(try Queue.enqueue(db, jobID: j, trigger: "schedule", userID: nil, username: nil, envOverrides: nil,
                                  scheduleSlot: t("2026-01-10T10:00:00Z")) == nil)
        #expect(try slots(j).count == 1)
    }

    @Test func missedSlotsRunOnceOrAreSkippedPerJob() throws {
        let once = job("0 * * * *", misfire: "run_once")
        let skip = job("0 * * * *", misfire: "skip")
        _ = try Scheduler.tick(db, now: t("2026-01-10T10:00:30Z"))
        #expect(try nextRun(once) == "2026-01-10T11:00:00Z")
        // Everything was down from 10:01 to 14:30: four slots passed.
        let back = try Scheduler.tick(db, now: t("2026-01-10T14:30:00Z"))
        #expect(back.created.count == 1 && back.skipped == 3 + 4)
        #expect(try slots(once) == ["2026-01-10T14:00:00Z"])
        #expect(try slots(skip).isEmpty)
        #expect(try nextRun(once) == "2026-01-10T15:00:00Z" && nextRun(skip) == "2026-01-10T15:00:00Z")
    }

    @Test func disabledJobsNeverFireAndEnablingStartsFromNow() throws {
        let j = job("*/10 * * * *", enabled: false)
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:00:05Z")).created.isEmpty)
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:10:05Z")).created.isEmpty)
        #expect(admin.patch("/api/v1/jobs/\(j)", #"{"enabled":true}"#).status == 200)
        // Enabled at 10:55 (by the clock of this test): 10:20 … 10:50 do not fire, 11:00 does.
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:55:00Z")).created.isEmpty)
        #expect(try nextRun(j) == "2026-01-10T11:00:00Z")
        #expect(try Scheduler.tick(db, now: t("2026-01-10T11:00:02Z")).created.count == 1)
        // A changed schedule starts from now as well.
        #expect(admin.patch("/api/v1/jobs/\(j)", #"{"schedule":"0 12 * * *"}"#).status == 200)
        #expect(try Scheduler.tick(db, now: t("2026-01-10T11:00:03Z")).created.isEmpty)
        #expect(try nextRun(j) == "2026-01-10T12:00:00Z")
    }

    @Test func daylightSavingGapsAndRepeats() throws {
        // Europe/Berlin: 2026-03-29 02:00 → 03:00 (02:30 does not exist); 2026-10-25 03:00 → 02:00 (02:30 happens twice).
        let j = job("30 2 * * *", timezone: "Europe/Berlin")
        _ = try Scheduler.tick(db, now: t("2026-03-28T12:00:00Z"))
        // The skipped 02:30 fires once, moved forward by the gap: 03:30 CEST = 01:30 UTC (CronTests has the same rule).
        #expect(try nextRun(j) == "2026-03-29T01:30:00Z")
        #expect(try Scheduler.tick(db, now: t("2026-03-29T01:30:01Z")).created.count == 1)
        #expect(try nextRun(j) == "2026-03-30T00:30:00Z")
        try db.query("UPDATE jobs SET next_run_at = NULL WHERE id = $1", [j])
        _ = try Scheduler.tick(db, now: t("2026-10-24T12:00:00Z"))
        // The repeated 02:30 fires once, at its first occurrence (CEST, 00:30 UTC), not again an hour later.
        #expect(try nextRun(j) == "2026-10-25T00:30:00Z")
        #expect(try Scheduler.tick(db, now: t("2026-10-25T00:30:01Z")).created.count == 1)
        #expect(try Scheduler.tick(db, now: t("2026-10-25T01:30:01Z")).created.isEmpty)
        #expect(try nextRun(j) == "2026-10-26T01:30:00Z")
        #expect(try slots(j) == ["2026-03-29T01:30:00Z", "2026-10-25T00:30:00Z"])
    }

    @Test func concurrencySkipDropsASlotWhileTheJobRuns() throws {
        let j = job("* * * * *", concurrency: "skip")
        _ = try Scheduler.tick(db, now: t("2026-01-10T10:00:30Z"))
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:01:00Z")).created.count == 1)
        // The 10:01 run is still queued at 10:02: that slot is dropped.
        let busy = try Scheduler.tick(db, now: t("2026-01-10T10:02:00Z"))
        #expect(busy.created.isEmpty && busy.skipped == 1)
        try db.query("UPDATE executions SET status = 'cancelled', finished_at = now() WHERE job_id = $1", [j])
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:03:00Z")).created.count == 1)
        #expect(try slots(j) == ["2026-01-10T10:01:00Z", "2026-01-10T10:03:00Z"])
    }
}

extension SchedulerTests {
    @Test func aSucceededRunQueuesTheJobsThatRunAfterIt() throws {
        let a = job("0 0 1 1 *"), b = job("0 0 1 1 *"), c = job("0 0 1 1 *")
        #expect(admin.patch("/api/v1/jobs/\(b)", #"{"run_after":[\#(a)]}"#).status == 200)
        #expect(admin.patch("/api/v1/jobs/\(c)", #"{"run_after":[\#(b)]}"#).status == 200)
        // a → b → c: a running after c (or after b) would be a cycle.
        for parent in [c, b] {
            let r = admin.patch("/api/v1/jobs/\(a)", #"{"run_after":[\#(parent)]}"#)
            #expect(r.status == 422 && r.text.contains("cycle"), "\(r.text)")
        }
        func finish(_ execution: Int64, _ status: String) throws {
            try db.transaction {
                try db.query("UPDATE execution_targets SET status = $2, finished_at = now(), exit_code = CASE WHEN $2 = 'succeeded' THEN 0 ELSE 1 END WHERE execution_id = $1",
                             [execution, status])
                try Queue.finalizeIfDone(db, executionID: execution)
            }
        }
        func runs(_ job: Int64) throws -> [PGRow] {
            try db.query("SELECT id, trigger, parent_id FROM executions WHERE job_id = $1 ORDER BY id", [job])
        }
        let first = admin.post("/api/v1/jobs/\(a)/run").json["id"]?.int64Value ?? 0
        try finish(first, "failed")
        #expect(try runs(b).isEmpty)
        let second = admin.post("/api/v1/jobs/\(a)/run").json["id"]?.int64Value ?? 0
        try finish(second, "succeeded")
        let bRuns = try runs(b)
        #expect(bRuns.count == 1 && bRuns.first?.string("trigger") == "dependency" && bRuns.first?.int64("parent_id") == second)
        // Finalizing again changes nothing; b's success queues c.
        try finish(second, "succeeded")
        #expect(try runs(b).count == 1)
        try finish(bRuns[0].int64("id"), "succeeded")
        #expect(try runs(c).first?.int64("parent_id") == bRuns[0].int64("id"))
        // Conditions: d runs when a run of a fails, e whatever happens (a cancel included).
        let d = job("0 0 1 1 *"), e = job("0 0 1 1 *")
        #expect(admin.patch("/api/v1/jobs/\(d)", #"{"run_after":[\#(a)],"run_after_condition":"failure"}"#).json["run_after_condition"] == "failure")
        #expect(admin.patch("/api/v1/jobs/\(e)", #"{"run_after":[\#(a)],"run_after_condition":"always"}"#).status == 200)
        let third = admin.post("/api/v1/jobs/\(a)/run").json["id"]?.int64Value ?? 0
        try finish(third, "timed_out")
        #expect(try runs(d).map { $0.int64("parent_id") } == [third] && runs(e).map { $0.int64("parent_id") } == [third])
        #expect(try runs(b).count == 1)
        let fourth = admin.post("/api/v1/jobs/\(a)/run").json["id"]?.int64Value ?? 0
        #expect(admin.post("/api/v1/executions/\(fourth)/cancel").status == 202)
        #expect(try runs(e).count == 2 && runs(d).count == 1 && runs(b).count == 1)
    }
}

/// A sum taken from several threads.
final class Counts: @unchecked Sendable {
    private let lock = NSLock()
    private var sum = 0
    func add(_ n: Int) { lock.lock(); sum += n; lock.unlock() }
    var total: Int { lock.lock(); defer { lock.unlock() }; return sum }
}
