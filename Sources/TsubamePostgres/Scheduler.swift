// SPDX-License-Identifier: MIT
// Firing scheduled jobs. Every executor ticks (about once a second, and at the
// next slot); one at a time does the work (a transaction-level advisory lock,
// tried, never waited for), and the unique (job, slot) index makes a slot fire
// once even if two ticks raced anyway. `now` is a parameter so that tests move
// the clock.
//
// The rules (README.md, "Schedules"):
// - A slot is a cron time in the job's time zone (CronSchedule: a wall-clock
//   time skipped by a DST change fires once, moved forward by the gap, e.g.
//   02:30 on a spring-forward night at 03:30; a repeated one fires once, at
//   its first occurrence).
// - A slot seen within `grace` of its time fires ("on time").
// - Older slots were missed (nothing ticked: everything was down). With
//   misfire = run_once the job runs once for them (the latest missed slot);
//   with skip they are dropped.
// - concurrency = skip: a slot whose job still has an unfinished execution
//   makes none (and of several slots due in one tick, only the first fires:
//   it makes the job busy for the others).
// - next_run_at NULL (new or changed schedule, job enabled again): the next
//   slot is computed from now; nothing from the past fires.
//
// Set-based: one tick reads every due job in one statement, evaluates each
// distinct cron expression and time zone once (thousands of jobs usually share
// a few), creates all the executions and their targets in one statement
// (Queue.enqueueMany) and moves every next_run_at in one more. 10,000 jobs due
// in the same minute are one tick (scripts/bench schedule).

public import Foundation
import TsubameCore

public enum Scheduler {
    /// How late a slot may be seen and still count as on time.
    public static let grace: TimeInterval = 60
    /// Due jobs handled per tick (one transaction); a tick that reaches it says `more`.
    public static let defaultLimit = 10_000
    /// Missed slots looked at per job: older ones are all "missed" alike (a day of minutes).
    static let maxSlots = 1440

    /// What one tick did.
    public struct Tick: Equatable, Sendable {
        /// Executions created, in the order fired.
        public var created: [Int64] = []
        /// Slots dropped: missed with misfire = skip, or concurrency = skip while the job ran.
        public var skipped = 0
        /// False when another scheduler held the lock (this tick did nothing).
        public var leader = true
        /// The tick stopped at its limit: more jobs may be due now (tick again at once).
        public var more = false
        /// The earliest next slot of an enabled schedule after this tick (nil when there is none or this was not the leader).
        public var nextDue: Date? = nil
    }

    /// A due job as the tick reads it.
    struct Due: Sendable {
        var id: Int64
        var schedule: String
        var timezone: String
        var runOnce: Bool
        var skipWhileBusy: Bool
        /// next_run_at: the first slot not handled yet (nil: compute from now, fire nothing).
        var slot: Date?
        /// concurrency = skip and an execution of the job is unfinished.
        var busy: Bool
    }

    /// What to do with one due job: the slots to fire, how many are dropped, and the next slot (nil: never, the
    /// schedule or time zone is invalid).
    struct Plan: Equatable, Sendable {
        var fire: [Date] = []
        var skipped = 0
        var next: Date?
    }

    /// Cron evaluations of one tick, each done once per (expression, time zone) or per (expression, time zone, first slot).
    final class Evaluator {
        let now: Date
        private var schedules: [String: (CronSchedule, TimeZone)?] = [:]
        private var next: [String: Date?] = [:]
        private var slots: [String: [Date]] = [:]
        /// nextRuns calls made (tests check that jobs sharing a schedule share them).
        private(set) var evaluations = 0

        init(now: Date) { self.now = now }

        private func schedule(_ key: String, _ expression: String, _ timezone: String) -> (CronSchedule, TimeZone)? {
            if let s = schedules[key] { return s }
            var parsed: (CronSchedule, TimeZone)? = nil
            if let cron = try? CronSchedule(parsing: expression), let tz = TimeZone(identifier: timezone) { parsed = (cron, tz) }
            schedules[key] = parsed
            return parsed
        }

        private func nextRun(_ cron: CronSchedule, after: Date, _ tz: TimeZone) -> Date? {
            evaluations += 1
            return cron.nextRuns(after: after, count: 1, timeZone: tz).first
        }

        func plan(_ job: Due) -> Plan {
            let key = job.schedule + "\u{0}" + job.timezone
            // Cannot happen through the API (it validates both); such a job never fires rather than looping here.
            guard let parsed = schedule(key, job.schedule, job.timezone) else { return Plan(next: nil) }
            let (cron, tz) = parsed
            let upcoming: Date?
            if let n = next[key] { upcoming = n } else { upcoming = nextRun(cron, after: now, tz); next[key] = upcoming }
            var plan = Plan(next: upcoming)
            guard upcoming != nil, let first = job.slot else { return plan }
            // Every slot from next_run_at up to now.
            let slotKey = key + "\u{0}\(first.timeIntervalSince1970)"
            let due: [Date]
            if let s = slots[slotKey] {
                due = s
            } else {
                var s = [first]
                while s.count < Scheduler.maxSlots, let t = nextRun(cron, after: s.last!, tz), t <= now { s.append(t) }
                slots[slotKey] = s
                due = s
            }
            let onTime = due.filter { now.timeIntervalSince($0) <= Scheduler.grace }
            let missed = due.count - onTime.count
            plan.fire = onTime
            if missed > 0 {
                if job.runOnce { plan.fire.insert(due[missed - 1], at: 0) }
                plan.skipped += job.runOnce ? missed - 1 : missed
            }
            if job.skipWhileBusy {
                // The first slot fired makes the job busy for the others.
                let keep = job.busy ? 0 : min(plan.fire.count, 1)
                plan.skipped += plan.fire.count - keep
                plan.fire = Array(plan.fire.prefix(keep))
            }
            return plan
        }
    }

    /// Fires what is due at `now`, at most `limit` jobs per tick.
    public static func tick(_ db: PGConnection, now: Date, limit: Int = defaultLimit) throws -> Tick {
        try db.transaction { () throws -> Tick in
            var tick = Tick()
            guard try db.query("SELECT pg_try_advisory_xact_lock(7458222) AS ok")[0].bool("ok") else {
                tick.leader = false
                return tick
            }
            // The planner guesses hundreds of thousands of rows for the joins on unnest() in Queue.enqueueMany and then
            // JIT-compiles the insert: ~20 ms of 10,000 jobs' ~500 ms tick, for a statement that runs once.
            try db.execute("SET LOCAL jit = off")
            let rows = try db.query("""
                SELECT j.id, j.schedule, j.timezone, j.misfire = 'run_once' AS run_once, j.concurrency = 'skip' AS skip_busy,
                       extract(epoch FROM j.next_run_at) AS slot,
                       j.concurrency = 'skip' AND EXISTS (SELECT 1 FROM executions e
                                                          WHERE e.job_id = j.id AND e.status IN ('queued', 'running')) AS busy
                FROM jobs j WHERE j.enabled AND j.schedule IS NOT NULL AND (j.next_run_at IS NULL OR j.next_run_at <= $1)
                ORDER BY j.next_run_at NULLS FIRST, j.id LIMIT $2 FOR UPDATE OF j SKIP LOCKED
                """, [now, limit])
            tick.more = rows.count >= limit
            let evaluator = Evaluator(now: now)
            var fireJobs: [Int64] = [], fireSlots: [Date?] = []
            var nextJobs: [Int64] = [], nextSlots: [Date] = [], never: [Int64] = []
            for r in rows {
                let job = Due(id: r.int64("id"), schedule: r.string("schedule"), timezone: r.string("timezone"), runOnce: r.bool("run_once"),
                              skipWhileBusy: r.bool("skip_busy"), slot: r["slot"].flatMap(Double.init).map(Date.init(timeIntervalSince1970:)),
                              busy: r.bool("busy"))
                let plan = evaluator.plan(job)
                tick.skipped += plan.skipped
                for slot in plan.fire {
                    fireJobs.append(job.id)
                    fireSlots.append(slot)
                }
                if let next = plan.next {
                    nextJobs.append(job.id)
                    nextSlots.append(next)
                } else {
                    never.append(job.id)
                }
            }
            tick.created = try Queue.enqueueMany(db, jobIDs: fireJobs, slots: fireSlots, trigger: "schedule", jobsLocked: true)
            if !nextJobs.isEmpty {
                try db.query("""
                    UPDATE jobs j SET next_run_at = n.at FROM unnest($1::bigint[], $2::timestamptz[]) AS n(id, at) WHERE j.id = n.id
                    """, [Int64Array(nextJobs), NullableDateArray(nextSlots)])
            }
            if !never.isEmpty {
                try db.query("UPDATE jobs SET next_run_at = 'infinity' WHERE id = ANY($1::bigint[])", [Int64Array(never)])
            }
            // When to tick next: the earliest slot (new jobs, NULL, are found by the regular tick).
            if let at = try db.query("""
                SELECT extract(epoch FROM min(next_run_at)) AS at FROM jobs
                WHERE enabled AND schedule IS NOT NULL AND next_run_at < 'infinity'
                """).first?["at"].flatMap(Double.init) {
                tick.nextDue = Date(timeIntervalSince1970: at)
            }
            return tick
        }
    }
}
