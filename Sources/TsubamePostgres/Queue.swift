// SPDX-License-Identifier: MIT
// The execution queue in SQL: enqueue, claim, heartbeat, append log, finish,
// reap. Every write after the claim names the executor and the state it
// expects, so a late write from an executor that lost its lease changes nothing.

public import Foundation
public import TsubameCore

/// A target handed to an executor by `claim`.
public struct ClaimedTarget: Sendable, Equatable {
    public let id: Int64
    public let executionID: Int64
    public let serverID: Int64?
    public let serverName: String
    public let attempt: Int
    public let host: String
    public let port: Int
    public let username: String
    public let authMethod: String
    public let credentials: [UInt8]?
    public let hostKeyFingerprint: String?
    public let script: String
    public let env: JSON
    public let secretEnv: [UInt8]?
    public let timeoutSeconds: Int
    public let retries: Int
}

/// One piece of output to store: UTF-8 bytes (valid, without NUL), the stream, and the target whose lease fences it.
public struct LogPiece: Sendable, Equatable {
    public let serverID: Int64?
    public let stream: String
    /// The target that produced it: when set, the piece is stored only while that target is `running` on the
    /// executor named in `appendLog` (a write after a lost lease is dropped).
    public var targetID: Int64?
    public var bytes: [UInt8]
    public var data: String { String(decoding: bytes, as: UTF8.self) }
    public init(serverID: Int64?, stream: String, data: String, targetID: Int64? = nil) {
        self.init(serverID: serverID, stream: stream, bytes: Array(data.utf8), targetID: targetID)
    }
    public init(serverID: Int64?, stream: String, bytes: [UInt8], targetID: Int64? = nil) {
        self.serverID = serverID; self.stream = stream; self.bytes = bytes; self.targetID = targetID
    }
}

public enum Queue {
    public static let queueChannel = "tsubame_queue"
    public static let cancelChannel = "tsubame_cancel"
    public static let logChannel = "tsubame_log"

    /// Creates an execution and one target per server of the job, then NOTIFYs executors. Returns the execution id.
    public static func enqueue(_ db: PGConnection, jobID: Int64, trigger: String, userID: Int64?, username: String?,
                               envOverrides: JSON?, parentID: Int64? = nil, onlyServers: [Int64]? = nil,
                               scheduleSlot: Date? = nil) throws -> Int64? {
        // A slot already made (another scheduler was first), or a job deleted meanwhile, gives none.
        try enqueueMany(db, jobIDs: [jobID], slots: [scheduleSlot], trigger: trigger, userID: userID, username: username,
                        envOverrides: envOverrides, parentID: parentID, onlyServers: onlyServers).first
    }

    /// Creates one execution per item (`jobIDs[i]` for the slot `slots[i]`, nil for none), each with one target per
    /// server of its job (only those in `onlyServers` when given), in one statement, then NOTIFYs executors once.
    /// The execution snapshots its job (name, script, env with `envOverrides` on top, sealed secrets, timeout,
    /// max_parallel, retries) while holding a share lock on it (`jobsLocked`: the caller's transaction already holds
    /// them, as the scheduler's FOR UPDATE does; locking 10,000 rows again costs ~20 ms). An item whose job no longer
    /// exists, or whose (job, slot) already has an execution (another scheduler was first), makes none. Returns the ids
    /// made, in item order.
    public static func enqueueMany(_ db: PGConnection, jobIDs: [Int64], slots: [Date?], trigger: String, userID: Int64? = nil,
                                   username: String? = nil, envOverrides: JSON? = nil, parentID: Int64? = nil,
                                   onlyServers: [Int64]? = nil, jobsLocked: Bool = false) throws -> [Int64] {
        precondition(jobIDs.count == slots.count, "one slot (or nil) per job")
        guard !jobIDs.isEmpty else { return [] }
        return try db.transaction { () throws -> [Int64] in
            let ids = try db.query("""
                WITH item AS (
                    SELECT job_id, slot, n FROM unnest($1::bigint[], $2::timestamptz[]) WITH ORDINALITY AS i(job_id, slot, n)
                ), job AS (
                    SELECT id, name, script, env, secret_env, secret_key_id, timeout_seconds, max_parallel, retries FROM jobs
                    WHERE id IN (SELECT job_id FROM item) \(jobsLocked ? "" : "FOR SHARE")
                ), made AS (
                    INSERT INTO executions (job_id, job_name, trigger, triggered_by, triggered_by_name, parent_id, script, env, secret_env,
                                            secret_key_id, timeout_seconds, max_parallel, retries, schedule_slot)
                    SELECT j.id, j.name, $3::text, $4::bigint, $5::text, $6::bigint, j.script, j.env || coalesce($7::jsonb, '{}'),
                           j.secret_env, j.secret_key_id, j.timeout_seconds, j.max_parallel, j.retries, item.slot
                    FROM item JOIN job j ON j.id = item.job_id ORDER BY item.n
                    ON CONFLICT (job_id, schedule_slot) WHERE schedule_slot IS NOT NULL DO NOTHING
                    RETURNING id, job_id
                ), targets AS (
                    INSERT INTO execution_targets (execution_id, server_id, server_name, position)
                    SELECT made.id, s.id, s.name, js.position FROM made JOIN job_servers js ON js.job_id = made.job_id
                    JOIN servers s ON s.id = js.server_id
                    WHERE $8::bigint[] IS NULL OR s.id = ANY($8::bigint[]) ORDER BY made.id, js.position
                )
                SELECT id FROM made ORDER BY id
                """, [Int64Array(jobIDs), NullableDateArray(slots), trigger, userID, username, parentID, envOverrides,
                      onlyServers.map(Int64Array.init)]).map { $0.int64("id") }
            // One wake-up for the batch (executors claim whatever is queued; the payload is the first id).
            if let first = ids.first { try db.query("SELECT pg_notify($1, $2)", [queueChannel, String(first)]) }
            return ids
        }
    }

    /// Claims up to `limit` runnable targets for `executor`, honouring every limit (see `tsubame_claimable`).
    public static func claim(_ db: PGConnection, executor: String, limit: Int, leaseSeconds: Int) throws -> [ClaimedTarget] {
        guard limit > 0 else { return [] }
        return try db.transaction {
            // One claimer at a time: the limits are counted, then filled; claims take milliseconds.
            try db.query("SELECT pg_advisory_xact_lock(7458220)")
            let details = try db.query("""
                WITH picked AS MATERIALIZED (
                    -- tsubame_claimable (migration 0007) honours max_parallel, the servers' max_concurrent,
                    -- concurrency = queue and run_after, counting what it picks. Called once.
                    SELECT unnest(tsubame_claimable($2)) AS id
                ), chosen AS (
                    SELECT t.id FROM execution_targets t JOIN picked p ON p.id = t.id WHERE t.status = 'queued'
                    FOR UPDATE OF t SKIP LOCKED
                ), claimed AS (
                    UPDATE execution_targets t SET status = 'running', executor_id = $1, attempt = t.attempt + 1,
                           lease_expires_at = now() + make_interval(secs => $3), started_at = now(), finished_at = NULL,
                           exit_code = NULL, error = NULL
                    FROM chosen WHERE t.id = chosen.id
                    RETURNING t.id, t.execution_id, t.server_id, t.server_name, t.attempt
                ), started AS (
                    UPDATE executions SET status = 'running', started_at = coalesce(started_at, now())
                    WHERE id IN (SELECT execution_id FROM claimed) AND status = 'queued'
                )
                -- One statement, one round trip: the claim is on the path from POST /run to the command starting.
                SELECT c.id, c.execution_id, c.server_id, c.server_name, c.attempt, s.host, s.port, s.username, s.auth_method,
                       s.credentials, s.host_key_fingerprint, e.script, e.env::text AS env, e.secret_env, e.timeout_seconds, e.retries
                FROM claimed c JOIN executions e ON e.id = c.execution_id LEFT JOIN servers s ON s.id = c.server_id ORDER BY c.id
                """, [executor, limit, leaseSeconds])
            return details.map { r in
                ClaimedTarget(id: r.int64("id"), executionID: r.int64("execution_id"), serverID: r.optInt64("server_id"),
                              serverName: r.string("server_name"), attempt: r.int("attempt"), host: r.string("host"),
                              port: r.int("port"), username: r.string("username"), authMethod: r.string("auth_method"),
                              credentials: r.bytea("credentials"), hostKeyFingerprint: r["host_key_fingerprint"], script: r.string("script"),
                              env: r.json("env"), secretEnv: r.bytea("secret_env"), timeoutSeconds: r.int("timeout_seconds"),
                              retries: r.int("retries"))
            }
        }
    }

    /// Extends the leases of the targets this executor process is running (`holding`); returns those still held
    /// (others were lost). Targets under the same executor id that this process does not run (a restart with a
    /// fixed TSUBAME_EXECUTOR_ID) are not renewed, so the reaper fails them after their lease.
    public static func heartbeat(_ db: PGConnection, executor: String, host: String, leaseSeconds: Int, holding: [Int64],
                                 stats: JSON = .object([])) throws -> Set<Int64> {
        try db.query("""
            INSERT INTO executors (id, host, pid, stats) VALUES ($1, $2, $3, $4::jsonb)
            ON CONFLICT (id) DO UPDATE SET last_seen = now(), stats = EXCLUDED.stats
            """, [executor, host, Int(getpid()), stats])
        let rows = try db.query("""
            UPDATE execution_targets SET lease_expires_at = now() + make_interval(secs => $2)
            WHERE executor_id = $1 AND status = 'running' AND id = ANY($3::bigint[]) RETURNING id
            """, [executor, leaseSeconds, Int64Array(holding)])
        return Set(rows.map { $0.int64("id") })
    }

    /// Targets of this executor whose execution was asked to cancel.
    public static func cancelRequested(_ db: PGConnection, executor: String) throws -> [Int64] {
        try db.query("""
            SELECT t.id FROM execution_targets t JOIN executions e ON e.id = t.execution_id
            WHERE t.executor_id = $1 AND t.status = 'running' AND e.cancel_requested
            """, [executor]).map { $0.int64("id") }
    }

    /// Appends output of one execution in one statement (so one round trip and one commit when no transaction is open):
    /// seq comes from `executions.last_seq` under its row lock, so seq order is commit order, and the NOTIFY is
    /// delivered at commit, after the rows. A piece with a target (its own `targetID`, else `targetID` here) is kept
    /// only while that target is `running` on `executor`; the others are dropped without using a seq.
    /// `output_bytes` grows by the stdout/stderr bytes kept; `truncated` sets `output_truncated` (when anything was kept).
    /// Returns false when nothing was kept.
    @discardableResult
    public static func appendLog(_ db: PGConnection, executionID: Int64, targetID: Int64? = nil, executor: String? = nil,
                                 pieces: [LogPiece], truncated: Bool = false) throws -> Bool {
        guard !pieces.isEmpty else { return true }
        // The data array is only subscripted: its 64 KiB items are never copied into a CTE or a sort, only into the row.
        let rows = try db.query("""
            WITH k AS (
                SELECT n, st, row_number() OVER (ORDER BY n) AS r
                FROM unnest($4::text[], $6::bigint[]) WITH ORDINALITY AS t(st, tg, n)
                WHERE tg IS NULL OR EXISTS (SELECT 1 FROM execution_targets x
                                            WHERE x.id = t.tg AND x.executor_id = $2::text AND x.status = 'running')
            ), u AS (
                UPDATE executions e SET last_seq = e.last_seq + c.n, output_bytes = e.output_bytes + c.bytes,
                                        output_truncated = e.output_truncated OR $8::boolean
                FROM (SELECT count(*) AS n,
                             coalesce(sum(octet_length(($5::text[])[n])) FILTER (WHERE st <> 'system'), 0) AS bytes FROM k) c
                WHERE e.id = $1::bigint AND c.n > 0
                RETURNING e.last_seq, c.n
            ), i AS (
                INSERT INTO log_chunks (execution_id, seq, server_id, stream, data)
                SELECT $1::bigint, u.last_seq - u.n + k.r, ($3::bigint[])[k.n], k.st, ($5::text[])[k.n] FROM u, k
            )
            SELECT u.n AS kept, pg_notify($7::text, $1::bigint || ':' || u.last_seq) FROM u
            """, [executionID, executor, NullableInt64Array(pieces.map(\.serverID)), TextArray(pieces.map(\.stream)),
                  BinaryTextArray(pieces.map(\.bytes)), NullableInt64Array(pieces.map { $0.targetID ?? targetID }), logChannel, truncated])
        return !rows.isEmpty
    }

    /// System lines that describe a change made in the same transaction (a target reaped or cancelled): stored when
    /// there is room. A full disk (SQLSTATE 53100, e.g. the log's tablespace) must not block the change itself, whose
    /// `error` says the same, so the lines are then left out. Returns whether they were stored.
    @discardableResult
    public static func appendSystemLines(_ db: PGConnection, executionID: Int64, pieces: [LogPiece]) throws -> Bool {
        do {
            return try db.savepoint { try appendLog(db, executionID: executionID, pieces: pieces) }
        } catch let e as PGError where e.isDiskFull {
            Log.warn("system lines not stored: the database is out of disk space",
                     [("execution_id", .int(executionID)), ("lines", .int(pieces.count)), ("error", .string(e.primaryMessage))])
            return false
        }
    }

    /// The final (or retried) state of a target this executor ran. Returns false when the lease was lost meanwhile.
    public static func finishTarget(_ db: PGConnection, targetID: Int64, executor: String, status: String, exitCode: Int32?,
                                    error: String?, retryDelaySeconds: Double?) throws -> Bool {
        try db.transaction { () throws -> Bool in
            let rows: [PGRow]
            if let delay = retryDelaySeconds {
                rows = try db.query("""
                    UPDATE execution_targets SET status = 'queued', executor_id = NULL, lease_expires_at = NULL,
                           run_at = now() + make_interval(secs => $3), exit_code = $4, error = $5
                    WHERE id = $1 AND executor_id = $2 AND status = 'running' RETURNING execution_id
                    """, [targetID, executor, delay, exitCode.map(Int.init), error])
            } else {
                rows = try db.query("""
                    UPDATE execution_targets SET status = $3, exit_code = $4, error = $5, finished_at = now()
                    WHERE id = $1 AND executor_id = $2 AND status = 'running' RETURNING execution_id
                    """, [targetID, executor, status, exitCode.map(Int.init), error])
            }
            guard let execution = rows.first?.int64("execution_id") else { return false }
            if retryDelaySeconds != nil { try db.query("SELECT pg_notify($1, $2)", [queueChannel, String(execution)]) }
            try finalizeIfDone(db, executionID: execution)
            // A slot came free (max_parallel, a server's max_concurrent, a queued run's turn): wake the claimers.
            if retryDelaySeconds == nil {
                try db.query("""
                    SELECT pg_notify($1, 'free') WHERE EXISTS (SELECT 1 FROM execution_targets WHERE status = 'queued' AND run_at <= now())
                    """, [queueChannel])
            }
            return true
        }
    }

    /// When no target is queued or running, sets the execution's final status and exit code. Call it in the
    /// transaction that changed a target: it locks the execution row first, so of two executors finishing the
    /// last two targets at once, the second waits for the first to commit and then sees both targets finished
    /// (without the lock each saw the other's target still running and the execution stayed `running`).
    public static func finalizeIfDone(_ db: PGConnection, executionID: Int64) throws {
        try db.query("SELECT 1 FROM executions WHERE id = $1 FOR UPDATE", [executionID])
        let finished = try db.query("""
            UPDATE executions e SET
                status = CASE
                    WHEN bool_or_cancel THEN 'cancelled'
                    WHEN agg.timed_out THEN 'timed_out'
                    WHEN agg.failed THEN 'failed'
                    WHEN agg.n = 0 AND e.cancel_requested THEN 'cancelled'
                    WHEN agg.n = 0 THEN 'failed'
                    ELSE 'succeeded' END,
                finished_at = now(),
                exit_code = agg.exit_code
            FROM (
                SELECT count(*) AS n,
                       bool_or(status = 'cancelled') AS bool_or_cancel,
                       bool_or(status = 'timed_out') AS timed_out,
                       bool_or(status = 'failed') AS failed,
                       bool_or(status IN ('queued', 'running')) AS busy,
                       CASE WHEN bool_and(coalesce(exit_code = 0, false)) THEN 0
                            ELSE (array_agg(exit_code ORDER BY position, id) FILTER (WHERE exit_code IS NOT NULL AND exit_code <> 0))[1]
                       END AS exit_code
                FROM execution_targets WHERE execution_id = $1
            ) agg
            WHERE e.id = $1 AND e.status IN ('queued', 'running') AND NOT coalesce(agg.busy, false)
            RETURNING e.status, e.job_id
            """, [executionID])
        // Finished just now: the jobs that run after this one, on this outcome, are queued in the same transaction (once).
        guard let done = finished.first, let job = done.optInt64("job_id") else { return }
        for dependent in try db.query("""
            SELECT id FROM jobs WHERE $1 = ANY(run_after) AND enabled
              AND (run_after_condition = 'always' OR (run_after_condition = 'success' AND $2 = 'succeeded')
                   OR (run_after_condition = 'failure' AND $2 IN ('failed', 'timed_out')))
              -- concurrency = skip: not while the dependent job still runs.
              AND NOT (concurrency = 'skip' AND EXISTS (SELECT 1 FROM executions o WHERE o.job_id = jobs.id AND o.status IN ('queued', 'running')))
            ORDER BY id
            """, [job, done.string("status")]) {
            _ = try enqueue(db, jobID: dependent.int64("id"), trigger: "dependency", userID: nil, username: nil, envOverrides: nil,
                            parentID: executionID)
        }
    }

    /// Marks targets whose lease expired as failed (their executor was lost), with a system log line. Returns how many.
    public static func reap(_ db: PGConnection, limit: Int = 500) throws -> Int {
        try db.transaction { () throws -> Int in
            let rows = try db.query("""
                WITH expired AS (
                    SELECT id FROM execution_targets WHERE status = 'running' AND lease_expires_at < now()
                    ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
                )
                UPDATE execution_targets t SET status = 'failed', finished_at = now(),
                       error = 'the executor running this target (' || t.executor_id || ') stopped heartbeating; the target was marked failed after its lease expired'
                FROM expired WHERE t.id = expired.id
                RETURNING t.id, t.execution_id, t.server_id, t.executor_id
                """, [limit])
            for r in rows {
                try appendSystemLines(db, executionID: r.int64("execution_id"), pieces: [
                    LogPiece(serverID: r.optInt64("server_id"), stream: "system",
                             data: "executor \(r.string("executor_id")) was lost (no heartbeat before its lease expired); target marked failed\n"),
                ])
                try finalizeIfDone(db, executionID: r.int64("execution_id"))
            }
            return rows.count
        }
    }

    /// Asks to cancel: queued targets end at once, running ones are stopped by their executor. False when already finished.
    public static func requestCancel(_ db: PGConnection, executionID: Int64) throws -> Bool? {
        try db.transaction { () throws -> Bool? in
            guard let e = try db.query("SELECT status FROM executions WHERE id = $1 FOR UPDATE", [executionID]).first else { return nil }
            guard ["queued", "running"].contains(e.string("status")) else { return false }
            try db.query("UPDATE executions SET cancel_requested = true WHERE id = $1", [executionID])
            let queued = try db.query("""
                UPDATE execution_targets SET status = 'cancelled', finished_at = now(), error = 'cancelled before it started'
                WHERE execution_id = $1 AND status = 'queued' RETURNING server_id
                """, [executionID])
            if !queued.isEmpty {
                try appendSystemLines(db, executionID: executionID, pieces: queued.map {
                    LogPiece(serverID: $0.optInt64("server_id"), stream: "system", data: "cancelled before it started\n")
                })
            }
            try db.query("SELECT pg_notify($1, $2)", [cancelChannel, String(executionID)])
            try finalizeIfDone(db, executionID: executionID)
            return true
        }
    }

    /// Pins a host key seen for the first time (only if none is pinned yet).
    public static func pinHostKey(_ db: PGConnection, serverID: Int64, algorithm: String, fingerprint: String) throws {
        try db.query("""
            UPDATE servers SET host_key_algorithm = $2, host_key_fingerprint = $3, host_key_trusted_at = now()
            WHERE id = $1 AND host_key_fingerprint IS NULL
            """, [serverID, algorithm, fingerprint])
    }
}

/// A timestamptz[] parameter whose items may be NULL.
public struct NullableDateArray: PGParameter, Sendable {
    public let items: [Date?]
    public init(_ items: [Date?]) { self.items = items }
    public var pgText: String? { "{" + items.map { $0.map { "\"" + Timestamp.format($0) + "\"" } ?? "NULL" }.joined(separator: ",") + "}" }
}

/// A bigint[] parameter whose items may be NULL.
public struct NullableInt64Array: PGParameter, Sendable {
    public let items: [Int64?]
    public init(_ items: [Int64?]) { self.items = items }
    public var pgText: String? { "{" + items.map { $0.map(String.init) ?? "NULL" }.joined(separator: ",") + "}" }
}
