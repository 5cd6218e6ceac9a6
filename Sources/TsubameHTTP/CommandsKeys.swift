// SPDX-License-Identifier: MIT
// `tsubame rotate-key`: re-seals every stored secret under the current master key. With the old key listed in
// TSUBAME_PREVIOUS_MASTER_KEY_FILES, pools and executors read both while this runs, so a rotation needs no downtime.

import Foundation
import TsubameCore
import TsubameCrypto
import TsubamePostgres

extension Commands {
    /// Every sealed column: (table, sealed column, key id column).
    static let sealedColumns: [(table: String, column: String, keyColumn: String)] = [
        ("servers", "credentials", "key_id"),
        ("jobs", "secret_env", "secret_key_id"),
        ("executions", "secret_env", "secret_key_id"),
    ]

    struct RotationError: Error, CustomStringConvertible {
        let description: String
    }

    /// Re-seals, in batches of `batch` rows (one transaction each, so it can be stopped and run again), everything
    /// not sealed with `box`'s current key. Returns the rows re-sealed per table. Checks first that every key in use
    /// is one `box` holds, and changes nothing otherwise.
    static func rotateKeys(_ db: PGConnection, box: SecretBox, batch: Int = 500, progress: (String) -> Void = { _ in }) throws -> [String: Int] {
        var unknown: [String] = []
        for c in sealedColumns {
            for r in try db.query("""
                SELECT \(c.keyColumn) AS k, count(*) AS n FROM \(c.table) WHERE \(c.column) IS NOT NULL GROUP BY 1 ORDER BY 1
                """) where !box.keyIDs.contains(r["k"] ?? "") {
                unknown.append("\(r.int("n")) in \(c.table).\(c.column) sealed with key \(r["k"] ?? "(none)")")
            }
        }
        if !unknown.isEmpty {
            throw RotationError(description: "secrets sealed with a key you did not give: \(unknown.joined(separator: "; ")). "
                + "Put that key's file in TSUBAME_PREVIOUS_MASTER_KEY_FILES (the current key is \(box.keyID)); nothing was changed")
        }
        var done: [String: Int] = [:]
        for c in sealedColumns {
            var total = 0
            while true {
                let n = try db.transaction { () throws -> Int in
                    let rows = try db.query("""
                        SELECT id, \(c.column) AS sealed FROM \(c.table)
                        WHERE \(c.column) IS NOT NULL AND \(c.keyColumn) IS DISTINCT FROM $1 ORDER BY id LIMIT $2 FOR UPDATE
                        """, [box.keyID, batch])
                    for r in rows {
                        let plain: [UInt8]
                        do { plain = try box.open(r.bytea("sealed") ?? []) } catch {
                            throw RotationError(description: "\(c.table) #\(r.int64("id")): \(error); nothing of this batch was changed")
                        }
                        try db.query("UPDATE \(c.table) SET \(c.column) = $2, \(c.keyColumn) = $3 WHERE id = $1",
                                     [r.int64("id"), Bytea(try box.seal(plain)), box.keyID])
                    }
                    return rows.count
                }
                total += n
                if n < batch { break }
                progress("\(c.table): \(total) re-sealed so far")
            }
            done["\(c.table).\(c.column)"] = total
        }
        return done
    }

    static func rotateKey(_ args: [String], config: Config, out: (String) -> Void, err: (String) -> Void) throws -> Int32 {
        let box = try SecretBox.load(config: config)
        let db = try PGConnection(config.databaseURL)
        try Migrator.requireCurrent(db)
        do {
            let done = try rotateKeys(db, box: box, progress: out)
            for c in sealedColumns { out("\(c.table).\(c.column): \(done["\(c.table).\(c.column)"] ?? 0) re-sealed") }
            try db.query("INSERT INTO audit_log (username, action, target, detail) VALUES ('(cli)', 'key.rotate', $1, $2::jsonb)",
                         ["key:\(box.keyID)", JSON.object(done.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })])
            out("every secret is sealed with key \(box.keyID) now"
                + (box.previous.isEmpty ? "" : "; remove TSUBAME_PREVIOUS_MASTER_KEY_FILES, reload the pools and restart the executors, then destroy the old key"))
            return 0
        } catch let e as RotationError {
            err("tsubame rotate-key: \(e.description)"); return 1
        }
    }
}
