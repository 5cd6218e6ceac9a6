// SPDX-License-Identifier: MIT
// Users (admin only) and API tokens (each user their own; admins all).

import Foundation
import TsubameCore
import TsubameCrypto
import TsubameFastCGI
import TsubamePostgres

enum Users {
    static let columns = "id, username, role, disabled, \(tsSQL("created_at", as: "created")), \(tsSQL("updated_at", as: "updated"))"
    static let usernamePattern = "^[A-Za-z0-9_.@-]+$"

    static func json(_ r: PGRow) -> JSON {
        .object([("id", .int(r.int64("id"))), ("username", .string(r.string("username"))), ("role", .string(r.string("role"))),
                 ("disabled", .bool(r.bool("disabled"))), ("created_at", ts(r, "created")), ("updated_at", ts(r, "updated"))])
    }

    static func list(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.admin)
        let (limit, after) = try ctx.page(try ctx.query())
        let rows = try ctx.db.query("SELECT \(columns) FROM users WHERE id > $1 ORDER BY id LIMIT $2", [after ?? 0, limit + 1])
        let (page, next) = Cursor.page(rows, limit: limit) { $0.int64("id") }
        return Reply.list(page.map(json), next: next)
    }

    static func fetch(_ ctx: Context, _ id: Int64) throws -> PGRow {
        guard let row = try ctx.db.query("SELECT \(columns) FROM users WHERE id = $1", [id]).first else { throw APIError.notFound("user") }
        return row
    }

    static func get(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.admin)
        return Reply.json(200, json(try fetch(ctx, ctx.id())))
    }

    static func create(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.admin)
        var b = try BodyReader(try ctx.json())
        let username = b.string("username", .required, min: 1, max: 64, pattern: usernamePattern,
                                patternHelp: "may use letters, digits and _ . @ - only")
        let password = b.string("password", .required, min: 10, max: 1024)
        let role = b.oneOf("role", .required, Role.allCases.map(\.rawValue))
        try b.finish()
        guard let username, let password, let role else { throw APIError.validation([]) }
        let hash = try ctx.app.settings.hasher.hash(password)
        let db = try ctx.db
        let row = try db.transaction { () throws -> PGRow in
            do {
                let r = try db.query("INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) RETURNING \(columns)",
                                     [username, hash, role])[0]
                try ctx.audit("user.create", target: "user:\(r.int64("id"))", detail: .object([("username", .string(username)), ("role", .string(role))]))
                return r
            } catch let e as PGError where e.isUniqueViolation {
                throw APIError.conflict("A user named \(username) already exists.")
            }
        }
        return Reply.json(201, json(row))
    }

    static func update(_ ctx: Context) throws -> HTTPResponse {
        let me = try ctx.require(.admin)
        let id = ctx.id()
        var b = try BodyReader(try ctx.json())
        let password = b.string("password", .optional, min: 10, max: 1024)
        let role = b.oneOf("role", .optional, Role.allCases.map(\.rawValue))
        let disabled = b.bool("disabled", .optional)
        try b.finish()
        let hash = try password.map { try ctx.app.settings.hasher.hash($0) }
        let db = try ctx.db
        let row = try db.transaction { () throws -> PGRow in
            guard let current = try db.query("SELECT id, role, disabled FROM users WHERE id = $1 FOR UPDATE", [id]).first else {
                throw APIError.notFound("user")
            }
            let losesAdmin = current.string("role") == "admin" && !current.bool("disabled")
                && ((role != nil && role != "admin") || disabled == true)
            if losesAdmin { try requireAnotherAdmin(db, besides: id) }
            if id == me.userID, disabled == true { throw APIError.conflict("You cannot disable yourself.") }
            let r = try db.query("""
                UPDATE users SET password_hash = coalesce($2, password_hash), role = coalesce($3, role),
                       disabled = coalesce($4, disabled), updated_at = now()
                WHERE id = $1 RETURNING \(columns)
                """, [id, hash, role, disabled])[0]
            if disabled == true || password != nil {
                // A disabled user, or one whose password changed, loses every session; a disabled one its tokens too.
                try db.query("DELETE FROM sessions WHERE user_id = $1 AND ($2 OR id IS DISTINCT FROM $3)", [id, disabled == true, me.sessionID])
            }
            if disabled == true { try db.query("DELETE FROM api_tokens WHERE user_id = $1", [id]) }
            var detail: [(String, JSON)] = []
            if let role { detail.append(("role", .string(role))) }
            if let disabled { detail.append(("disabled", .bool(disabled))) }
            if password != nil { detail.append(("password", "changed")) }
            try ctx.audit("user.update", target: "user:\(id)", detail: .object(detail))
            return r
        }
        return Reply.json(200, json(row))
    }

    static func requireAnotherAdmin(_ db: PGConnection, besides id: Int64) throws {
        let n = try db.query("SELECT count(*) AS n FROM users WHERE role = 'admin' AND NOT disabled AND id <> $1", [id]).first?.int("n") ?? 0
        if n == 0 { throw APIError.conflict("This is the last active admin; make another user admin first.") }
    }

    static func delete(_ ctx: Context) throws -> HTTPResponse {
        let me = try ctx.require(.admin)
        let id = ctx.id()
        if id == me.userID { throw APIError.conflict("You cannot delete yourself.") }
        let db = try ctx.db
        try db.transaction {
            guard let current = try db.query("SELECT role, disabled, username FROM users WHERE id = $1 FOR UPDATE", [id]).first else {
                throw APIError.notFound("user")
            }
            if current.string("role") == "admin" && !current.bool("disabled") { try requireAnotherAdmin(db, besides: id) }
            try db.query("DELETE FROM users WHERE id = $1", [id])
            try ctx.audit("user.delete", target: "user:\(id)", detail: .object([("username", .string(current.string("username")))]))
        }
        return Reply.noContent()
    }
}

enum Tokens {
    static let columns = """
        t.id, t.name, t.user_id, u.username, \(tsSQL("t.created_at", as: "created")), \(tsSQL("t.last_used_at", as: "last_used"))
        """

    static func json(_ r: PGRow) -> JSON {
        .object([("id", .int(r.int64("id"))), ("name", .string(r.string("name"))), ("user_id", .int(r.int64("user_id"))),
                 ("username", .string(r.string("username"))), ("created_at", ts(r, "created")), ("last_used_at", ts(r, "last_used"))])
    }

    static func list(_ ctx: Context) throws -> HTTPResponse {
        let p = try ctx.caller()
        let (limit, after) = try ctx.page(try ctx.query())
        let rows = try ctx.db.query("""
            SELECT \(columns) FROM api_tokens t JOIN users u ON u.id = t.user_id
            WHERE t.id > $1 AND ($2 OR t.user_id = $3) ORDER BY t.id LIMIT $4
            """, [after ?? 0, p.role == .admin, p.userID, limit + 1])
        let (page, next) = Cursor.page(rows, limit: limit) { $0.int64("id") }
        return Reply.list(page.map(json), next: next)
    }

    static func create(_ ctx: Context) throws -> HTTPResponse {
        let p = try ctx.caller()
        var b = try BodyReader(try ctx.json())
        let name = b.string("name", .required, min: 1, max: 100)
        try b.finish()
        guard let name else { throw APIError.validation([]) }
        let token = "tsb_" + Crypto.randomToken()
        let db = try ctx.db
        let row = try db.transaction { () throws -> PGRow in
            let id = try db.query("INSERT INTO api_tokens (user_id, name, token_hash) VALUES ($1, $2, $3) RETURNING id",
                                  [p.userID, name, Bytea(Crypto.sha256(Array(token.utf8)))])[0].int64("id")
            try ctx.audit("token.create", target: "token:\(id)", detail: .object([("name", .string(name))]))
            return try db.query("SELECT \(columns) FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1", [id])[0]
        }
        guard case var .object(members) = json(row) else { throw APIError.internal }
        members.insert(("token", .string(token)), at: 2)
        return Reply.json(201, .object(members))
    }

    static func delete(_ ctx: Context) throws -> HTTPResponse {
        let p = try ctx.caller()
        let id = ctx.id()
        let db = try ctx.db
        try db.transaction {
            let rows = try db.query("DELETE FROM api_tokens WHERE id = $1 AND ($2 OR user_id = $3) RETURNING name", [id, p.role == .admin, p.userID])
            guard !rows.isEmpty else { throw APIError.notFound("token") }
            try ctx.audit("token.delete", target: "token:\(id)")
        }
        return Reply.noContent()
    }
}

enum Audit {
    static func list(_ ctx: Context) throws -> HTTPResponse {
        _ = try ctx.require(.admin)
        let (limit, after) = try ctx.page(try ctx.query())
        let rows = try ctx.db.query("""
            SELECT id, \(tsSQL("at", as: "at_text")), user_id, username, action, target, address, detail::text AS detail
            FROM audit_log WHERE ($1 = 0 OR id < $1) ORDER BY id DESC LIMIT $2
            """, [after ?? 0, limit + 1])
        let (page, next) = Cursor.page(rows, limit: limit) { $0.int64("id") }
        return Reply.list(page.map { r in
            .object([("id", .int(r.int64("id"))), ("at", ts(r, "at_text")), ("user_id", r.optInt64("user_id").map(JSON.int) ?? .null),
                     ("username", .string(r.string("username"))), ("action", .string(r.string("action"))),
                     ("target", .string(r.string("target"))), ("address", .string(r.string("address"))), ("detail", r.json("detail"))])
        }, next: next)
    }
}
