// SPDX-License-Identifier: MIT
// A strict JSON value, parser and encoder. Strict means: UTF-8 only, RFC 8259
// grammar only, a nesting limit, no duplicate keys, numbers kept as their text
// so 64-bit ids never pass through a Double.

public import Foundation

/// A JSON document. Objects keep their key order.
public enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    /// The number's literal text, already validated against the JSON grammar.
    case number(String)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])
    /// Already-encoded JSON text (e.g. a json column from PostgreSQL), written out verbatim.
    /// Only for output: the text must be valid JSON.
    case raw(String)

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case let (.raw(x), .raw(y)): return x == y
        case let (.raw(x), other), let (other, .raw(x)): return (try? JSON.parse(x)) == other
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y || Double(x) == Double(y)
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public static func int<I: BinaryInteger>(_ v: I) -> JSON { .number(String(v)) }
    public static func double(_ v: Double) -> JSON {
        v.isFinite ? .number(v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v)) : .null
    }
    public static func optString(_ s: String?) -> JSON { s.map(JSON.string) ?? .null }

    /// The value itself, with pre-encoded `.raw` text parsed (invalid text reads as null).
    public var resolved: JSON {
        if case let .raw(text) = self { return (try? JSON.parse(text)) ?? .null }
        return self
    }

    /// Member lookup on objects; nil otherwise.
    public subscript(key: String) -> JSON? {
        if case let .object(members) = resolved { return members.first(where: { $0.0 == key })?.1 }
        return nil
    }

    public var stringValue: String? { if case let .string(s) = resolved { return s }; return nil }
    public var boolValue: Bool? { if case let .bool(b) = resolved { return b }; return nil }
    public var arrayValue: [JSON]? { if case let .array(a) = resolved { return a }; return nil }
    public var objectValue: [(String, JSON)]? { if case let .object(o) = resolved { return o }; return nil }
    public var isNull: Bool { if case .null = resolved { return true }; return false }
    public var doubleValue: Double? { if case let .number(n) = resolved { return Double(n) }; return nil }

    /// The value as an exact integer, if it is a number without fraction that fits Int64.
    public var int64Value: Int64? {
        guard case let .number(text) = resolved else { return nil }
        if let v = Int64(text) { return v }
        // Accept 1.0 or 1e2 when they denote an exact integer in range.
        guard let d = Double(text), d == d.rounded(), abs(d) <= 9_007_199_254_740_992 else { return nil }
        return Int64(d)
    }

    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .number: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        case let .raw(text): return (try? JSON.parse(text))?.typeName ?? "raw"
        }
    }
}

/// Why a document could not be parsed.
public struct JSONParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public let offset: Int
    public var description: String { "\(message) at byte \(offset)" }
}

extension JSON {
    /// The deepest nesting accepted; deeper documents are rejected, not recursed into.
    public static let maxDepth = 64

    public static func parse(_ text: String) throws -> JSON { try parse(Array(text.utf8)) }

    public static func parse<C: Collection>(_ bytes: C) throws -> JSON where C.Element == UInt8 {
        var p = JSONParser(bytes: Array(bytes))
        return try p.parseDocument()
    }
}

struct JSONParser {
    let bytes: [UInt8]
    var i = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    func fail(_ message: String) -> JSONParseError { JSONParseError(message: message, offset: i) }

    mutating func parseDocument() throws -> JSON {
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw JSONParseError(message: "the body is not valid UTF-8", offset: 0)
        }
        skipSpace()
        if i == bytes.count { throw fail("the body is empty") }
        let v = try parseValue(depth: 0)
        skipSpace()
        if i != bytes.count { throw fail("unexpected text after the JSON value") }
        return v
    }

    mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    mutating func parseValue(depth: Int) throws -> JSON {
        guard depth < JSON.maxDepth else { throw fail("the JSON is nested more than \(JSON.maxDepth) levels deep") }
        guard i < bytes.count else { throw fail("unexpected end of JSON") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail("unexpected character")
        }
    }

    mutating func literal(_ word: String) throws {
        let w = Array(word.utf8)
        guard i + w.count <= bytes.count, Array(bytes[i..<i + w.count]) == w else { throw fail("invalid literal") }
        i += w.count
    }

    mutating func parseObject(depth: Int) throws -> JSON {
        i += 1
        var members: [(String, JSON)] = []
        var seen = Set<String>()
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object([]) }
        while true {
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
            let key = try parseString()
            guard seen.insert(key).inserted else { throw fail("duplicate member \"\(key)\"") }
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            i += 1
            skipSpace()
            members.append((key, try parseValue(depth: depth + 1)))
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end of JSON") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            throw fail("expected ',' or '}'")
        }
    }

    mutating func parseArray(depth: Int) throws -> JSON {
        i += 1
        var items: [JSON] = []
        skipSpace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array([]) }
        while true {
            skipSpace()
            items.append(try parseValue(depth: depth + 1))
            skipSpace()
            guard i < bytes.count else { throw fail("unexpected end of JSON") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            throw fail("expected ',' or ']'")
        }
    }

    mutating func parseNumber() throws -> JSON {
        let start = i
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        func digits() -> Int { let s = i; while i < bytes.count, (0x30...0x39).contains(bytes[i]) { i += 1 }; return i - s }
        guard i < bytes.count else { throw fail("invalid number") }
        if bytes[i] == UInt8(ascii: "0") { i += 1 } else if digits() == 0 { throw fail("invalid number") }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") { i += 1; if digits() == 0 { throw fail("invalid number") } }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            if digits() == 0 { throw fail("invalid number") }
        }
        return .number(String(decoding: bytes[start..<i], as: UTF8.self))
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw fail("invalid \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("invalid \\u escape")
            }
            v = v * 16 + d
            i += 1
        }
        return v
    }

    mutating func parseString() throws -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < bytes.count else { throw fail("unterminated string") }
            let c = bytes[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("control character in string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < bytes.count else { throw fail("unterminated string") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw fail("lone surrogate in \\u escape")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw fail("lone surrogate in \\u escape") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw fail("lone surrogate in \\u escape")
                }
                guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw fail("invalid escape")
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension JSON {
    /// Compact UTF-8 encoding.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(to: &out)
        return out
    }

    public var text: String { String(decoding: encoded(), as: UTF8.self) }

    func write(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: Array("null".utf8))
        case let .bool(b): out.append(contentsOf: Array((b ? "true" : "false").utf8))
        case let .number(n): out.append(contentsOf: Array(n.utf8))
        case let .string(s): JSON.writeString(s, to: &out)
        case let .raw(text): out.append(contentsOf: text.utf8)
        case let .array(items):
            out.append(UInt8(ascii: "["))
            for (k, v) in items.enumerated() {
                if k > 0 { out.append(UInt8(ascii: ",")) }
                v.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case let .object(members):
            out.append(UInt8(ascii: "{"))
            for (k, m) in members.enumerated() {
                if k > 0 { out.append(UInt8(ascii: ",")) }
                JSON.writeString(m.0, to: &out)
                out.append(UInt8(ascii: ":"))
                m.1.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static let hexDigits = Array("0123456789abcdef".utf8)

    static func writeString(_ s: String, to out: inout [UInt8]) {
        out.append(0x22)
        var s = s
        s.withUTF8 { bytes in
            // Fast path: runs of bytes that need no escaping are copied at once.
            var start = 0
            for (i, b) in bytes.enumerated() where b < 0x20 || b == 0x22 || b == 0x5C || b == 0x3C || b == 0x3E || b == 0x26 {
                if i > start { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<i])) }
                start = i + 1
                switch b {
                case 0x22: out.append(0x5C); out.append(0x22)
                case 0x5C: out.append(0x5C); out.append(0x5C)
                case 0x0A: out.append(0x5C); out.append(UInt8(ascii: "n"))
                case 0x0D: out.append(0x5C); out.append(UInt8(ascii: "r"))
                case 0x09: out.append(0x5C); out.append(UInt8(ascii: "t"))
                default:
                    // Control characters, and < > & so JSON is safe to embed anywhere.
                    out.append(contentsOf: [0x5C, 0x75, 0x30, 0x30, hexDigits[Int(b >> 4)], hexDigits[Int(b & 0xF)]])
                }
            }
            if start < bytes.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start...])) }
        }
        out.append(0x22)
    }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int) { self = .number(String(value)) }
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSON)...) { self = .object(elements) }
    public init(nilLiteral: ()) { self = .null }
}

/// RFC 3339 UTC timestamps with milliseconds, as the API prints them.
public enum Timestamp {
    public static func format(_ date: Date) -> String {
        let t = date.timeIntervalSince1970
        var secs = time_t(floor(t))
        var ms = Int(((t - floor(t)) * 1000).rounded())
        if ms >= 1000 { ms = 999 }
        var tmv = tm()
        gmtime_r(&secs, &tmv)
        var b = [UInt8](repeating: 0, count: 24)
        func put(_ v: Int, _ at: Int, _ width: Int) {
            var v = v
            for k in stride(from: at + width - 1, through: at, by: -1) { b[k] = UInt8(0x30 + v % 10); v /= 10 }
        }
        put(Int(tmv.tm_year) + 1900, 0, 4); b[4] = 0x2D; put(Int(tmv.tm_mon) + 1, 5, 2); b[7] = 0x2D; put(Int(tmv.tm_mday), 8, 2)
        b[10] = 0x54; put(Int(tmv.tm_hour), 11, 2); b[13] = 0x3A; put(Int(tmv.tm_min), 14, 2); b[16] = 0x3A; put(Int(tmv.tm_sec), 17, 2)
        b[19] = 0x2E; put(ms, 20, 3); b[23] = 0x5A
        return String(decoding: b, as: UTF8.self)
    }

    /// Parses an RFC 3339 date-time (`2026-11-29T23:14:53.123Z`, `…+09:00`), checking every field's range.
    public static func parse(_ text: String) -> Date? {
        let b = Array(text.utf8)
        guard b.count >= 20, b.count <= 40 else { return nil }
        func num(_ at: Int, _ n: Int) -> Int? {
            guard at + n <= b.count else { return nil }
            var v = 0
            for k in at..<(at + n) { guard b[k] >= 0x30, b[k] <= 0x39 else { return nil }; v = v * 10 + Int(b[k] - 0x30) }
            return v
        }
        guard let y = num(0, 4), b[4] == 0x2D, let mo = num(5, 2), b[7] == 0x2D, let d = num(8, 2), b[10] == 0x54 || b[10] == 0x74,
              let h = num(11, 2), b[13] == 0x3A, let mi = num(14, 2), b[16] == 0x3A, let se = num(17, 2) else { return nil }
        var i = 19
        var frac = 0.0
        if i < b.count, b[i] == 0x2E {
            i += 1
            var scale = 0.1, digits = 0
            while i < b.count, b[i] >= 0x30, b[i] <= 0x39 { frac += Double(b[i] - 0x30) * scale; scale /= 10; i += 1; digits += 1 }
            guard digits > 0 else { return nil }
        }
        var offset = 0
        guard i < b.count else { return nil }
        if b[i] == 0x5A || b[i] == 0x7A {
            i += 1
        } else if b[i] == 0x2B || b[i] == 0x2D, let oh = num(i + 1, 2), i + 3 < b.count, b[i + 3] == 0x3A, let om = num(i + 4, 2) {
            guard oh <= 23, om <= 59 else { return nil }
            offset = (oh * 60 + om) * 60 * (b[i] == 0x2D ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == b.count, y >= 1, (1...12).contains(mo), h <= 23, mi <= 59, se <= 59 else { return nil }
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
        let days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard d >= 1, d <= days[mo - 1] else { return nil }
        // Days from 1970-01-01 (proleptic Gregorian), from Howard Hinnant's days_from_civil.
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let dayNumber = era * 146_097 + doe - 719_468
        let seconds = Double(dayNumber * 86400 + h * 3600 + mi * 60 + se - offset) + frac
        return Date(timeIntervalSince1970: seconds)
    }
}
