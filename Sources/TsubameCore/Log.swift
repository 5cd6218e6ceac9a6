// SPDX-License-Identifier: MIT
// Structured logs: one JSON object per line on stderr. Never pass secrets here.

public import Foundation

public enum LogLevel: Int, Sendable, Comparable {
    case debug, info, warn, error
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
    public init?(name: String) {
        switch name { case "debug": self = .debug; case "info": self = .info; case "warn": self = .warn; case "error": self = .error; default: return nil }
    }
    var name: String { switch self { case .debug: "debug"; case .info: "info"; case .warn: "warn"; case .error: "error" } }
}

public enum Log {
    nonisolated(unsafe) public static var minimum: LogLevel = .info
    nonisolated(unsafe) public static var component = "tsubame"

    public static func write(_ level: LogLevel, _ message: String, _ fields: [(String, JSON)] = []) {
        guard level >= minimum else { return }
        var members: [(String, JSON)] = [("ts", .string(Timestamp.format(Date()))), ("level", .string(level.name)),
                                         ("component", .string(component)), ("pid", .int(getpid())), ("msg", .string(message))]
        members += fields
        var line = JSON.object(members).encoded()
        line.append(0x0A)
        _ = line.withUnsafeBufferPointer { Foundation.write(2, $0.baseAddress, $0.count) }
    }
    public static func debug(_ m: String, _ f: [(String, JSON)] = []) { write(.debug, m, f) }
    public static func info(_ m: String, _ f: [(String, JSON)] = []) { write(.info, m, f) }
    public static func warn(_ m: String, _ f: [(String, JSON)] = []) { write(.warn, m, f) }
    public static func error(_ m: String, _ f: [(String, JSON)] = []) { write(.error, m, f) }
}
