// SPDX-License-Identifier: MIT
// The feed of execution changes (see 0004_events.sql): written by triggers,
// read by GET /api/v1/events, pruned here.

public enum Events {
    /// NOTIFY channel; payload "EVENT_ID:EXECUTION_ID".
    public static let channel = "tsubame_events"

    /// The newest event id (0 when there is none).
    public static func latestID(_ db: PGConnection) throws -> Int64 {
        try db.query("SELECT coalesce(max(id), 0) AS id FROM execution_events")[0].int64("id")
    }

    /// Deletes events older than `keepSeconds`, at most `batch` rows per call (short locks). Returns how many.
    @discardableResult
    public static func prune(_ db: PGConnection, keepSeconds: Int = 86_400, batch: Int = 5000) throws -> Int {
        try db.query("""
            WITH old AS (SELECT id FROM execution_events WHERE at < now() - make_interval(secs => $1) ORDER BY at LIMIT $2)
            DELETE FROM execution_events e USING old WHERE e.id = old.id RETURNING e.id
            """, [keepSeconds, batch]).count
    }
}
