// SPDX-License-Identifier: MIT
// Reads a JSON object field by field, collecting every problem, so one 422
// names them all. Fields not read are "unknown" and rejected.

import Foundation
import TsubameCore

/// Whether a field is optional, required, or may be null.
enum Presence { case required, optional }

struct BodyReader {
    private let members: [(String, JSON)]
    private var read: Set<String> = []
    private(set) var errors: [FieldError] = []

    init(_ json: JSON) throws {
        guard case let .object(m) = json else {
            throw APIError.validation([FieldError("body", "must be a JSON object, got \(json.typeName)")])
        }
        members = m
    }

    func has(_ key: String) -> Bool { members.contains { $0.0 == key } }

    mutating func raw(_ key: String, _ presence: Presence) -> JSON? {
        read.insert(key)
        guard let v = members.first(where: { $0.0 == key })?.1 else {
            if presence == .required { fail(key, "is required") }
            return nil
        }
        return v
    }

    mutating func fail(_ field: String, _ message: String) { errors.append(FieldError(field, message)) }

    /// A string; checks length in characters, NUL bytes and an optional pattern.
    mutating func string(_ key: String, _ presence: Presence, min: Int = 0, max: Int, pattern: String? = nil,
                         patternHelp: String = "has characters that are not allowed", nullable: Bool = false) -> String? {
        guard let v = raw(key, presence) else { return nil }
        if nullable, v.isNull { return nil }
        guard let s = v.stringValue else { fail(key, "must be a string, got \(v.typeName)"); return nil }
        return checkString(s, field: key, min: min, max: max, pattern: pattern, patternHelp: patternHelp)
    }

    mutating func checkString(_ s: String, field: String, min: Int, max: Int, pattern: String?, patternHelp: String) -> String? {
        if s.utf8.contains(0) { fail(field, "must not contain NUL characters"); return nil }
        let n = s.count
        if n < min { fail(field, min == 1 ? "must not be empty" : "must be at least \(min) characters"); return nil }
        if n > max { fail(field, "must be at most \(max) characters"); return nil }
        if let p = pattern, s.range(of: p, options: .regularExpression) == nil { fail(field, patternHelp); return nil }
        return s
    }

    mutating func int(_ key: String, _ presence: Presence, range: ClosedRange<Int64>) -> Int64? {
        guard let v = raw(key, presence) else { return nil }
        guard case .number = v else { fail(key, "must be an integer, got \(v.typeName)"); return nil }
        guard let n = v.int64Value else { fail(key, "must be a whole number from \(range.lowerBound) to \(range.upperBound)"); return nil }
        guard range.contains(n) else { fail(key, "must be between \(range.lowerBound) and \(range.upperBound)"); return nil }
        return n
    }

    mutating func bool(_ key: String, _ presence: Presence) -> Bool? {
        guard let v = raw(key, presence) else { return nil }
        guard let b = v.boolValue else { fail(key, "must be true or false, got \(v.typeName)"); return nil }
        return b
    }

    mutating func oneOf(_ key: String, _ presence: Presence, _ allowed: [String]) -> String? {
        guard let v = raw(key, presence) else { return nil }
        guard let s = v.stringValue, allowed.contains(s) else { fail(key, "must be one of: \(allowed.joined(separator: ", "))"); return nil }
        return s
    }

    /// A list of short labels: deduplicated, order kept.
    mutating func tags(_ key: String) -> [String]? {
        guard let v = raw(key, .optional) else { return nil }
        guard let items = v.arrayValue else { fail(key, "must be an array of strings, got \(v.typeName)"); return nil }
        if items.count > 20 { fail(key, "must have at most 20 tags"); return nil }
        var out: [String] = []
        for (i, item) in items.enumerated() {
            guard let s = item.stringValue else { fail("\(key)[\(i)]", "must be a string"); return nil }
            guard let t = checkString(s, field: "\(key)[\(i)]", min: 1, max: 50, pattern: "^[A-Za-z0-9_.:-]+$",
                                      patternHelp: "may use letters, digits and _ . : - only") else { return nil }
            if !out.contains(t) { out.append(t) }
        }
        return out
    }

    /// Ids of other objects: positive, no duplicates.
    mutating func ids(_ key: String, _ presence: Presence, min: Int, max: Int) -> [Int64]? {
        guard let v = raw(key, presence) else { return nil }
        guard let items = v.arrayValue else { fail(key, "must be an array of ids, got \(v.typeName)"); return nil }
        if items.count < min { fail(key, min == 1 ? "must name at least one" : "must have at least \(min) items"); return nil }
        if items.count > max { fail(key, "must have at most \(max) items"); return nil }
        var out: [Int64] = []
        for (i, item) in items.enumerated() {
            guard let n = item.int64Value, n >= 1, case .number = item else { fail("\(key)[\(i)]", "must be a positive integer id"); return nil }
            if out.contains(n) { fail("\(key)[\(i)]", "repeats id \(n)"); return nil }
            out.append(n)
        }
        return out
    }

    /// Environment variables: names like shell variables, string values; null values (in PATCH) mean "remove".
    mutating func env(_ key: String, allowNullValues: Bool = false) -> [(String, String?)]? {
        guard let v = raw(key, .optional) else { return nil }
        guard let members = v.objectValue else { fail(key, "must be an object of NAME: \"value\", got \(v.typeName)"); return nil }
        if members.count > 100 { fail(key, "must have at most 100 variables"); return nil }
        var out: [(String, String?)] = []
        for (name, value) in members {
            let field = "\(key).\(name)"
            guard name.range(of: "^[A-Za-z_][A-Za-z0-9_]{0,127}$", options: .regularExpression) != nil else {
                fail(field, "is not a valid variable name (letters, digits and _, not starting with a digit)"); return nil
            }
            if allowNullValues, value.isNull { out.append((name, nil)); continue }
            guard let s = value.stringValue else { fail(field, "must be a string, got \(value.typeName)"); return nil }
            guard let checked = checkString(s, field: field, min: 0, max: 32768, pattern: nil, patternHelp: "") else { return nil }
            out.append((name, checked))
        }
        return out
    }

    /// Throws one 422 naming every problem, including fields nobody read.
    func finish() throws {
        var all = errors
        for (k, _) in members where !read.contains(k) { all.append(FieldError(k, "is not a known field")) }
        if !all.isEmpty { throw APIError.validation(all) }
    }
}
