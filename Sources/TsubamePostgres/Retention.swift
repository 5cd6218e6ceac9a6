// SPDX-License-Identifier: MIT
// Deleting old history in small batches: finished executions (with their targets and output, by cascade) created
// longer ago than their job's retention_days (or the default), and audit entries older than the audit retention.
// Each call is one short transaction; executors call it until a batch comes back short (README, "Retention").

public import Foundation

public enum Retention {
    /// What one batch deleted.
    public struct Sweep: Equatable, Sendable {
        public var executions = 0
        public var auditEntries = 0
        public init(executions: Int = 0, auditEntries: Int = 0) { self.executions = executions; self.auditEntries = auditEntries }
    }

    /// Deletes at most `batch` executions and `batch` audit entries that are past retention at `now`.
    /// `defaultDays` applies to jobs without retention_days and to runs of deleted jobs; 0 keeps them forever
    /// (a job's own retention_days still applies). `auditDays` 0 keeps the audit log forever.
    public static func sweep(_ db: PGConnection, defaultDays: Int, auditDays: Int, batch: Int = 200, now: Date = Date()) throws -> Sweep {
        try db.transaction { () throws -> Sweep in
            var s = Sweep()
            // Per job (an index range each: executions_job_created_idx), then the runs of deleted jobs.
            s.executions = try db.query("""
                WITH doomed AS (
                    SELECT x.id FROM jobs j
                    CROSS JOIN LATERAL (
                        SELECT e.id FROM executions e
                        WHERE e.job_id = j.id AND e.created_at < $1::timestamptz - make_interval(days => coalesce(j.retention_days, $2))
                          AND e.status IN ('succeeded', 'failed', 'cancelled', 'timed_out')
                        ORDER BY e.created_at LIMIT $3) x
                    WHERE j.retention_days IS NOT NULL OR $2 > 0
                    LIMIT $3
                ), orphans AS (
                    SELECT e.id FROM executions e
                    WHERE e.job_id IS NULL AND $2 > 0 AND e.created_at < $1::timestamptz - make_interval(days => $2)
                      AND e.status IN ('succeeded', 'failed', 'cancelled', 'timed_out')
                    ORDER BY e.created_at LIMIT $3
                ), chosen AS (
                    SELECT e.id FROM executions e WHERE e.id IN (SELECT id FROM doomed UNION ALL SELECT id FROM orphans)
                    ORDER BY e.id LIMIT $3 FOR UPDATE SKIP LOCKED
                )
                DELETE FROM executions e USING chosen WHERE e.id = chosen.id RETURNING e.id
                """, [now, defaultDays, batch]).count
            if auditDays > 0 {
                s.auditEntries = try db.query("""
                    WITH old AS (SELECT id FROM audit_log WHERE at < $1::timestamptz - make_interval(days => $2) ORDER BY at LIMIT $3)
                    DELETE FROM audit_log a USING old WHERE a.id = old.id RETURNING a.id
                    """, [now, auditDays, batch]).count
            }
            return s
        }
    }
}
