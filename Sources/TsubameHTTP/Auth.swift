// SPDX-License-Identifier: MIT
// Sign-in, sessions (HttpOnly SameSite=Strict cookie, server-side rows),
// bearer API tokens, and sign-in throttling.

import Foundation
import TsubameCore
import TsubameCrypto
import TsubameFastCGI
import TsubamePostgres

enum Auth {
    static let cookieName = "tsubame_session"

    /// The caller from `Authorization: Bearer` or the session cookie; nil when neither is valid.
    static func authenticate(_ ctx: Context) throws -> Principal? {
        let db = try ctx.db
        if let authz = ctx.request.header("Authorization") {
            guard authz.hasPrefix("Bearer ") else { return nil }
            let token = String(authz.dropFirst(7)).trimmingCharacters(in: .whitespaces)
            let rows = try db.query("""
                SELECT t.id AS token_id, u.id, u.username, u.role,
                       t.last_used_at IS NULL OR t.last_used_at < now() - interval '60 seconds' AS stale
                FROM api_tokens t JOIN users u ON u.id = t.user_id
                WHERE t.token_hash = $1 AND NOT u.disabled
                """, [Bytea(Crypto.sha256(Array(token.utf8)))])
            guard let row = rows.first, let role = Role(rawValue: row.string("role")) else { return nil }
            if row.bool("stale") { try db.query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", [row.int64("token_id")]) }
            return Principal(userID: row.int64("id"), username: row.string("username"), role: role, tokenID: row.int64("token_id"))
        }
        guard let token = cookie(ctx.request, cookieName) else { return nil }
        let rows = try db.query("""
            SELECT s.id AS session_id, s.csrf_token, u.id, u.username, u.role,
                   s.last_seen_at < now() - interval '60 seconds' AS stale
            FROM sessions s JOIN users u ON u.id = s.user_id
            WHERE s.token_hash = $1 AND s.expires_at > now() AND NOT u.disabled
            """, [Bytea(Crypto.sha256(Array(token.utf8)))])
        guard let row = rows.first, let role = Role(rawValue: row.string("role")) else { return nil }
        if row.bool("stale") {
            // Idle expiry: each use (at most once a minute) pushes the end out again.
            try db.query("UPDATE sessions SET last_seen_at = now(), expires_at = now() + make_interval(hours => $2) WHERE id = $1",
                         [row.int64("session_id"), ctx.app.settings.sessionHours])
        }
        return Principal(userID: row.int64("id"), username: row.string("username"), role: role,
                         sessionID: row.int64("session_id"), csrfToken: row.string("csrf_token"))
    }

    static func cookie(_ request: HTTPRequest, _ name: String) -> String? {
        guard let header = request.header("Cookie") else { return nil }
        for part in header.split(separator: ";") {
            let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0] == name { return String(kv[1]) }
        }
        return nil
    }

    static func login(_ ctx: Context) throws -> HTTPResponse {
        var body = try BodyReader(try ctx.json())
        let username = body.string("username", .required, min: 1, max: 200)
        let password = body.string("password", .required, min: 1, max: 1024)
        try body.finish()
        guard let username, let password else { throw APIError.validation([]) }
        let db = try ctx.db
        let s = ctx.app.settings
        let address = ctx.request.remoteAddress
        try throttle(db, username: username, address: address, settings: s)
        let rows = try db.query("SELECT id, username, role, password_hash, disabled FROM users WHERE lower(username) = lower($1)", [username])
        let row = rows.first
        // Verify against a decoy when the user does not exist, so both failures take the same time.
        let ok = s.hasher.verify(password, against: row?.string("password_hash") ?? PasswordHasher.decoy)
        guard let row, ok, !row.bool("disabled") else {
            try db.query("INSERT INTO login_failures (address, username) VALUES ($1, $2)", [address, username])
            try db.query("INSERT INTO audit_log (username, action, target, address) VALUES ($1, 'auth.login_failed', $1, $2)", [username, address])
            throw APIError.unauthorized("Wrong user name or password.")
        }
        let token = Crypto.randomToken(), csrf = Crypto.randomToken()
        let userID = row.int64("id")
        try db.transaction {
            try db.query("""
                INSERT INTO sessions (user_id, token_hash, csrf_token, address, expires_at)
                VALUES ($1, $2, $3, $4, now() + make_interval(hours => $5))
                """, [userID, Bytea(Crypto.sha256(Array(token.utf8))), csrf, address, s.sessionHours])
            try db.query("DELETE FROM login_failures WHERE lower(username) = lower($1)", [username])
            try db.query("DELETE FROM sessions WHERE user_id = $1 AND expires_at < now()", [userID])
            try db.query("INSERT INTO audit_log (user_id, username, action, target, address) VALUES ($1, $2, 'auth.login', $2, $3)",
                         [userID, row.string("username"), address])
        }
        var cookie = "\(cookieName)=\(token); Path=/; HttpOnly; SameSite=Strict; Max-Age=\(s.sessionHours * 3600)"
        if s.cookieSecure { cookie += "; Secure" }
        let user = try Users.fetch(ctx, userID)
        return Reply.json(200, .object([("user", Users.json(user)), ("csrf_token", .string(csrf))]), headers: [("Set-Cookie", cookie)])
    }

    /// 429 when this user name or this address failed too often in the window.
    static func throttle(_ db: PGConnection, username: String, address: String, settings s: AppSettings) throws {
        let rows = try db.query("""
            SELECT (SELECT count(*) FROM login_failures WHERE lower(username) = lower($1) AND at > now() - make_interval(secs => $3)) AS by_user,
                   (SELECT count(*) FROM login_failures WHERE address = $2 AND at > now() - make_interval(secs => $3)) AS by_address,
                   (SELECT ceil(extract(epoch FROM min(at) + make_interval(secs => $3) - now()))::int FROM login_failures
                     WHERE (lower(username) = lower($1) OR address = $2) AND at > now() - make_interval(secs => $3)) AS retry
            """, [username, address, s.loginWindowSeconds])
        guard let r = rows.first else { return }
        if r.int("by_user") >= s.loginMaxFailures || r.int("by_address") >= s.loginMaxFailures * 4 {
            let retry = max(1, r.int("retry"))
            throw APIError.tooManyRequests(retryAfter: retry,
                                           detail: "Too many failed sign-ins; try again in \(retry) seconds.")
        }
    }

    static func logout(_ ctx: Context) throws -> HTTPResponse {
        let p = try ctx.caller()
        try BodyReader(try ctx.optionalJSON()).finish()
        if let sid = p.sessionID { try ctx.db.query("DELETE FROM sessions WHERE id = $1", [sid]) }
        try ctx.audit("auth.logout", target: p.username)
        var cookie = "\(cookieName)=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        if ctx.app.settings.cookieSecure { cookie += "; Secure" }
        return Reply.noContent(headers: [("Set-Cookie", cookie)])
    }

    static func me(_ ctx: Context) throws -> HTTPResponse {
        let p = try ctx.caller()
        // Bearer callers need no CSRF token; they get null.
        return Reply.json(200, .object([("user", Users.json(try Users.fetch(ctx, p.userID))), ("csrf_token", JSON.optString(p.csrfToken))]))
    }
}
