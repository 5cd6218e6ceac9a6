// SPDX-License-Identifier: MIT
// libpq behind a Swift class that owns the PGconn and every PGresult. Nothing
// of libpq leaves this file except through Swift value types.

public import Foundation
internal import CLibPQ
public import TsubameCore

/// A failure from PostgreSQL or from reaching it.
public struct PGError: Error, CustomStringConvertible, Sendable {
    /// The five-character SQLSTATE, when the server sent one.
    public let sqlState: String?
    public let message: String
    public let operation: String
    /// True when the connection itself is broken (server gone, network): retrying on a new connection may help.
    public let connectionLost: Bool

    public var description: String { "\(operation): \(message)" + (sqlState.map { " (SQLSTATE \($0))" } ?? "") }
    public var isUniqueViolation: Bool { sqlState == "23505" }
    public var isForeignKeyViolation: Bool { sqlState == "23503" }
    /// The server could not write a file because its disk (or the tablespace's) is full: `disk_full`, 53100.
    public var isDiskFull: Bool { sqlState == "53100" }
    /// The server's own message, without the severity prefix and the detail and hint lines.
    public var primaryMessage: String {
        var line = message.split(separator: "\n", maxSplits: 1).first.map(String.init) ?? message
        for prefix in ["ERROR:", "FATAL:", "PANIC:"] where line.hasPrefix(prefix) {
            line = line.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces)
        }
        return line
    }
}

/// A value bound to a `$n` parameter, sent in text format, or in binary format when `pgBinary` is not nil.
public protocol PGParameter {
    var pgText: String? { get }
    /// The value in PostgreSQL's binary format for the parameter's type (the statement must fix that type with a cast).
    var pgBinary: [UInt8]? { get }
}
extension PGParameter { public var pgBinary: [UInt8]? { nil } }
extension String: PGParameter { public var pgText: String? { self } }
extension Int: PGParameter { public var pgText: String? { String(self) } }
extension Int64: PGParameter { public var pgText: String? { String(self) } }
extension Int32: PGParameter { public var pgText: String? { String(self) } }
extension Bool: PGParameter { public var pgText: String? { self ? "t" : "f" } }
extension Double: PGParameter { public var pgText: String? { String(self) } }
extension Optional: PGParameter where Wrapped: PGParameter { public var pgText: String? { self?.pgText } }
extension Date: PGParameter { public var pgText: String? { Timestamp.format(self) } }
/// Binary data, sent as a bytea hex literal.
public struct Bytea: PGParameter, Sendable, Equatable {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var pgText: String? { "\\x" + Bytea.hex(bytes) }
    static let digits = Array("0123456789abcdef".utf8)
    static func hex(_ bytes: [UInt8]) -> String {
        var out = [UInt8](repeating: 0, count: bytes.count * 2)
        for (i, b) in bytes.enumerated() { out[2 * i] = digits[Int(b >> 4)]; out[2 * i + 1] = digits[Int(b & 15)] }
        return String(decoding: out, as: UTF8.self)
    }
}
/// A text[] parameter.
public struct TextArray: PGParameter, Sendable {
    public let items: [String]
    public init(_ items: [String]) { self.items = items }
    public var pgText: String? {
        // Byte-level escaping: log chunks of 64 KiB pass through here, so no Foundation string searching.
        var out: [UInt8] = [0x7B]
        out.reserveCapacity(items.reduce(2) { $0 + $1.utf8.count + 3 })
        for (i, item) in items.enumerated() {
            if i > 0 { out.append(0x2C) }
            out.append(0x22)
            for b in item.utf8 {
                if b == 0x22 || b == 0x5C { out.append(0x5C) }
                out.append(b)
            }
            out.append(0x22)
        }
        out.append(0x7D)
        return String(decoding: out, as: UTF8.self)
    }
}
/// A text[] parameter of UTF-8 byte strings, sent in binary format: no escaping here, no parsing in the server.
/// Each item must be valid UTF-8 without NUL (the server checks and refuses the statement otherwise).
/// The statement must cast it: `$n::text[]`.
public struct BinaryTextArray: PGParameter, Sendable {
    public let items: [[UInt8]]
    public init(_ items: [[UInt8]]) { self.items = items }
    public var pgText: String? { TextArray(items.map { String(decoding: $0, as: UTF8.self) }).pgText }
    public var pgBinary: [UInt8]? {
        // array_recv: ndim, has-nulls flag, element type (text = 25), then length and lower bound per dimension,
        // then each element as length + bytes. Integers are big-endian.
        var out: [UInt8] = []
        out.reserveCapacity(20 + items.reduce(0) { $0 + 4 + $1.count })
        func int32(_ v: Int32) { withUnsafeBytes(of: v.bigEndian) { out.append(contentsOf: $0) } }
        int32(1); int32(0); int32(25); int32(Int32(items.count)); int32(1)
        for item in items {
            int32(Int32(item.count))
            out.append(contentsOf: item)
        }
        return out
    }
}
/// A bigint[] parameter.
public struct Int64Array: PGParameter, Sendable {
    public let items: [Int64]
    public init(_ items: [Int64]) { self.items = items }
    public var pgText: String? { "{" + items.map(String.init).joined(separator: ",") + "}" }
}
extension JSON: PGParameter { public var pgText: String? { text } }

/// One row of a result, values in text format.
public struct PGRow: Sendable {
    let columns: [String: Int]
    public let values: [String?]

    public subscript(_ name: String) -> String? {
        guard let i = columns[name] else { preconditionFailure("no column \(name) in result") }
        return values[i]
    }
    public func string(_ name: String) -> String { self[name] ?? "" }
    public func int64(_ name: String) -> Int64 { Int64(self[name] ?? "") ?? 0 }
    public func optInt64(_ name: String) -> Int64? { self[name].flatMap { Int64($0) } }
    public func int(_ name: String) -> Int { Int(self[name] ?? "") ?? 0 }
    public func bool(_ name: String) -> Bool { self[name] == "t" }
    /// A column produced as JSON text (e.g. `to_json(tags)`).
    /// A column produced as JSON text by PostgreSQL (e.g. `to_json(tags)`), passed through without re-parsing.
    public func json(_ name: String) -> JSON { self[name].map(JSON.raw) ?? .null }
    public func bytea(_ name: String) -> [UInt8]? { self[name].flatMap(PGRow.decodeHex) }

    static func decodeHex(_ s: String) -> [UInt8]? {
        guard s.hasPrefix("\\x") else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity((s.utf8.count - 2) / 2)
        var hi: UInt8? = nil
        for c in s.utf8.dropFirst(2) {
            let v: UInt8
            switch c {
            case 0x30...0x39: v = c - 0x30
            case 0x61...0x66: v = c - 0x61 + 10
            case 0x41...0x46: v = c - 0x41 + 10
            default: return nil
            }
            if let h = hi { out.append(h << 4 | v); hi = nil } else { hi = v }
        }
        return out
    }
}

/// A connection owned by one thread at a time. Not thread-safe, by design (libpq's rule).
public final class PGConnection: @unchecked Sendable {
    private var conn: OpaquePointer?
    public let conninfo: String
    private var prepared: [String: String] = [:]
    private var transactionDepth = 0
    private var listening: Set<String> = []

    /// Session settings (`SET name = 'value'`) made on every (re)connection.
    public let sessionSettings: [(name: String, value: String)]

    /// Connects; throws a PGError naming the problem (without the password). `settings` are set on this connection
    /// and again on each reconnection (names are plain identifiers, values simple words such as `1500ms`).
    public init(_ conninfo: String, settings: [(name: String, value: String)] = []) throws {
        precondition(settings.allSatisfy { s in
            s.name.allSatisfy { $0.isLetter || $0 == "_" } && s.value.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" }
        }, "bad session setting")
        self.conninfo = conninfo
        sessionSettings = settings
        try connect()
    }

    deinit { if let c = conn { PQfinish(c) } }

    private func connect() throws {
        if let c = conn { PQfinish(c); conn = nil }
        prepared = [:]
        transactionDepth = 0
        let c = PQconnectdb(conninfo)
        conn = c
        guard let c, PQstatus(c) == CONNECTION_OK else {
            let msg = c.map { String(cString: PQerrorMessage($0)) } ?? "out of memory"
            throw PGError(sqlState: nil, message: msg.trimmingCharacters(in: .whitespacesAndNewlines), operation: "connect", connectionLost: true)
        }
        _ = try execute("SET TIME ZONE 'UTC'")
        for (name, value) in sessionSettings { _ = try execute("SET \(name) = '\(value)'") }
    }

    public var isOK: Bool { conn.map { PQstatus($0) == CONNECTION_OK } ?? false }

    /// Outside a transaction: notices a connection the server closed (restart, terminate) and opens a new one,
    /// so the caller never sees the stale connection. An idle connection (no LISTEN here) has nothing to say:
    /// anything readable on its socket is the server's goodbye (a FATAL message or EOF).
    private func refreshIfStale() throws {
        // A listening connection receives notifications at any time: it is checked by `notifications` instead.
        guard transactionDepth == 0, listening.isEmpty else { return }
        if let c = conn, PQstatus(c) == CONNECTION_OK {
            var p = pollfd(fd: PQsocket(c), events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 0) == 0 { return }
        }
        Log.info("reconnecting to PostgreSQL")
        try connect()
    }

    /// Re-establishes a broken connection. Safe to call at any time outside a transaction.
    public func reconnectIfNeeded() throws { if !isOK { try connect() } }

    /// Runs one or more statements without parameters (PQexec), e.g. a migration file.
    @discardableResult
    public func execute(_ sql: String) throws -> [PGRow] {
        guard let c = conn else { throw lost("execute") }
        let r = PQexec(c, sql)
        return try consume(r, operation: "execute")
    }

    /// Runs one parameterised statement, prepared once per connection and reused.
    @discardableResult
    public func query(_ sql: String, _ params: [any PGParameter] = []) throws -> [PGRow] {
        try refreshIfStale()
        guard let c = conn else { throw lost("query") }
        let name: String
        if let n = prepared[sql] {
            name = n
        } else {
            name = "s\(prepared.count + 1)"
            let r = PQprepare(c, name, sql, Int32(params.count), nil)
            _ = try consume(r, operation: "prepare")
            prepared[sql] = name
        }
        // Text values as NUL-terminated copies; binary values are passed from their own arrays (no copy here).
        var texts: [UnsafeMutablePointer<CChar>?] = []
        var binaries: [[UInt8]] = []
        var lengths: [Int32] = []
        var formats: [Int32] = []
        defer { texts.forEach { free($0) } }
        for p in params {
            if let bin = p.pgBinary {
                texts.append(nil)
                binaries.append(bin)
                lengths.append(Int32(bin.count))
                formats.append(1)
            } else {
                texts.append(p.pgText.map { strdup($0) } ?? nil)
                lengths.append(0)
                formats.append(0)
            }
        }
        let r = PGConnection.withBinaryPointers(binaries, [], 0) { binPointers -> OpaquePointer? in
            var next = 0
            var values: [UnsafePointer<CChar>?] = []
            values.reserveCapacity(params.count)
            for (i, t) in texts.enumerated() {
                if formats[i] == 1 { values.append(binPointers[next]); next += 1 } else { values.append(UnsafePointer(t)) }
            }
            return values.withUnsafeBufferPointer { buf in
                lengths.withUnsafeBufferPointer { lens in
                    formats.withUnsafeBufferPointer { fmts in
                        PQexecPrepared(c, name, Int32(params.count), buf.baseAddress, binaries.isEmpty ? nil : lens.baseAddress,
                                       binaries.isEmpty ? nil : fmts.baseAddress, 0)
                    }
                }
            }
        }
        return try consume(r, operation: "query")
    }

    nonisolated(unsafe) private static let emptyValue: UnsafeMutablePointer<CChar> = {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: 1)
        p.pointee = 0
        return p
    }()

    /// Calls `body` with a pointer to each array's bytes, valid for the duration of the call.
    private static func withBinaryPointers<R>(_ arrays: [[UInt8]], _ done: [UnsafePointer<CChar>?], _ i: Int,
                                              _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
        if i == arrays.count { return body(done) }
        return arrays[i].withUnsafeBytes { raw in
            // An empty value still needs a pointer: NULL would mean SQL NULL.
            withBinaryPointers(arrays, done + [UnsafePointer(raw.baseAddress?.assumingMemoryBound(to: CChar.self) ?? UnsafePointer(emptyValue))], i + 1, body)
        }
    }

    /// Runs `body` in a transaction: committed when it returns, rolled back when it throws.
    /// Inside another transaction, `body` simply runs in it (an error rolls back the outer one).
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        if transactionDepth > 0 { return try body() }
        try refreshIfStale()
        try execute("BEGIN")
        transactionDepth += 1
        do {
            let v = try body()
            transactionDepth -= 1
            try execute("COMMIT")
            return v
        } catch {
            transactionDepth -= 1
            if isOK { _ = try? execute("ROLLBACK") }
            throw error
        }
    }

    /// Runs `body` under a savepoint of the open transaction: when it throws, only what it did is rolled back and the
    /// transaction can go on. Outside a transaction it simply runs `body`.
    public func savepoint<T>(_ body: () throws -> T) throws -> T {
        guard transactionDepth > 0 else { return try body() }
        try execute("SAVEPOINT tsubame_savepoint")
        do {
            let v = try body()
            try execute("RELEASE SAVEPOINT tsubame_savepoint")
            return v
        } catch {
            if isOK { _ = try? execute("ROLLBACK TO SAVEPOINT tsubame_savepoint") }
            throw error
        }
    }

    /// Subscribes this connection to a NOTIFY channel (a plain identifier).
    public func listen(_ channel: String) throws {
        precondition(channel.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" }, "bad channel name")
        listening.insert(channel)
        try execute("LISTEN \(channel)")
    }

    /// Waits up to `timeout` seconds for notifications; returns (channel, payload) pairs, possibly none.
    /// Throws when the connection broke (the caller reconnects, re-listens and polls, since notifications may be lost).
    public func notifications(timeout: Double) throws -> [(String, String)] {
        guard let c = conn else { throw lost("notifications") }
        var out = drainNotifications(c)
        if !out.isEmpty { return out }
        var p = pollfd(fd: PQsocket(c), events: Int16(POLLIN), revents: 0)
        let rc = poll(&p, 1, Int32(max(0, timeout) * 1000))
        if rc > 0 {
            guard PQconsumeInput(c) == 1 else {
                throw PGError(sqlState: nil, message: String(cString: PQerrorMessage(c)), operation: "notifications", connectionLost: true)
            }
            out = drainNotifications(c)
        }
        if PQstatus(c) != CONNECTION_OK { throw lost("notifications") }
        return out
    }

    /// The connection's socket, for callers that poll it together with other descriptors (-1 when closed).
    public var socket: Int32 { conn.map { PQsocket($0) } ?? -1 }

    /// Reads what arrived on the socket without waiting and returns the notifications received so far.
    /// Throws when the connection broke.
    public func takeNotifications() throws -> [(String, String)] {
        guard let c = conn else { throw lost("notifications") }
        guard PQconsumeInput(c) == 1, PQstatus(c) == CONNECTION_OK else {
            throw PGError(sqlState: nil, message: String(cString: PQerrorMessage(c)), operation: "notifications", connectionLost: true)
        }
        return drainNotifications(c)
    }

    private func drainNotifications(_ c: OpaquePointer) -> [(String, String)] {
        var out: [(String, String)] = []
        while let n = PQnotifies(c) {
            out.append((String(cString: n.pointee.relname), String(cString: n.pointee.extra)))
            PQfreemem(n)
        }
        return out
    }

    /// Reconnects and subscribes again to every channel this connection listened on.
    public func reconnectAndListen() throws {
        let channels = listening
        try connect()
        for ch in channels { try execute("LISTEN \(ch)") }
    }

    private func lost(_ op: String) -> PGError {
        PGError(sqlState: nil, message: "no connection to PostgreSQL", operation: op, connectionLost: true)
    }

    /// The one place a PGresult becomes rows or an error; it always clears the result.
    private func consume(_ r: OpaquePointer?, operation: String) throws -> [PGRow] {
        guard let r else {
            let msg = conn.map { String(cString: PQerrorMessage($0)) } ?? "no result"
            throw PGError(sqlState: nil, message: msg, operation: operation, connectionLost: !isOK)
        }
        defer { PQclear(r) }
        switch PQresultStatus(r) {
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            return []
        case PGRES_TUPLES_OK:
            let n = Int(PQntuples(r)), m = Int(PQnfields(r))
            var columns: [String: Int] = [:]
            for j in 0..<m { columns[String(cString: PQfname(r, Int32(j)))] = j }
            var rows: [PGRow] = []
            rows.reserveCapacity(n)
            for i in 0..<n {
                var values: [String?] = []
                values.reserveCapacity(m)
                for j in 0..<m {
                    if PQgetisnull(r, Int32(i), Int32(j)) == 1 { values.append(nil) } else {
                        values.append(String(cString: PQgetvalue(r, Int32(i), Int32(j))))
                    }
                }
                rows.append(PGRow(columns: columns, values: values))
            }
            return rows
        default:
            let state = PQresultErrorField(r, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            let msg = String(cString: PQresultErrorMessage(r)).trimmingCharacters(in: .whitespacesAndNewlines)
            if !isOK { prepared = [:] }
            // A failed prepare leaves nothing behind; a statement that vanished with the session is re-prepared next time.
            if state == "26000" { prepared = [:] }
            throw PGError(sqlState: state, message: msg, operation: operation, connectionLost: !isOK)
        }
    }
}
