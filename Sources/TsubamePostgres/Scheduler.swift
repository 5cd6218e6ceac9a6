// SPDX-License-Identifier: MIT
// Firing scheduled jobs. Every executor ticks (about once a second); one at a
// time does the work (a transaction-level advisory lock, tried, never waited
// for), and the unique (job, slot) index makes a slot fire once even if two
// ticks raced anyway. `now` is a parameter so that tests move the clock.
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
//   makes none.
// - next_run_at NULL (new or changed schedule, job enabled again): the next
//   slot is computed from now; nothing from the past fires.

public import Foundation
public import TsubameCore

public enum Scheduler {
    /// How late a slot may be seen and still count as on time.
    public static let grace: TimeInterval = 60

    /// What one tick did.
    public struct Tick: Equatable, Sendable {
        /// Executions created, in the order fired.
        public var created: [Int64] = []
        /// Slots dropped: missed with misfire = skip, or concurrency = skip while the job ran.
        public var skipped = 0
        /// False when another scheduler held the lock (this tick did nothing).
        public var leader = true
    }

    /// Fires what is due at `now`, at most `limit` jobs per tick.
    public static func tick(_ db: PGConnection, now: Date, limit: Int = 1000) throws -> Tick {
        try db.transaction { () throws -> Tick in
            var tick = Tick()
            guard try db.query("SELECT pg_try_advisory_xact_lock(7458222) AS ok")[0].bool("ok") else {
                tick.leader = false
                return tick
            }
            let due = try db.query("""
                SELECT id, schedule, timezone, misfire, concurrency, to_char(next_run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS slot
                FROM jobs WHERE enabled AND schedule IS NOT NULL AND (next_run_at IS NULL OR next_run_at <= $1)
                ORDER BY next_run_at NULLS FIRST, id LIMIT $2 FOR UPDATE SKIP LOCKED
                """, [now, limit])
            for job in due {
                let id = job.int64("id")
                guard let cron = try? CronSchedule(parsing: job.string("schedule")), let tz = TimeZone(identifier: job.string("timezone")),
                      let next = cron.nextRuns(after: now, count: 1, timeZone: tz).first else {
                    // Cannot happen through the API (it validates both); such a job never fires rather than looping here.
                    try db.query("UPDATE jobs SET next_run_at = 'infinity' WHERE id = $1", [id])
                    continue
                }
                if let first = job["slot"].flatMap(Timestamp.parse) {
                    // Every slot from next_run_at up to now (at most a day of minutes: older ones are all "missed" alike).
                    var slots = [first]
                    while slots.count < 1440, let s = cron.nextRuns(after: slots.last!, count: 1, timeZone: tz).first, s <= now {
                        slots.append(s)
                    }
                    let onTime = slots.filter { now.timeIntervalSince($0) <= grace }
                    let missed = slots.filter { now.timeIntervalSince($0) > grace }
                    var fire = onTime
                    if let last = missed.last {
                        if job.string("misfire") == "run_once" { fire.insert(last, at: 0) }
                        tick.skipped += job.string("misfire") == "run_once" ? missed.count - 1 : missed.count
                    }
                    for slot in fire {
                        if job.string("concurrency") == "skip", try !db.query("""
                            SELECT 1 FROM executions WHERE job_id = $1 AND status IN ('queued', 'running') LIMIT 1
                            """, [id]).isEmpty {
                            tick.skipped += 1
                            continue
                        }
                        if let e = try Queue.enqueue(db, jobID: id, trigger: "schedule", userID: nil, username: nil, envOverrides: nil,
                                                     scheduleSlot: slot) {
                            tick.created.append(e)
                        }
                    }
                }
                try db.query("UPDATE jobs SET next_run_at = $2 WHERE id = $1", [id, next])
            }
            return tick
        }
    }
}
