// SPDX-License-Identifier: MIT
// SSH targets. Credentials are sealed with the master key and never leave:
// responses say only whether each one is set.

import Foundation
import TsubameCore
import TsubameCrypto
import TsubameFastCGI
import TsubamePostgres
import TsubameSSH

enum Servers {
    static let columns = """
        id, name, host, port, username, auth_method, description, max_concurrent, to_json(tags)::text AS tags_json,
        has_password, has_private_key, has_passphrase, host_key_algorithm, host_key_fingerprint,
        \(tsSQL("host_key_trusted_at", as: "trusted")), \(tsSQL("created_at", as: "created")), \(tsSQL("updated_at", as: "updated"))
        """
    static let hostPattern = "^([A-Za-z0-9]([A-Za-z0-9-]{0,62})?)(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*\\.?$|^[0-9A-Fa-f:.]+$|^\\[[0-9A-Fa-f:.]+\\]$"
    static let userPattern = "^[A-Za-z0-9_][A-Za-z0-9_.@-]*$"

    static func json(_ r: PGRow) -> JSON {
        let hostKey: JSON = r["host_key_fingerprint"] == nil ? .null : .object([
            ("algorithm", .string(r.string("host_key_algorithm"))), ("fingerprint_sha256", .string(r.string("host_key_fingerprint"))),
            ("trusted_at", ts(r, "trusted")),
        ])
        return .object([
            ("id", .int(r.int64("id"))), ("name", .string(r.string("name"))), ("host", .string(r.string("host"))),
            ("port", .int(r.int("port"))), ("username", .string(r.string("username"))), ("auth_method", .string(r.string("auth_method"))),
            ("description", .string(r.string("description"))), ("tags", r.json("tags_json")), ("host_key", hostKey),
            ("has_password", .bool(r.bool("has_password"))), ("has_private_key", .bool(r.bool("has_private_key"))),
            ("has_passphrase", .bool(r.bool("has_passphrase"))), ("max_concurrent", .int(r.int("max_concurrent"))),
            ("created_at", ts(r, "created")), ("updated_at", ts(r, "updated")),
        ])
    }

    static func list(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        let q = try ctx.query()
        let (limit, after) = try ctx.page(q)
        let rows = try ctx.db.query("""
            SELECT \(columns) FROM servers
            WHERE id > $1 AND ($2::text IS NULL OR $2 = ANY(tags))
              AND ($3::text IS NULL OR name ILIKE $3 OR host ILIKE $3 OR description ILIKE $3)
            ORDER BY id LIMIT $4
            """, [after ?? 0, q["tag"].flatMap { $0.isEmpty ? nil : $0 }, q["q"].flatMap { $0.isEmpty ? nil : likePattern($0) }, limit + 1])
        let (page, next) = Cursor.page(rows, limit: limit) { $0.int64("id") }
        return Reply.list(page.map(json), next: next)
    }

    static func fetch(_ db: PGConnection, _ id: Int64) throws -> PGRow {
        guard let row = try db.query("SELECT \(columns) FROM servers WHERE id = $1", [id]).first else { throw APIError.notFound("server") }
        return row
    }

    static func get(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.viewer)
        return Reply.json(200, json(try fetch(try ctx.db, ctx.id())))
    }

    /// The write-only secrets, as sealed in the `credentials` column.
    struct Credentials {
        var password: String?
        var privateKey: String?
        var passphrase: String?

        var json: JSON {
            .object([("password", .optString(password)), ("private_key", .optString(privateKey)), ("passphrase", .optString(passphrase))])
        }
        init(password: String? = nil, privateKey: String? = nil, passphrase: String? = nil) {
            self.password = password; self.privateKey = privateKey; self.passphrase = passphrase
        }
        init(sealed: [UInt8], box: SecretBox) throws {
            let j = try JSON.parse(try box.open(sealed))
            password = j["password"]?.stringValue; privateKey = j["private_key"]?.stringValue; passphrase = j["passphrase"]?.stringValue
        }
    }

    /// Fields common to create and update; nil where absent.
    struct Input {
        var name, host, username, authMethod, description: String?
        var port, maxConcurrent: Int64?
        var tags: [String]?
        var password, privateKey, passphrase: String?
        var clearHostKey = false
    }

    static func read(_ ctx: Context, creating: Bool) throws -> Input {
        var b = try BodyReader(try ctx.json())
        let req: Presence = creating ? .required : .optional
        var i = Input()
        i.name = b.string("name", req, min: 1, max: 100)
        i.host = b.string("host", req, min: 1, max: 255, pattern: hostPattern, patternHelp: "must be a host name or an IP address")
        i.port = b.int("port", .optional, range: 1...65535)
        i.maxConcurrent = b.int("max_concurrent", .optional, range: 1...1000)
        i.username = b.string("username", req, min: 1, max: 64, pattern: userPattern,
                              patternHelp: "may use letters, digits and _ . @ - only")
        i.authMethod = b.oneOf("auth_method", req, ["password", "key"])
        i.password = b.string("password", .optional, min: 1, max: 1024)
        i.privateKey = b.string("private_key", .optional, min: 1, max: 16384)
        if let k = i.privateKey, !(k.contains("-----BEGIN ") && k.contains("PRIVATE KEY-----")) {
            b.fail("private_key", "must be a PEM or OpenSSH private key (-----BEGIN … PRIVATE KEY-----)")
        }
        i.passphrase = b.string("passphrase", .optional, min: 1, max: 1024)
        i.description = b.string("description", .optional, max: 2000)
        i.tags = b.tags("tags")
        if !creating, let hk = b.raw("host_key", .optional) {
            if hk.isNull { i.clearHostKey = true } else { b.fail("host_key", "can only be set to null (forget the pinned key)") }
        }
        try b.finish()
        return i
    }

    /// 422 unless the chosen auth method has its secret.
    static func requireSecret(method: String, _ c: Credentials) throws {
        if method == "password", c.password == nil {
            throw APIError.validation([FieldError("password", "is required when auth_method is password")])
        }
        if method == "key", c.privateKey == nil {
            throw APIError.validation([FieldError("private_key", "is required when auth_method is key")])
        }
    }

    static func create(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.admin)
        let i = try read(ctx, creating: true)
        guard let name = i.name, let host = i.host, let username = i.username, let method = i.authMethod else { throw APIError.validation([]) }
        let creds = Credentials(password: i.password, privateKey: i.privateKey, passphrase: i.passphrase)
        try requireSecret(method: method, creds)
        let box = ctx.app.box
        let sealed = try box.seal(creds.json.encoded())
        let db = try ctx.db
        let row = try db.transaction { () throws -> PGRow in
            do {
                let r = try db.query("""
                    INSERT INTO servers (name, host, port, username, auth_method, credentials, key_id, has_password, has_private_key,
                                         has_passphrase, description, tags, max_concurrent)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING \(columns)
                    """, [name, host, i.port ?? 22, username, method, Bytea(sealed), box.keyID, creds.password != nil,
                          creds.privateKey != nil, creds.passphrase != nil, i.description ?? "", TextArray(i.tags ?? []),
                          i.maxConcurrent ?? 4])[0]
                try ctx.audit("server.create", target: "server:\(r.int64("id"))", detail: .object([("name", .string(name))]))
                return r
            } catch let e as PGError where e.isUniqueViolation {
                throw APIError.conflict("A server named \(name) already exists.")
            }
        }
        return Reply.json(201, json(row))
    }

    static func update(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.admin)
        let id = ctx.id()
        let i = try read(ctx, creating: false)
        let db = try ctx.db
        let box = ctx.app.box
        let row = try db.transaction { () throws -> PGRow in
            guard let cur = try db.query("SELECT auth_method, credentials FROM servers WHERE id = $1 FOR UPDATE", [id]).first else {
                throw APIError.notFound("server")
            }
            var creds = try Credentials(sealed: cur.bytea("credentials") ?? [], box: box)
            if let p = i.password { creds.password = p }
            if let k = i.privateKey { creds.privateKey = k }
            if let p = i.passphrase { creds.passphrase = p }
            let method = i.authMethod ?? cur.string("auth_method")
            try requireSecret(method: method, creds)
            let sealed = try box.seal(creds.json.encoded())
            do {
                let r = try db.query("""
                    UPDATE servers SET name = coalesce($2, name), host = coalesce($3, host), port = coalesce($4, port),
                        username = coalesce($5, username), auth_method = $6, credentials = $7, key_id = $8,
                        has_password = $9, has_private_key = $10, has_passphrase = $11,
                        description = coalesce($12, description), tags = coalesce($13, tags),
                        host_key_algorithm = CASE WHEN $14 THEN NULL ELSE host_key_algorithm END,
                        host_key_fingerprint = CASE WHEN $14 THEN NULL ELSE host_key_fingerprint END,
                        host_key_trusted_at = CASE WHEN $14 THEN NULL ELSE host_key_trusted_at END,
                        max_concurrent = coalesce($15, max_concurrent),
                        updated_at = now()
                    WHERE id = $1 RETURNING \(columns)
                    """, [id, i.name, i.host, i.port, i.username, method, Bytea(sealed), box.keyID, creds.password != nil,
                          creds.privateKey != nil, creds.passphrase != nil, i.description, i.tags.map(TextArray.init), i.clearHostKey,
                          i.maxConcurrent])[0]
                var changed: [JSON] = []
                if i.password != nil { changed.append("password") }
                if i.privateKey != nil { changed.append("private_key") }
                if i.clearHostKey { changed.append("host_key cleared") }
                try ctx.audit("server.update", target: "server:\(id)", detail: .object([("changed", .array(changed))]))
                return r
            } catch let e as PGError where e.isUniqueViolation {
                throw APIError.conflict("A server named \(i.name ?? "") already exists.")
            }
        }
        return Reply.json(200, json(row))
    }

    static func delete(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.admin)
        let id = ctx.id()
        let db = try ctx.db
        try db.transaction {
            guard let cur = try db.query("SELECT name FROM servers WHERE id = $1 FOR UPDATE", [id]).first else { throw APIError.notFound("server") }
            let users = try db.query("""
                SELECT j.name FROM job_servers js JOIN jobs j ON j.id = js.job_id WHERE js.server_id = $1 ORDER BY j.name LIMIT 5
                """, [id]).map { $0.string("name") }
            if !users.isEmpty {
                throw APIError.conflict("Server \(cur.string("name")) is used by job(s) \(users.joined(separator: ", ")); remove it from them first.")
            }
            try db.query("DELETE FROM servers WHERE id = $1", [id])
            try ctx.audit("server.delete", target: "server:\(id)", detail: .object([("name", .string(cur.string("name")))]))
        }
        return Reply.noContent()
    }
}

extension Servers {
    /// POST /servers/{id}/test: connect, check the host key, authenticate, run `true`. Trusts the key on first use.
    static func test(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.operator_)
        try BodyReader(try ctx.optionalJSON()).finish()
        let db = try ctx.db
        let id = ctx.id()
        guard let row = try db.query("""
            SELECT host, port, username, auth_method, credentials, host_key_fingerprint FROM servers WHERE id = $1
            """, [id]).first else { throw APIError.notFound("server") }
        let creds = try Credentials(sealed: row.bytea("credentials") ?? [], box: ctx.app.box)
        let auth: SSHAuth
        if row.string("auth_method") == "key", let key = creds.privateKey {
            auth = .key(privateKey: key, passphrase: creds.passphrase)
        } else if let pw = creds.password {
            auth = .password(pw)
        } else {
            throw APIError.conflict("The server has no credentials for its auth method; set them first.")
        }
        let r = SSHProbe.test(host: row.string("host"), port: row.int("port"), username: row.string("username"), auth: auth,
                              pinnedFingerprint: row["host_key_fingerprint"], connectTimeout: 10)
        if r.ok, row["host_key_fingerprint"] == nil, let fp = r.fingerprint, let alg = r.algorithm {
            try Queue.pinHostKey(db, serverID: id, algorithm: alg, fingerprint: fp)
        }
        let pinned = try db.query("SELECT host_key_algorithm, host_key_fingerprint, \(tsSQL("host_key_trusted_at", as: "trusted")) FROM servers WHERE id = $1", [id]).first
        var hostKey: JSON = .null
        if let fp = r.fingerprint {
            var m: [(String, JSON)] = [("algorithm", .optString(r.algorithm)), ("fingerprint_sha256", .string(fp))]
            m.append(("trusted_at", pinned?["host_key_fingerprint"] == fp ? ts(pinned!, "trusted") : .null))
            hostKey = .object(m)
        }
        var out: [(String, JSON)] = [("ok", .bool(r.ok)), ("latency_ms", .double((r.latencyMs * 10).rounded() / 10)), ("host_key", hostKey)]
        if let e = r.error { out.append(("error", .string(e))) }
        if let f = r.failure { out.append(("failure", .string(f.rawValue))) }
        try ctx.audit("server.test", target: "server:\(id)", detail: .object([("ok", .bool(r.ok))]))
        return Reply.json(200, .object(out))
    }
}
