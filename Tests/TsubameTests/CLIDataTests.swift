// SPDX-License-Identifier: MIT
// `tsubame export`, `import`, `backup` and `restore` between two real databases.

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameCrypto
@testable import TsubameHTTP
@testable import TsubamePostgres

@Suite(.serialized, .enabled(if: TestDB.enabled, "set TSUBAME_TEST_DATABASE_URL to run the PostgreSQL-backed tests"))
struct CLIDataTests {
    let source: String, target: String
    let sourceDB: PGConnection, targetDB: PGConnection
    let dir: String
    let admin: Client

    init() throws {
        source = try TestDB.sibling("cli_a")
        target = try TestDB.sibling("cli_b")
        sourceDB = try TestDB.reset(source)
        targetDB = try TestDB.reset(target)
        try TestDB.addUser(sourceDB, "admin", role: "admin")
        try TestDB.addUser(targetDB, "boss", role: "admin")
        dir = NSTemporaryDirectory() + "tsubame-cli-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try SecretBox.createKeyFile(path: dir + "/master.key")
        admin = Client(try TestDB.makeApp(base: source))
        admin.login("admin")
    }

    func run(_ url: String, _ args: String...) -> (Int32, String, String) {
        var out = "", err = ""
        let code = Commands.run(args, environment: ["TSUBAME_DATABASE_URL": url, "TSUBAME_MASTER_KEY_FILE": dir + "/master.key",
                                                    "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
                                out: { out += $0 + "\n" }, err: { err += $0 + "\n" })
        return (code, out, err)
    }

    func count(_ db: PGConnection, _ table: String) throws -> Int { try db.query("SELECT count(*) AS n FROM \(table)")[0].int("n") }

    /// Two servers and three jobs (a → b → c by run_after) with a schedule, env, a secret and a notification.
    func seed() throws {
        let web = admin.post("/api/v1/servers", #"{"name":"web","host":"10.0.0.5","port":2222,"username":"deploy","auth_method":"password","password":"server-pw-XYZ","tags":["prod"],"max_concurrent":2}"#)
        let db = admin.post("/api/v1/servers", #"{"name":"db","host":"db.example","username":"root","auth_method":"key","private_key":"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----"}"#)
        #expect(web.status == 201 && db.status == 201, "\(web.text) \(db.text)")
        let w = web.json["id"]!.int64Value!, d = db.json["id"]!.int64Value!
        let a = admin.post("/api/v1/jobs", """
            {"name":"a-backup","script":"pg_dump x","server_ids":[\(d)],"env":{"MODE":"full"},"secret_env":{"TOKEN":"secret-value-123"},
             "schedule":"0 3 * * *","timezone":"Europe/Berlin","notify":[{"on":["failed"],"type":"email","to":"ops@example.com"},
                      {"on":["succeeded"],"type":"webhook","url":"https://hooks.example/x","secret":"hook-secret-1"}]}
            """)
        #expect(a.status == 201, "\(a.text)")
        let b = admin.post("/api/v1/jobs", #"{"name":"b-ship","script":"rsync","server_ids":[\#(w),\#(d)],"run_after":[\#(a.json["id"]!.int64Value!)],"concurrency":"queue"}"#)
        #expect(b.status == 201, "\(b.text)")
        let c = admin.post("/api/v1/jobs", #"{"name":"c-clean","script":"rm -f x","server_ids":[\#(w)],"run_after":[\#(b.json["id"]!.int64Value!)],"run_after_condition":"always"}"#)
        #expect(c.status == 201, "\(c.text)")
    }

    @Test func exportThenImportRecreatesServersAndJobsWithoutSecrets() throws {
        try seed()
        let file = dir + "/export.json"
        let (code, out, _) = run(source, "export", "--file", file)
        #expect(code == 0 && out.contains("2 servers and 3 jobs"), "\(out)")
        let text = try String(contentsOfFile: file, encoding: .utf8)
        for secret in ["server-pw-XYZ", "secret-value-123", "PRIVATE KEY", "hook-secret-1", "secret_sealed", "secret_set"] { #expect(!text.contains(secret), "\(secret) leaked") }
        let doc = try JSON.parse(Array(text.utf8))
        #expect(doc["jobs"]?.arrayValue?.map { $0["name"]?.stringValue ?? "" } == ["a-backup", "b-ship", "c-clean"])
        #expect(doc["jobs"]?.arrayValue?[1]["servers"] == .array(["web", "db"]))
        #expect(doc["jobs"]?.arrayValue?[2]["run_after"] == .array(["b-ship"]))

        // A dry run reports and changes nothing.
        let dry = run(target, "import", "--file", file, "--dry-run")
        #expect(dry.0 == 0 && dry.1.contains("would create job b-ship") && dry.1.contains("nothing was changed"), "\(dry)")
        #expect(try count(targetDB, "jobs") == 0 && count(targetDB, "servers") == 0)

        let real = run(target, "import", "--file", file, "--as", "boss")
        #expect(real.0 == 0 && real.1.contains("imported: 5 created, 0 kept"), "\(real)")
        #expect(real.1.contains("server web: set its password") && real.1.contains("job a-backup: set its secret env TOKEN again"))
        #expect(try targetDB.query("SELECT count(*) AS n FROM audit_log WHERE username = 'boss'")[0].int("n") == 7)  // 2 servers, 3 jobs, 2 run_after links
        // The target's export is the source's, but for what secrets were.
        let again = dir + "/again.json"
        #expect(run(target, "export", "--file", again).0 == 0)
        func normalized(_ path: String) throws -> JSON {
            let d = try JSON.parse(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
            return .array((d["servers"]?.arrayValue ?? []) + (d["jobs"]?.arrayValue ?? []).map { j in
                .object((j.objectValue ?? []).filter { $0.0 != "secret_env_names" })
            })
        }
        #expect(try normalized(again) == normalized(file))
        let server = try targetDB.query("SELECT has_password, max_concurrent FROM servers WHERE name = 'web'")[0]
        #expect(!server.bool("has_password") && server.int("max_concurrent") == 2)

        // Importing again keeps what exists.
        let twice = run(target, "import", "--file", file)
        #expect(twice.0 == 0 && twice.1.contains("0 created, 5 kept"), "\(twice)")
    }

    @Test func aBadDocumentImportsNothing() throws {
        func write(_ text: String) throws -> String {
            let path = dir + "/bad-\(UUID().uuidString.prefix(6)).json"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let server = #"{"name":"ok","host":"h.example","username":"u","auth_method":"password"}"#
        let cases: [(String, String)] = [
            (#"{"servers":[],"jobs":[]}"#, "not a tsubame export"),
            (#"{"tsubame_export":1,"servers":{}}"#, "arrays"),
            ("{not json", "not valid JSON"),
            (#"{"tsubame_export":1,"servers":[\#(server),{"name":"bad","host":"h","username":"u","auth_method":"password","port":0}],"jobs":[]}"#,
             "server bad: port"),
            (#"{"tsubame_export":1,"servers":[\#(server)],"jobs":[{"name":"j","script":"true","servers":["ok","ghost"]}]}"#,
             "server ghost is neither"),
            (#"{"tsubame_export":1,"servers":[\#(server)],"jobs":[{"name":"j","script":"","servers":["ok"]}]}"#, "job j: script"),
            (#"{"tsubame_export":1,"servers":[\#(server)],"jobs":[{"name":"j","script":"true","servers":["ok"],"run_after":["nope"]}]}"#,
             "run_after job nope"),
            (#"{"tsubame_export":1,"servers":[{"host":"x"}],"jobs":[]}"#, "servers[0]"),
        ]
        for (doc, message) in cases {
            let (code, _, err) = run(target, "import", "--file", try write(doc))
            #expect(code == 1 && err.contains(message), "\(doc): \(err)")
        }
        #expect(try count(targetDB, "servers") == 0 && count(targetDB, "jobs") == 0)
        #expect(run(target, "import").0 == 2)
        #expect(run(target, "import", "--file", dir + "/missing.json").0 == 1)
        #expect(run(target, "import", "--file", try write(#"{"tsubame_export":1,"servers":[],"jobs":[]}"#), "--as", "nobody").2
                    .contains("no enabled admin named nobody"))
        for c in ["export", "import", "backup", "restore"] { #expect(run(target, c, "--help").0 == 0) }
    }

    @Test func backupAndRestoreMoveTheWholeDatabase() throws {
        try seed()
        let file = dir + "/db.dump"
        let (code, out, err) = run(source, "backup", "--file", file)
        #expect(code == 0 && out.contains("schema version \(Migrator.expectedVersion)") && out.contains("master key"), "\(out) \(err)")
        #expect(run(source, "backup", "--file", file).2.contains("exists"))
        #expect(run(source, "backup").0 == 2)
        // The target has data: refused without --yes.
        try targetDB.query("INSERT INTO servers (name, host, port, username, auth_method, credentials, key_id) VALUES ('other', 'h', 22, 'u', 'password', '\\x00', 'k')")
        let refused = run(target, "restore", "--file", file)
        #expect(refused.0 == 1 && refused.2.contains("--yes"), "\(refused)")
        let restored = run(target, "restore", "--file", file, "--yes")
        #expect(restored.0 == 0, "\(restored)")
        let names = try targetDB.query("SELECT name, has_password FROM servers ORDER BY name").map { "\($0.string("name")):\($0.bool("has_password"))" }
        #expect(names == ["db:false", "web:true"])
        #expect(try count(targetDB, "jobs") == 3)
        #expect(run(target, "restore", "--file", dir + "/nope.dump", "--yes").0 == 1)
        try "garbage".write(toFile: dir + "/garbage.dump", atomically: true, encoding: .utf8)
        #expect(run(target, "restore", "--file", dir + "/garbage.dump", "--yes").2.contains("pg_restore failed"))
        #expect(try count(targetDB, "jobs") == 3)
    }
}

extension CLIDataTests {
    @Test func rotateKeyReSealsEverySecretAndRefusesAnUnknownKey() throws {
        // The suite's app seals with the key of seven-bytes (TestDB.makeApp); its file is the "old" key.
        try seed()
        let old = dir + "/old.key"
        try (String(repeating: "07", count: 32) + "\n").write(toFile: old, atomically: true, encoding: .utf8)
        chmod(old, 0o600)
        let run1 = admin.post("/api/v1/jobs/\(try sourceDB.query("SELECT id FROM jobs WHERE name = 'a-backup'")[0].int64("id"))/run")
        #expect(run1.status == 202)
        let newBox = try SecretBox.load(path: dir + "/master.key")
        func keys() throws -> [String] {
            try Commands.sealedColumns.flatMap { c in
                try sourceDB.query("SELECT DISTINCT \(c.keyColumn) AS k FROM \(c.table) WHERE \(c.column) IS NOT NULL").map { $0.string("k") }
            } + Commands.sealedJSON.flatMap { c in
                try sourceDB.query("SELECT DISTINCT k FROM \(c.table) t CROSS JOIN LATERAL (\(Commands.itemKeys(c))) AS x(k)").map { $0.string("k") }
            }
        }
        let oldID = try SecretBox(key: Array(repeating: 7, count: 32)).keyID
        #expect(try Set(keys()) == [oldID])
        // Without the old key: refused, nothing changed.
        let refused = run(source, "rotate-key")
        #expect(refused.0 == 1 && refused.2.contains("sealed with key \(oldID)") && refused.2.contains("nothing was changed"), "\(refused)")
        #expect(try Set(keys()) == [oldID])
        // With it: everything re-sealed, in batches, and the new key alone opens it all.
        var out = "", err = ""
        let env = ["TSUBAME_DATABASE_URL": source, "TSUBAME_MASTER_KEY_FILE": dir + "/master.key", "TSUBAME_PREVIOUS_MASTER_KEY_FILES": " \(old) ,"]
        #expect(Commands.run(["rotate-key"], environment: env, out: { out += $0 + "\n" }, err: { err += $0 + "\n" }) == 0, "\(err)")
        #expect(out.contains("servers.credentials: 2 re-sealed") && out.contains("jobs.secret_env: 1 re-sealed")
                && out.contains("executions.secret_env: 1 re-sealed") && out.contains("jobs.notify: 1 re-sealed"), "\(out)")
        let hook = try sourceDB.query("SELECT notify::text AS n FROM jobs WHERE name = 'a-backup'")[0].json("n").arrayValue?[1]
        #expect(hook?["secret_key_id"]?.stringValue == newBox.keyID)
        #expect(try newBox.open(Crypto.fromHex(hook?["secret_sealed"]?.stringValue ?? "") ?? []) == Array("hook-secret-1".utf8))
        #expect(try Set(keys()) == [newBox.keyID])
        let creds = try sourceDB.query("SELECT credentials FROM servers WHERE name = 'web'")[0].bytea("credentials") ?? []
        #expect(try Servers.Credentials(sealed: creds, box: newBox).password == "server-pw-XYZ")
        let secret = try sourceDB.query("SELECT secret_env FROM executions")[0].bytea("secret_env") ?? []
        #expect(String(decoding: try newBox.open(secret), as: UTF8.self).contains("secret-value-123"))
        #expect(throws: SecretBoxError.corrupt) { try SecretBox(key: Array(repeating: 7, count: 32)).open(secret) }
        // Running it again has nothing to do; small batches walk the same rows.
        #expect(try Commands.rotateKeys(sourceDB, box: newBox, batch: 1).values.reduce(0, +) == 0)
        let back = try SecretBox(key: Array(repeating: 7, count: 32), previous: [newBox])
        #expect(back.keyIDs == [oldID, newBox.keyID])
        var steps: [String] = []
        #expect(try Commands.rotateKeys(sourceDB, box: back, batch: 1) { steps.append($0) }["servers.credentials"] == 2)
        #expect(steps.contains("servers: 1 re-sealed so far"))
        #expect(run(source, "rotate-key", "--help").0 == 0)
    }
}
