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

/// The set-based tick: thousands of due jobs in one go, every rule applied per job.
extension SchedulerTests {
    /// `n` copies of `template` (a job the API made) in SQL: own names, time zones taken in turn, the same servers.
    func copies(of template: Int64, _ n: Int, timezones: [String]) throws -> [Int64] {
        try db.query("""
            WITH made AS (
                INSERT INTO jobs (name, description, script, env, secret_env, secret_key_id, secret_env_names, timeout_seconds,
                                  schedule, timezone, misfire, concurrency, max_parallel, retries, tags, enabled, notify)
                SELECT t.name || '-' || g, t.description, t.script, t.env, t.secret_env, t.secret_key_id, t.secret_env_names,
                       t.timeout_seconds, t.schedule, ($3::text[])[1 + g % cardinality($3::text[])], t.misfire, t.concurrency,
                       t.max_parallel, t.retries, t.tags, t.enabled, t.notify
                FROM jobs t, generate_series(1, $2::int) g WHERE t.id = $1 ORDER BY g
                RETURNING id
            ), linked AS (
                INSERT INTO job_servers (job_id, server_id, position)
                SELECT made.id, js.server_id, js.position FROM made, job_servers js WHERE js.job_id = $1
            )
            SELECT id FROM made ORDER BY id
            """, [template, n, TextArray(timezones)]).map { $0.int64("id") }
    }

    func addServer(_ name: String) -> Int64 {
        admin.post("/api/v1/servers", #"{"name":"\#(name)","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"}"#)
            .json["id"]?.int64Value ?? 0
    }

    @Test func oneTickFiresThousandsOfDueJobsEachWithItsTargets() throws {
        let second = addServer("second")
        let r = admin.post("/api/v1/jobs", """
            {"name":"bulk","script":"echo $A","server_ids":[\(second),\(server)],"env":{"A":"1"},"secret_env":{"S":"x"},
             "schedule":"* * * * *","timeout_seconds":120,"max_parallel":1,"retries":2}
            """)
        #expect(r.status == 201, "\(r.text)")
        let template = r.json["id"]?.int64Value ?? 0
        let jobs = try [template] + copies(of: template, 2499, timezones: ["UTC", "Asia/Tokyo", "America/New_York", "Asia/Kolkata"])
        #expect(jobs.count == 2500)
        let first = try Scheduler.tick(db, now: t("2026-01-10T10:00:30Z"))
        #expect(first.created.isEmpty && first.nextDue == t("2026-01-10T10:01:00Z"))
        let tick = try Scheduler.tick(db, now: t("2026-01-10T10:01:00.200Z"))
        #expect(tick.leader && !tick.more && tick.skipped == 0)
        #expect(tick.created.count == 2500 && tick.created == tick.created.sorted())
        #expect(tick.nextDue == t("2026-01-10T10:02:00Z"))
        // One execution per job for the slot, a snapshot of its job, with the job's two servers in their order.
        let check = try db.query("""
            SELECT count(*) AS n, count(DISTINCT e.job_id) AS jobs,
                   count(*) FILTER (WHERE e.schedule_slot <> '2026-01-10T10:01:00Z') AS wrong_slot,
                   count(*) FILTER (WHERE e.job_name <> j.name OR e.script <> j.script OR e.env <> j.env
                                    OR e.secret_env IS DISTINCT FROM j.secret_env OR e.secret_key_id IS DISTINCT FROM j.secret_key_id
                                    OR e.timeout_seconds <> j.timeout_seconds OR e.max_parallel <> j.max_parallel
                                    OR e.retries <> j.retries OR e.trigger <> 'schedule' OR e.status <> 'queued'
                                    OR e.triggered_by IS NOT NULL OR e.parent_id IS NOT NULL) AS wrong_snapshot,
                   count(*) FILTER (WHERE (SELECT array_agg(t.server_id::text || ':' || t.server_name || ':' || t.position || ':' || t.status
                                                            ORDER BY t.position)
                                           FROM execution_targets t WHERE t.execution_id = e.id)
                                          <> ARRAY[$1::text || ':second:1:queued', $2::text || ':s:2:queued']) AS wrong_targets,
                   bool_and(j.next_run_at = '2026-01-10T10:02:00Z') AS next_moved
            FROM executions e JOIN jobs j ON j.id = e.job_id
            """, [second, server])[0]
        #expect(check.int("n") == 2500 && check.int("jobs") == 2500)
        #expect(check.int("wrong_slot") == 0 && check.int("wrong_snapshot") == 0 && check.int("wrong_targets") == 0)
        #expect(check.bool("next_moved"))
        #expect(try db.query("SELECT secret_env IS NOT NULL AS sealed FROM executions LIMIT 1").first?.bool("sealed") == true)
        // The same minute again: nothing more.
        #expect(try Scheduler.tick(db, now: t("2026-01-10T10:01:00.900Z")).created.isEmpty)
        // With a limit, a tick says there is more and the next goes on.
        let a = try Scheduler.tick(db, now: t("2026-01-10T10:02:00.100Z"), limit: 1000)
        let b = try Scheduler.tick(db, now: t("2026-01-10T10:02:00.200Z"), limit: 1000)
        let c = try Scheduler.tick(db, now: t("2026-01-10T10:02:00.300Z"), limit: 1000)
        #expect(a.more && b.more && !c.more)
        #expect(a.created.count == 1000 && b.created.count == 1000 && c.created.count == 500)
        #expect(try db.query("SELECT count(DISTINCT job_id) AS n FROM executions WHERE schedule_slot = '2026-01-10T10:02:00Z'")[0]
            .int("n") == 2500)
    }

    @Test func oneTickAppliesEveryRuleToEachJob() throws {
        let busySkip = job("* * * * *", concurrency: "skip")
        let idleSkip = job("* * * * *", concurrency: "skip")
        let onceButSkipWhileBusy = job("*/10 * * * *", misfire: "run_once", concurrency: "skip")
        let once = job("*/10 * * * *", misfire: "run_once")
        let dropped = job("*/10 * * * *", misfire: "skip")
        let plain = job("* * * * *")
        _ = try Scheduler.tick(db, now: t("2026-01-10T09:59:30Z"))
        // An unfinished manual run of busySkip.
        #expect(try Queue.enqueue(db, jobID: busySkip, trigger: "manual", userID: nil, username: nil, envOverrides: nil) != nil)
        // Down from 09:59:30 to 10:20:10: the slots 10:00 … 10:19 were missed, 10:20 is on time.
        let back = try Scheduler.tick(db, now: t("2026-01-10T10:20:10Z"))
        #expect(try slots(busySkip).isEmpty)
        #expect(try slots(idleSkip) == ["2026-01-10T10:20:00Z"])
        // run_once brings the latest missed slot, which makes the job busy for the on-time one.
        #expect(try slots(onceButSkipWhileBusy) == ["2026-01-10T10:10:00Z"])
        #expect(try slots(once) == ["2026-01-10T10:10:00Z", "2026-01-10T10:20:00Z"])
        #expect(try slots(dropped) == ["2026-01-10T10:20:00Z"])
        #expect(try slots(plain) == ["2026-01-10T10:20:00Z"])
        #expect(back.created.count == 6)
        #expect(back.skipped == (20 + 1) + 20 + (1 + 1) + 1 + 2 + 20)
        for j in [busySkip, idleSkip, plain] { #expect(try nextRun(j) == "2026-01-10T10:21:00Z") }
        for j in [onceButSkipWhileBusy, once, dropped] { #expect(try nextRun(j) == "2026-01-10T10:30:00Z") }
    }

    @Test func twoSchedulersRacingOverThousandsOfJobsMakeOneExecutionPerJob() throws {
        let template = job("0 * * * *")
        let jobs = try [template] + copies(of: template, 1999, timezones: ["UTC", "Europe/Berlin"])
        _ = try Scheduler.tick(db, now: t("2026-01-10T09:30:00Z"))
        let conns = [db, try PGConnection(url)]
        let made = Counts()
        let now = t("2026-01-10T10:00:01Z")
        // Both keep ticking (in slices of 300, so they take turns) until neither finds more.
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            var idle = 0
            while idle < 20 {
                guard let tick = try? Scheduler.tick(conns[i], now: now, limit: 300) else { made.add(-100_000); return }
                made.add(tick.created.count)
                if tick.leader && !tick.more { idle += 1 } else { idle = 0 }
                if !tick.leader { usleep(1000) }
            }
        }
        #expect(made.total == 2000)
        let n = try db.query("SELECT count(*) AS n, count(DISTINCT job_id) AS jobs FROM executions WHERE schedule_slot = '2026-01-10T10:00:00Z'")[0]
        #expect(n.int("n") == 2000 && n.int("jobs") == 2000)
        // Without the lock too, the (job, slot) key refuses a second execution of any of them.
        #expect(try Queue.enqueueMany(db, jobIDs: jobs, slots: Array(repeating: t("2026-01-10T10:00:00Z"), count: jobs.count),
                                      trigger: "schedule").isEmpty)
    }

    @Test func enqueueManySnapshotsLikeEnqueueAndSkipsWhatItCannotMake() throws {
        let second = addServer("second")
        let a = job("0 0 1 1 *"), b = job("0 0 1 1 *")
        #expect(admin.patch("/api/v1/jobs/\(a)", #"{"server_ids":[\#(second),\#(server)],"env":{"A":"1","B":"1"}}"#).status == 200)
        let slot = t("2026-01-10T10:00:00Z")
        // A job that does not exist, and the same (job, slot) twice, make nothing.
        let ids = try Queue.enqueueMany(db, jobIDs: [a, 999_999, b, b], slots: [nil, nil, slot, slot], trigger: "api",
                                        envOverrides: try JSON.parse(#"{"B":"2"}"#), onlyServers: [server])
        #expect(ids.count == 2 && ids == ids.sorted())
        let made = try db.query("""
            SELECT e.job_id, e.env::text AS env, e.trigger, e.schedule_slot IS NOT NULL AS has_slot,
                   (SELECT array_agg(t.server_id ORDER BY t.position) FROM execution_targets t WHERE t.execution_id = e.id)::text AS servers
            FROM executions e WHERE e.id = ANY($1::bigint[]) ORDER BY e.id
            """, [Int64Array(ids)])
        #expect(made.map { $0.int64("job_id") } == [a, b])
        #expect(try JSON.parse(made[0].string("env")) == JSON.parse(#"{"A":"1","B":"2"}"#))
        #expect(made[0].string("servers") == "{\(server)}" && !made[0].bool("has_slot") && made[1].bool("has_slot"))
        #expect(made.allSatisfy { $0.string("trigger") == "api" })
        // The single-run path is the same statement: its execution of `a` has the same snapshot.
        let single = try #require(try Queue.enqueue(db, jobID: a, trigger: "api", userID: nil, username: nil,
                                                    envOverrides: try JSON.parse(#"{"B":"2"}"#), onlyServers: [server]))
        let same = try db.query("""
            SELECT count(DISTINCT (job_name, script, env, secret_env, secret_key_id, timeout_seconds, max_parallel, retries)) AS n
            FROM executions WHERE id IN ($1, $2)
            """, [ids[0], single])
        #expect(same[0].int("n") == 1)
        #expect(try Queue.enqueueMany(db, jobIDs: [], slots: [], trigger: "api").isEmpty)
    }
}

/// The rules of one job's plan, without a database.
@Suite struct SchedulerPlanTests {
    func t(_ s: String) -> Date { Timestamp.parse(s)! }

    func due(_ schedule: String = "*/10 * * * *", timezone: String = "UTC", runOnce: Bool = false, skipWhileBusy: Bool = false,
             slot: String? = "2026-01-10T10:00:00Z", busy: Bool = false) -> Scheduler.Due {
        Scheduler.Due(id: 1, schedule: schedule, timezone: timezone, runOnce: runOnce, skipWhileBusy: skipWhileBusy,
                      slot: slot.map(t), busy: busy)
    }

    @Test func jobsSharingAScheduleShareItsEvaluation() {
        let evaluator = Scheduler.Evaluator(now: t("2026-01-10T10:01:00.200Z"))
        let zones = ["UTC", "Asia/Tokyo", "Europe/Berlin"]
        for i in 0..<3000 {
            let plan = evaluator.plan(due("* * * * *", timezone: zones[i % 3], slot: "2026-01-10T10:01:00Z"))
            #expect(plan.fire == [t("2026-01-10T10:01:00Z")] && plan.next == t("2026-01-10T10:02:00Z"))
        }
        // Per (schedule, zone): the next slot after now, and the slots from next_run_at on (one more call finds none due).
        #expect(evaluator.evaluations == 3 * 2)
    }

    @Test func rulesPerJob() {
        let now = t("2026-01-10T10:20:10Z")
        func plan(_ d: Scheduler.Due) -> Scheduler.Plan { Scheduler.Evaluator(now: now).plan(d) }
        let next = t("2026-01-10T10:30:00Z")
        #expect(plan(due(slot: nil)) == Scheduler.Plan(fire: [], skipped: 0, next: next))
        #expect(plan(due()) == Scheduler.Plan(fire: [t("2026-01-10T10:20:00Z")], skipped: 2, next: next))
        #expect(plan(due(runOnce: true)) == Scheduler.Plan(fire: [t("2026-01-10T10:10:00Z"), t("2026-01-10T10:20:00Z")], skipped: 1, next: next))
        #expect(plan(due(runOnce: true, skipWhileBusy: true)) == Scheduler.Plan(fire: [t("2026-01-10T10:10:00Z")], skipped: 2, next: next))
        #expect(plan(due(runOnce: true, skipWhileBusy: true, busy: true)) == Scheduler.Plan(fire: [], skipped: 3, next: next))
        #expect(plan(due(slot: "2026-01-10T10:20:00Z", busy: true)) == Scheduler.Plan(fire: [t("2026-01-10T10:20:00Z")], skipped: 0, next: next))
        #expect(plan(due("not cron")) == Scheduler.Plan(fire: [], skipped: 0, next: nil))
        #expect(plan(due(timezone: "Mars/Olympus")) == Scheduler.Plan(fire: [], skipped: 0, next: nil))
        // More than a day down: a day of slots is looked at (1,440), all missed alike; one runs with run_once.
        let late = Scheduler.Evaluator(now: t("2026-01-12T10:20:10Z")).plan(due("* * * * *", runOnce: true))
        #expect(late.fire.count == 1 && late.skipped == 1439 && late.next == t("2026-01-12T10:21:00Z"))
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
