// SPDX-License-Identifier: MIT
// Test support: a real PostgreSQL (TSUBAME_TEST_DATABASE_URL) reset per suite,
// and a client that calls App.handle in-process.

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameCrypto
@testable import TsubameFastCGI
@testable import TsubameHTTP
@testable import TsubamePostgres

enum TestDB {
    static let url = ProcessInfo.processInfo.environment["TSUBAME_TEST_DATABASE_URL"]
    static var enabled: Bool { url != nil }
    static let hasher = PasswordHasher(logN: 10)

    /// The URL of a sibling database `<name>_<suffix>`, created when missing, so suites that run in parallel don't share tables.
    static func sibling(_ suffix: String) throws -> String {
        let base = url!
        let q = base.firstIndex(of: "?") ?? base.endIndex
        let slash = base[..<q].lastIndex(of: "/")!
        let name = String(base[base.index(after: slash)..<q]) + "_" + suffix
        let db = try PGConnection(base)
        if try db.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]).isEmpty {
            do { try db.execute("CREATE DATABASE \(name)") } catch let e as PGError where e.sqlState == "42P04" || e.isUniqueViolation {}
        }
        return String(base[...slash]) + name + String(base[q...])
    }

    /// A migrated, empty database.
    static func reset(_ dbURL: String? = nil) throws -> PGConnection {
        let db = try PGConnection(dbURL ?? url!)
        try Migrator.migrate(db)
        try db.execute("TRUNCATE users, sessions, api_tokens, login_failures, servers, jobs, job_servers, audit_log, executors, executions, execution_targets, log_chunks, execution_events, metric_counters RESTART IDENTITY CASCADE")
        return db
    }

    static func makeApp(url: String? = nil, maxFailures: Int = 3, base: String? = nil) throws -> App {
        let b = base ?? TestDB.url!
        let own = b + (b.contains("?") ? "&" : "?") + "application_name=tsubame_apitest"
        return App(settings: AppSettings(databaseURL: url ?? own, cookieSecure: true, sessionHours: 1, loginMaxFailures: maxFailures,
                                  loginWindowSeconds: 600, hasher: hasher),
            box: try SecretBox(key: Array(repeating: 7, count: 32)))
    }

    @discardableResult
    static func addUser(_ db: PGConnection, _ name: String, role: String, password: String = "password-123") throws -> Int64 {
        try db.query("INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) RETURNING id",
                     [name, try hasher.hash(password), role])[0].int64("id")
    }
}

/// A caller of the in-process app: signs in with a cookie or a bearer token.
final class Client {
    let app: App
    var cookie: String?
    var csrf: String?
    var bearer: String?
    var address = "10.0.0.1"

    init(_ app: App) { self.app = app }

    struct Reply {
        let status: Int
        let json: JSON
        let response: HTTPResponse
        func header(_ name: String) -> String? { response.headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
        var text: String { String(decoding: response.body, as: UTF8.self) }
    }

    @discardableResult
    func call(_ method: String, _ uri: String, _ body: String? = nil, contentType: String? = "application/json",
              headers: [String: String] = [:], rawBody: [UInt8]? = nil, tooLarge: Bool = false) -> Reply {
        var params: [String: String] = ["REMOTE_ADDR": address]
        if let cookie { params["HTTP_COOKIE"] = "other=1; tsubame_session=\(cookie)" }
        if let csrf { params["HTTP_X_CSRF_TOKEN"] = csrf }
        if let bearer { params["HTTP_AUTHORIZATION"] = "Bearer \(bearer)" }
        let bytes = rawBody ?? body.map { Array($0.utf8) } ?? []
        if !bytes.isEmpty || body != nil, let contentType { params["CONTENT_TYPE"] = contentType }
        for (k, v) in headers { params["HTTP_" + k.uppercased().replacingOccurrences(of: "-", with: "_")] = v }
        var r = app.handle(HTTPRequest(method: method, uri: uri, params: params, body: bytes, bodyTooLarge: tooLarge))
        if let stream = r.stream {
            // What the FastCGI server would send, collected.
            var body: [UInt8] = []
            try? stream.produce { body += $0 }
            r.body = body
            r.stream = nil
        }
        let json = (try? JSON.parse(r.body)) ?? .null
        return Reply(status: r.status, json: json, response: r)
    }

    func get(_ uri: String) -> Reply { call("GET", uri) }
    func post(_ uri: String, _ body: String = "{}") -> Reply { call("POST", uri, body) }
    func patch(_ uri: String, _ body: String) -> Reply { call("PATCH", uri, body) }
    func delete(_ uri: String) -> Reply { call("DELETE", uri) }

    @discardableResult
    func login(_ user: String, _ password: String = "password-123") -> Reply {
        let r = post("/api/v1/auth/login", #"{"username":"\#(user)","password":"\#(password)"}"#)
        if r.status == 200, let set = r.header("Set-Cookie") {
            cookie = String(set.split(separator: ";")[0].split(separator: "=", maxSplits: 1)[1])
            csrf = r.json["csrf_token"]?.stringValue
        }
        return r
    }
}
