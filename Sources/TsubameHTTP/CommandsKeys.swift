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

    /// JSON columns whose items may hold a sealed webhook secret ("secret_sealed" hex, "secret_key_id"):
    /// (table, column, whether the column is an array of items or one item).
    static let sealedJSON: [(table: String, column: String, isArray: Bool)] = [
        ("jobs", "notify", true),
        ("notification_deliveries", "item", false),
    ]

    /// SQL: the key ids of the sealed items in `c` of the row.
    static func itemKeys(_ c: (table: String, column: String, isArray: Bool)) -> String {
        c.isArray ? "SELECT i->>'secret_key_id' FROM jsonb_array_elements(\(c.column)) i WHERE i ? 'secret_sealed'"
                  : "SELECT \(c.column)->>'secret_key_id' WHERE \(c.column) ? 'secret_sealed'"
    }

    /// An item with its secret re-sealed by `box` (unchanged when it has none).
    static func reseal(_ item: JSON, box: SecretBox) throws -> JSON {
        guard let hex = item["secret_sealed"]?.stringValue else { return item }
        guard let sealed = Crypto.fromHex(hex) else { throw SecretBoxError.corrupt }
        let fresh = try box.seal(try box.open(sealed))
        return .object((item.objectValue ?? []).map { k, v in
            k == "secret_sealed" ? (k, .string(Crypto.hex(fresh))) : k == "secret_key_id" ? (k, .string(box.keyID)) : (k, v)
        })
    }

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
        for c in sealedJSON {
            for r in try db.query("""
                SELECT k, count(*) AS n FROM \(c.table) t CROSS JOIN LATERAL (\(itemKeys(c))) AS x(k) GROUP BY 1 ORDER BY 1
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
        for c in sealedJSON {
            var total = 0
            while true {
                let n = try db.transaction { () throws -> Int in
                    let rows = try db.query("""
                        SELECT id, \(c.column)::text AS value FROM \(c.table) t
                        WHERE EXISTS (SELECT 1 FROM (\(itemKeys(c))) AS x(k) WHERE k IS DISTINCT FROM $1) ORDER BY id LIMIT $2 FOR UPDATE
                        """, [box.keyID, batch])
                    for r in rows {
                        let value = r.json("value")
                        let fresh: JSON
                        do {
                            fresh = c.isArray ? .array(try (value.arrayValue ?? []).map { try reseal($0, box: box) }) : try reseal(value, box: box)
                        } catch {
                            throw RotationError(description: "\(c.table) #\(r.int64("id")): \(error); nothing of this batch was changed")
                        }
                        try db.query("UPDATE \(c.table) SET \(c.column) = $2::jsonb WHERE id = $1", [r.int64("id"), fresh])
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
            for name in sealedColumns.map({ "\($0.table).\($0.column)" }) + sealedJSON.map({ "\($0.table).\($0.column)" }) {
                out("\(name): \(done[name] ?? 0) re-sealed")
            }
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
