// SPDX-License-Identifier: MIT
// What a handler sees: the request, the caller, the database, and helpers to
// read the query and body and to write JSON.

import Foundation
public import TsubameCore
public import TsubameFastCGI
public import TsubamePostgres
import TsubameCrypto

/// Per-request state handed to route handlers.
public struct Context {
    public let request: HTTPRequest
    public let app: App
    /// Path parameters by name (ids already parsed).
    public var ids: [String: Int64] = [:]
    public var principal: Principal?

    var db: PGConnection { get throws { try app.database() } }

    /// The caller; 401 when nobody signed in.
    func caller() throws -> Principal {
        guard let p = principal else { throw APIError.unauthorized() }
        return p
    }

    /// The caller, if their role is at least `role`; 403 otherwise.
    func require(_ role: Role) throws -> Principal {
        let p = try caller()
        guard p.role >= role else {
            throw APIError.forbidden("This needs the \(role.rawValue) role; you are \(p.role.rawValue).")
        }
        return p
    }

    func id(_ name: String = "id") -> Int64 { ids[name] ?? 0 }

    /// The body as JSON; 415 for another content type, 400 when it does not parse.
    func json() throws -> JSON {
        let type = (request.header("Content-Type") ?? "").split(separator: ";").first.map {
            $0.trimmingCharacters(in: .whitespaces).lowercased()
        } ?? ""
        guard type == "application/json" else { throw APIError.unsupportedMediaType }
        if request.bodyTooLarge { throw APIError.tooLarge }
        do {
            return try JSON.parse(request.body)
        } catch let e as JSONParseError {
            throw APIError.badRequest("The body is not valid JSON: \(e.description).")
        }
    }

    /// A JSON body that may be absent (an empty body counts as `{}`).
    func optionalJSON() throws -> JSON {
        if request.body.isEmpty, !request.bodyTooLarge { return .object([]) }
        return try json()
    }

    /// Query parameters; 400 when the query is not well-formed.
    func query() throws -> [String: String] {
        var out: [String: String] = [:]
        for part in request.query.split(separator: "&") where !part.isEmpty {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let k = Context.decode(String(kv[0])), let v = Context.decode(kv.count > 1 ? String(kv[1]) : "") else {
                throw APIError.badRequest("The query string is not valid percent-encoded UTF-8.")
            }
            if v.utf8.contains(0) { throw APIError.badRequest("Query parameter \(k) contains a NUL character.") }
            out[k] = v
        }
        return out
    }

    static func decode(_ s: String) -> String? {
        s.replacingOccurrences(of: "+", with: " ").removingPercentEncoding
    }

    /// Reads `limit` (1…200, default 50) and `cursor` (an opaque keyset position).
    func page(_ q: [String: String]) throws -> (limit: Int, after: Int64?) {
        var limit = 50
        if let l = q["limit"] {
            guard let n = Int(l), (1...200).contains(n) else { throw APIError.badRequest("limit must be a whole number from 1 to 200.") }
            limit = n
        }
        var after: Int64? = nil
        if let c = q["cursor"], !c.isEmpty {
            guard let n = Cursor.decode(c) else { throw APIError.badRequest("cursor is not one this server issued.") }
            after = n
        }
        return (limit, after)
    }

    /// Records a write in the audit log.
    func audit(_ action: String, target: String, detail: JSON = .object([])) throws {
        try db.query("""
            INSERT INTO audit_log (user_id, username, action, target, address, detail) VALUES ($1, $2, $3, $4, $5, $6::jsonb)
            """, [principal?.userID, principal?.username ?? "", action, target, request.remoteAddress, detail])
    }
}

/// Opaque keyset cursors: base64url of "v1:<id>".
enum Cursor {
    static func encode(_ id: Int64) -> String { Crypto.base64url(Array("v1:\(id)".utf8)) }
    static func decode(_ s: String) -> Int64? {
        var b64 = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b64.count % 4 != 0 { b64 += "=" }
        guard s.count <= 64, let d = Data(base64Encoded: b64), let text = String(data: d, encoding: .utf8), text.hasPrefix("v1:"),
              let n = Int64(text.dropFirst(3)), n >= 0 else { return nil }
        return n
    }
    /// A cursor of a list ordered by time, then id (executions with since/until): "v2:<id>:<created_at>", the time
    /// as PostgreSQL printed it in UTC with microseconds (2026-11-29T23:14:53.123456Z), so it compares exactly.
    static func encodeTimed(id: Int64, at: String) -> String { Crypto.base64url(Array("v2:\(id):\(at)".utf8)) }
    static func decodeTimed(_ s: String) -> (id: Int64, at: String)? {
        var b64 = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b64.count % 4 != 0 { b64 += "=" }
        guard s.count <= 96, let d = Data(base64Encoded: b64), let text = String(data: d, encoding: .utf8), text.hasPrefix("v2:") else { return nil }
        let parts = text.dropFirst(3).split(separator: ":", maxSplits: 1)
        guard parts.count == 2, let id = Int64(parts[0]), id >= 0 else { return nil }
        // YYYY-MM-DDTHH:MM:SS.ffffffZ, digits where digits go.
        let at = Array(parts[1].utf8), shape = Array("0000-00-00T00:00:00.000000Z".utf8)
        guard at.count == shape.count, zip(at, shape).allSatisfy({ $1 == 0x30 ? ($0 >= 0x30 && $0 <= 0x39) : $0 == $1 }) else { return nil }
        return (id, String(parts[1]))
    }
    /// The page of `rows` (fetched with limit+1) and the cursor for the next one.
    static func page<T>(_ rows: [T], limit: Int, id: (T) -> Int64) -> ([T], JSON) {
        if rows.count > limit { return (Array(rows.prefix(limit)), .string(encode(id(rows[limit - 1])))) }
        return (rows, .null)
    }
}

/// Response builders.
enum Reply {
    static func json(_ status: Int, _ body: JSON, headers: [(String, String)] = []) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "application/json"), ("Cache-Control", "no-store")] + headers,
                     body: body.encoded())
    }
    static func list(_ items: [JSON], next: JSON) -> HTTPResponse { json(200, .object([("items", .array(items)), ("next_cursor", next)])) }
    static func noContent(headers: [(String, String)] = []) -> HTTPResponse {
        HTTPResponse(status: 204, headers: [("Cache-Control", "no-store")] + headers)
    }
    static func problem(_ e: APIError, requestID: String) -> HTTPResponse {
        HTTPResponse(status: e.status, headers: [("Content-Type", "application/problem+json"), ("Cache-Control", "no-store")] + e.headers,
                     body: e.json.encoded())
    }
}

/// SQL LIKE pattern for a user's search text.
func likePattern(_ q: String) -> String {
    "%" + q.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_") + "%"
}

func ts(_ row: PGRow, _ column: String) -> JSON { JSON.optString(row[column]) }

/// Selects a timestamptz column as an RFC 3339 UTC string with milliseconds.
func tsSQL(_ expr: String, as name: String) -> String {
    "to_char(\(expr) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS \(name)"
}
