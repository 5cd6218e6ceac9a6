// SPDX-License-Identifier: MIT
// `tsubame export` and `tsubame import`: servers and jobs as a JSON document without secrets (names stand for ids,
// so a document moves between installations); `tsubame backup` and `tsubame restore`: the whole database through
// pg_dump and pg_restore. Imports go through the API's own validation and run in one transaction: all or nothing.

import Foundation
import TsubameCore
import TsubameCrypto
import TsubameFastCGI
import TsubamePostgres

extension Commands {
    static let exportFormat: Int64 = 1
    static let serverExportFields = ["name", "host", "port", "username", "auth_method", "description", "tags", "max_concurrent"]
    static let jobDropped: Set<String> = ["id", "server_ids", "run_after", "next_runs", "last_execution", "created_at", "updated_at"]

    /// The document `tsubame export` writes.
    static func exportDocument(_ db: PGConnection, now: Date = Date()) throws -> JSON {
        var serverNames: [Int64: String] = [:]
        let servers = try db.query("SELECT \(Servers.columns) FROM servers ORDER BY name").map { r -> JSON in
            serverNames[r.int64("id")] = r.string("name")
            let all = Servers.json(r)
            return .object(serverExportFields.compactMap { k in all[k].map { (k, $0) } })
        }
        let rows = try db.query("SELECT \(Jobs.columns) FROM jobs j ORDER BY j.name")
        let jobNames = Dictionary(uniqueKeysWithValues: rows.map { ($0.int64("id"), $0.string("name")) })
        let jobs = rows.map { r -> JSON in
            let all = Jobs.json(r)
            var members = (all.objectValue ?? []).filter { !jobDropped.contains($0.0) }
            func names(_ key: String, _ map: [Int64: String]) -> JSON {
                .array((all[key]?.arrayValue ?? []).compactMap { $0.int64Value.flatMap { map[$0] }.map(JSON.string) })
            }
            members.append(("servers", names("server_ids", serverNames)))
            members.append(("run_after", names("run_after", jobNames)))
            // Notification secrets stay behind like every other secret.
            if let i = members.firstIndex(where: { $0.0 == "notify" }) {
                members[i].1 = .array((members[i].1.arrayValue ?? []).map { item in
                    .object((item.objectValue ?? []).filter { !["secret", "secret_set"].contains($0.0) })
                })
            }
            return .object(members)
        }
        return .object([("tsubame_export", .int(exportFormat)), ("exported_at", .string(Timestamp.format(now))),
                        ("servers", .array(servers)), ("jobs", .array(jobs))])
    }

    /// What an import did (or would do, with --dry-run).
    struct ImportReport {
        var created: [String] = []
        var kept: [String] = []
        var notes: [String] = []
    }

    struct ImportError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    /// Imports `doc` as `username` (an admin). Objects whose name exists are kept as they are. Throws on the first
    /// problem, having changed nothing.
    static func importDocument(_ doc: JSON, config: Config, box: SecretBox, username: String?, dryRun: Bool) throws -> ImportReport {
        guard doc["tsubame_export"]?.int64Value == exportFormat else {
            throw ImportError("not a tsubame export (format \(exportFormat)): the top-level \"tsubame_export\" is missing or different")
        }
        guard let servers = doc["servers"]?.arrayValue, let jobs = doc["jobs"]?.arrayValue else {
            throw ImportError("the document needs \"servers\" and \"jobs\" arrays")
        }
        let app = App(settings: AppSettings(databaseURL: config.databaseURL), box: box)
        let db = try PGConnection(config.databaseURL)
        try Migrator.requireCurrent(db)
        app.use(connection: db)
        struct DryRun: Error { let report: ImportReport }
        do {
          return try db.transaction { () throws -> ImportReport in
            var report = ImportReport()
            let admin = try db.query("""
                SELECT id, username FROM users WHERE role = 'admin' AND NOT disabled AND ($1::text IS NULL OR lower(username) = lower($1))
                ORDER BY id LIMIT 1
                """, [username]).first
            guard let admin else {
                throw ImportError(username.map { "no enabled admin named \($0)" } ?? "no enabled admin user: create one with `tsubame user create`")
            }
            let principal = Principal(userID: admin.int64("id"), username: admin.string("username"), role: .admin)
            func context(_ body: JSON, ids: [String: Int64] = [:]) -> Context {
                var ctx = Context(request: HTTPRequest(method: "POST", uri: "/api/v1/import",
                                                       params: ["CONTENT_TYPE": "application/json", "REMOTE_ADDR": "(cli)"],
                                                       body: body.encoded()), app: app, ids: ids)
                ctx.principal = principal
                return ctx
            }
            func fail(_ what: String, _ error: any Error) -> ImportError {
                if let e = error as? APIError { return ImportError("\(what): \(e.detail.isEmpty ? e.title : e.detail)") }
                return ImportError("\(what): \(error)")
            }
            var serverIDs = Dictionary(uniqueKeysWithValues: try db.query("SELECT id, name FROM servers").map { ($0.string("name"), $0.int64("id")) })
            for (n, s) in servers.enumerated() {
                guard let name = s["name"]?.stringValue else { throw ImportError("servers[\(n)]: \"name\" must be a string") }
                if serverIDs[name] != nil { report.kept.append("server \(name)"); continue }
                // The API's checks, then a row without credentials: they never travel in an export.
                let i: Servers.Input
                do { i = try Servers.read(context(s), creating: true) } catch { throw fail("server \(name)", error) }
                let sealed = try box.seal(Servers.Credentials().json.encoded())
                serverIDs[name] = try db.query("""
                    INSERT INTO servers (name, host, port, username, auth_method, credentials, key_id, has_password, has_private_key,
                                         has_passphrase, description, tags, max_concurrent)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, false, false, false, $8, $9, $10) RETURNING id
                    """, [name, i.host ?? "", i.port ?? 22, i.username ?? "", i.authMethod ?? "password", Bytea(sealed), box.keyID,
                          i.description ?? "", TextArray(i.tags ?? []), i.maxConcurrent ?? 4])[0].int64("id")
                try db.query("INSERT INTO audit_log (user_id, username, action, target, address, detail) VALUES ($1, $2, 'server.import', $3, '(cli)', '{}')",
                             [principal.userID, principal.username, "server:\(serverIDs[name]!)"])
                report.created.append("server \(name)")
                report.notes.append("server \(name): set its \(i.authMethod == "key" ? "private key" : "password") (exports carry no credentials)")
            }
            var jobIDs = Dictionary(uniqueKeysWithValues: try db.query("SELECT id, name FROM jobs").map { ($0.string("name"), $0.int64("id")) })
            var created: [(String, JSON)] = []
            for (n, j) in jobs.enumerated() {
                guard let name = j["name"]?.stringValue else { throw ImportError("jobs[\(n)]: \"name\" must be a string") }
                if jobIDs[name] != nil { report.kept.append("job \(name)"); continue }
                var members = (j.objectValue ?? []).filter { !["servers", "run_after", "secret_env_names"].contains($0.0) }
                var ids: [JSON] = []
                for server in j["servers"]?.arrayValue ?? [] {
                    guard let s = server.stringValue, let id = serverIDs[s] else {
                        throw ImportError("job \(name): server \(server.stringValue ?? String(decoding: server.encoded(), as: UTF8.self)) is neither in the document nor in the database")
                    }
                    ids.append(.int(id))
                }
                members.append(("server_ids", .array(ids)))
                let response: HTTPResponse
                do { response = try Jobs.create(context(.object(members))) } catch { throw fail("job \(name)", error) }
                let id = try JSON.parse(response.body)["id"]?.int64Value ?? 0
                jobIDs[name] = id
                created.append((name, j))
                report.created.append("job \(name)")
                let secrets = (j["secret_env_names"]?.arrayValue ?? []).compactMap(\.stringValue)
                if !secrets.isEmpty { report.notes.append("job \(name): set its secret env \(secrets.joined(separator: ", ")) again") }
            }
            // run_after names the jobs by name; they all exist now.
            for (name, j) in created {
                let after = j["run_after"]?.arrayValue ?? []
                if after.isEmpty { continue }
                var ids: [JSON] = []
                for a in after {
                    guard let s = a.stringValue, let id = jobIDs[s] else {
                        throw ImportError("job \(name): run_after job \(a.stringValue ?? String(decoding: a.encoded(), as: UTF8.self)) is neither in the document nor in the database")
                    }
                    ids.append(.int(id))
                }
                do {
                    _ = try Jobs.update(context(.object([("run_after", .array(ids))]), ids: ["id": jobIDs[name]!]))
                } catch { throw fail("job \(name)", error) }
            }
            if dryRun { throw DryRun(report: report) }  // rolls back
            return report
          }
        } catch let d as DryRun {
            return d.report
        }
    }

    static func export(_ args: [String], config: Config, out: (String) -> Void, err: (String) -> Void) throws -> Int32 {
        let db = try PGConnection(config.databaseURL)
        try Migrator.requireCurrent(db)
        let doc = try exportDocument(db)
        let object = try JSONSerialization.jsonObject(with: Data(doc.encoded()))
        let text = String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]),
                          as: UTF8.self)
        if let path = option(args, "--file") {
            try Data((text + "\n").utf8).write(to: URL(fileURLWithPath: path))
            out("exported \(doc["servers"]?.arrayValue?.count ?? 0) servers and \(doc["jobs"]?.arrayValue?.count ?? 0) jobs to \(path) (no secrets)")
        } else {
            out(text)
        }
        return 0
    }

    static func importCommand(_ args: [String], config: Config, out: (String) -> Void, err: (String) -> Void) throws -> Int32 {
        guard let path = option(args, "--file") else { err(help("import")); return 2 }
        let doc: JSON
        do {
            doc = try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        } catch let e as JSONParseError {
            err("tsubame import: \(path) is not valid JSON: \(e.description)"); return 1
        }
        let box = try SecretBox.load(config: config)
        let dryRun = args.contains("--dry-run")
        do {
            let r = try importDocument(doc, config: config, box: box, username: option(args, "--as"), dryRun: dryRun)
            for c in r.created { out("\(dryRun ? "would create" : "created") \(c)") }
            for k in r.kept { out("kept \(k) (one with that name exists)") }
            for n in r.notes { out("note: \(n)") }
            out(dryRun ? "dry run: nothing was changed" : "imported: \(r.created.count) created, \(r.kept.count) kept")
            return 0
        } catch let e as ImportError {
            err("tsubame import: \(e.description); nothing was imported"); return 1
        }
    }

    /// pg_dump / pg_restore: on PATH, else the newest PostgreSQL's bin directory.
    static func pgTool(_ name: String, environment: [String: String]) -> String? {
        let fm = FileManager.default
        for dir in (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") where fm.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        let versions = ((try? fm.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []).compactMap(Int.init).sorted()
        return versions.reversed().map { "/usr/lib/postgresql/\($0)/bin/\(name)" }.first { fm.isExecutableFile(atPath: $0) }
    }

    /// Runs a program, passing its output through; returns its exit status.
    static func spawn(_ path: String, _ arguments: [String], out: (String) -> Void, err: (String) -> Void) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = arguments
        let errPipe = Pipe()
        p.standardError = errPipe
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let text = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        for line in text.split(separator: "\n") { err(String(line)) }
        return p.terminationStatus
    }

    static func backup(_ args: [String], config: Config, environment: [String: String], out: (String) -> Void,
                       err: (String) -> Void) throws -> Int32 {
        guard let path = option(args, "--file") else { err(help("backup")); return 2 }
        if FileManager.default.fileExists(atPath: path) { err("tsubame backup: \(path) exists; choose a new file"); return 1 }
        guard let pgDump = pgTool("pg_dump", environment: environment) else {
            err("tsubame backup: pg_dump not found (install postgresql-client)"); return 1
        }
        let db = try PGConnection(config.databaseURL)
        let version = try Migrator.currentVersion(db)
        let status = try spawn(pgDump, ["--format=custom", "--no-owner", "--no-privileges", "--file=\(path)", "--dbname=\(config.databaseURL)"],
                               out: out, err: err)
        guard status == 0 else { try? FileManager.default.removeItem(atPath: path); err("tsubame backup: pg_dump failed (exit \(status))"); return 1 }
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        out("backed up the database (schema version \(version)) to \(path), \(size) bytes")
        out("warning: the backup holds credentials sealed with the master key (\(config.string("TSUBAME_MASTER_KEY_FILE") ?? "TSUBAME_MASTER_KEY_FILE")); "
            + "back that file up separately and safely: without it they cannot be read")
        return 0
    }

    static func restore(_ args: [String], config: Config, environment: [String: String], out: (String) -> Void,
                        err: (String) -> Void) throws -> Int32 {
        guard let path = option(args, "--file") else { err(help("restore")); return 2 }
        guard FileManager.default.isReadableFile(atPath: path) else { err("tsubame restore: cannot read \(path)"); return 1 }
        guard let pgRestore = pgTool("pg_restore", environment: environment) else {
            err("tsubame restore: pg_restore not found (install postgresql-client)"); return 1
        }
        let db = try PGConnection(config.databaseURL)
        let hasData = try db.query("SELECT to_regclass('public.schema_migrations') IS NOT NULL AS yes")[0].bool("yes")
        if hasData, !args.contains("--yes") {
            err("tsubame restore: the database is not empty; this replaces everything in it with the backup. "
                + "Stop the pools and executors, then run again with --yes")
            return 1
        }
        let status = try spawn(pgRestore, ["--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
                                           "--exit-on-error", "--dbname=\(config.databaseURL)", path], out: out, err: err)
        guard status == 0 else { err("tsubame restore: pg_restore failed (exit \(status)); the database was left as it was"); return 1 }
        let version = try Migrator.currentVersion(db)
        out("restored \(path): schema version \(version)" + (version < Migrator.expectedVersion ? "; run `tsubame migrate` next" : ""))
        out("the credentials in it open only with the master key that sealed them: keep TSUBAME_MASTER_KEY_FILE pointing at that key")
        return 0
    }
}
