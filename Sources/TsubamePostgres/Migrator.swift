// SPDX-License-Identifier: MIT
// Forward-only migrations: Migrations/NNNN_name.sql, applied in order, each in
// one transaction that records its version first.

import Foundation

public struct Migration: Sendable {
    public let version: Int
    public let name: String
    public let sql: String
}

public enum SchemaError: Error, CustomStringConvertible {
    case behind(current: Int, expected: Int)
    case ahead(current: Int, expected: Int)
    public var description: String {
        switch self {
        case let .behind(c, e):
            return "the database schema is at version \(c) but this program needs \(e): run `tsubame migrate`"
        case let .ahead(c, e):
            return "the database schema is at version \(c), newer than this program knows (\(e)): upgrade tsubame-ci"
        }
    }
}

public enum Migrator {
    /// Every migration shipped in this binary, in version order.
    public static let all: [Migration] = {
        let files: [(String, [UInt8])] = [
            ("0001_initial.sql", PackageResources._001_initial_sql),
            ("0002_executions.sql", PackageResources._002_executions_sql),
            ("0003_log_chunks_lz4.sql", PackageResources._003_log_chunks_lz4_sql),
            ("0004_events.sql", PackageResources._004_events_sql),
            ("0005_schedules.sql", PackageResources._005_schedules_sql),
            ("0006_run_after_condition.sql", PackageResources._006_run_after_condition_sql),
            ("0007_concurrency.sql", PackageResources._007_concurrency_sql),
            ("0008_notifications.sql", PackageResources._008_notifications_sql),
            ("0010_metrics.sql", PackageResources._010_metrics_sql),
            ("0011_retention.sql", PackageResources._011_retention_sql),
            ("0012_executions_parent_idx.sql", PackageResources._012_executions_parent_idx_sql),
        ]
        return files.map { file, bytes in
            Migration(version: Int(file.prefix(4))!, name: String(file.dropFirst(5).dropLast(4)),
                      sql: String(decoding: bytes, as: UTF8.self))
        }.sorted { $0.version < $1.version }
    }()

    /// The schema version this binary was built for.
    public static var expectedVersion: Int { all.last?.version ?? 0 }

    static let createTable = """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())
        """

    /// The version the database is at (0 when never migrated).
    public static func currentVersion(_ db: PGConnection) throws -> Int {
        let rows = try db.query("SELECT to_regclass('schema_migrations') IS NOT NULL AS present")
        guard rows.first?.bool("present") == true else { return 0 }
        return try db.query("SELECT coalesce(max(version), 0) AS v FROM schema_migrations").first?.int("v") ?? 0
    }

    /// Applies what is missing; returns the migrations applied. Concurrent callers serialise on an advisory lock.
    @discardableResult
    public static func migrate(_ db: PGConnection, log: (String) -> Void = { _ in }) throws -> [Migration] {
        var applied: [Migration] = []
        try db.transaction {
            try db.query("SELECT pg_advisory_xact_lock(7458219)")
            try db.execute(createTable)
        }
        for m in all {
            let done = try db.transaction { () throws -> Bool in
                try db.query("SELECT pg_advisory_xact_lock(7458219)")
                if try !db.query("SELECT 1 FROM schema_migrations WHERE version = $1", [m.version]).isEmpty { return false }
                try db.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [m.version, m.name])
                try db.execute(m.sql)
                return true
            }
            if done { applied.append(m); log("applied \(String(format: "%04d", m.version))_\(m.name)") }
        }
        let current = try currentVersion(db)
        if current > expectedVersion { throw SchemaError.ahead(current: current, expected: expectedVersion) }
        return applied
    }

    /// Throws unless the database is exactly at the version this binary knows.
    public static func requireCurrent(_ db: PGConnection) throws {
        let current = try currentVersion(db)
        if current < expectedVersion { throw SchemaError.behind(current: current, expected: expectedVersion) }
        if current > expectedVersion { throw SchemaError.ahead(current: current, expected: expectedVersion) }
    }
}
