// SPDX-License-Identifier: MIT
// One table of settings. Sources, later ones winning: defaults, the KEY=VALUE
// file named by TSUBAME_CONFIG_FILE, the environment, and NAME_FILE for secrets.

public import Foundation

/// One setting: its variable, default, meaning and how it is checked.
public struct ConfigOption: Sendable {
    public enum Kind: Sendable { case string, int(ClosedRange<Int>), bool, octal, path, enumeration([String]), url([String]) }
    public let name: String
    public let defaultValue: String?
    public let kind: Kind
    public let secret: Bool
    public let help: String
}

/// A problem with the configuration, naming the setting.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let messages: [String]
    public var description: String { messages.joined(separator: "\n") }
}

public struct Config: Sendable {
    public static let options: [ConfigOption] = [
        .init(name: "TSUBAME_DATABASE_URL", defaultValue: "postgresql:///tsubame", kind: .string, secret: true,
              help: "libpq connection string or URL"),
        .init(name: "TSUBAME_MASTER_KEY_FILE", defaultValue: "/etc/tsubame/master.key", kind: .path, secret: false,
              help: "file holding the 32-byte key (hex) that seals server credentials; mode 0600"),
        .init(name: "TSUBAME_PREVIOUS_MASTER_KEY_FILES", defaultValue: nil, kind: .string, secret: false,
              help: "older master key files, comma-separated, that still open what they sealed during a key rotation (tsubame rotate-key)"),
        .init(name: "TSUBAME_FCGI_SOCKET", defaultValue: "/run/tsubame/fcgi.sock", kind: .path, secret: false,
              help: "unix socket the pool listens on"),
        .init(name: "TSUBAME_FCGI_SOCKET_MODE", defaultValue: "0660", kind: .octal, secret: false, help: "octal mode of the socket"),
        .init(name: "TSUBAME_FCGI_SOCKET_GROUP", defaultValue: nil, kind: .string, secret: false,
              help: "group of the socket (e.g. www-data)"),
        .init(name: "TSUBAME_POOL_WORKERS", defaultValue: "2", kind: .int(1...256), secret: false, help: "worker processes"),
        .init(name: "TSUBAME_WORKER_THREADS", defaultValue: "8", kind: .int(1...256), secret: false,
              help: "accept threads (and PostgreSQL connections) per worker"),
        .init(name: "TSUBAME_LONGPOLL_RESPONDERS", defaultValue: "2", kind: .int(1...64), secret: false,
              help: "threads per worker (each with a PostgreSQL connection) that answer parked long-polls"),
        .init(name: "TSUBAME_LONGPOLL_MAX_WAITERS", defaultValue: "8000", kind: .int(0...1_000_000), secret: false,
              help: "long-polls one worker parks at once; beyond it they are answered at once (0 = never park)"),
        .init(name: "TSUBAME_MAX_REQUESTS", defaultValue: "1000000", kind: .int(0...100_000_000), secret: false,
              help: "requests after which a worker is recycled (0 = never)"),
        .init(name: "TSUBAME_POOL_USER", defaultValue: "tsubame", kind: .string, secret: false,
              help: "user the pool drops to when started as root"),
        .init(name: "TSUBAME_POOL_PIDFILE", defaultValue: nil, kind: .path, secret: false, help: "pid file of the pool master"),
        .init(name: "TSUBAME_POOL_CONTROL_SOCKET", defaultValue: nil, kind: .path, secret: false,
              help: "status socket of the pool master (default: the FastCGI socket + .ctl)"),
        .init(name: "TSUBAME_WORKER_BINARY", defaultValue: nil, kind: .path, secret: false,
              help: "worker program (default: tsubame-worker next to tsubame-pool)"),
        .init(name: "TSUBAME_COOKIE_SECURE", defaultValue: "true", kind: .bool, secret: false,
              help: "Secure flag on the session cookie (false only for plain-HTTP development)"),
        .init(name: "TSUBAME_SESSION_HOURS", defaultValue: "12", kind: .int(1...8760), secret: false, help: "idle session lifetime"),
        .init(name: "TSUBAME_LOGIN_MAX_FAILURES", defaultValue: "5", kind: .int(1...1000), secret: false,
              help: "failed sign-ins per user in the window before 429 (per address: 4x this)"),
        .init(name: "TSUBAME_LOGIN_WINDOW_SECONDS", defaultValue: "900", kind: .int(1...86400), secret: false,
              help: "the sign-in throttling window"),
        .init(name: "TSUBAME_EXECUTOR_ID", defaultValue: nil, kind: .string, secret: false,
              help: "this executor's name in leases and logs (default: host-pid-random)"),
        .init(name: "TSUBAME_EXECUTOR_CAPACITY", defaultValue: "500", kind: .int(0...10000), secret: false,
              help: "targets one executor runs at once, over all jobs and servers (0 = run nothing: only fire schedules and reap)"),
        .init(name: "TSUBAME_EXECUTOR_PIDFILE", defaultValue: nil, kind: .path, secret: false, help: "pid file of the executor"),
        .init(name: "TSUBAME_LEASE_SECONDS", defaultValue: "30", kind: .int(2...3600), secret: false,
              help: "a running target whose executor stops heartbeating is failed after this long"),
        .init(name: "TSUBAME_POLL_INTERVAL_MS", defaultValue: "2000", kind: .int(50...60000), secret: false,
              help: "how often an executor looks for work without a NOTIFY (jittered ±20%)"),
        .init(name: "TSUBAME_SSH_CONNECT_TIMEOUT_SECONDS", defaultValue: "10", kind: .int(1...300), secret: false,
              help: "TCP connect + SSH handshake + authentication"),
        .init(name: "TSUBAME_SSH_IDLE_SECONDS", defaultValue: "0", kind: .int(0...3600), secret: false,
              help: "keep an authenticated SSH session per server open this long for the next run (0 = off)"),
        .init(name: "TSUBAME_SSH_CHANNELS_PER_CONNECTION", defaultValue: "8", kind: .int(1...1000), secret: false,
              help: "targets on one server (same account and credentials) that share one SSH connection, a channel each"),
        .init(name: "TSUBAME_RETENTION_DAYS", defaultValue: "30", kind: .int(0...36500), secret: false,
              help: "finished executions and their output are deleted this many days after they were created, unless their job says otherwise (0 = keep)"),
        .init(name: "TSUBAME_AUDIT_RETENTION_DAYS", defaultValue: "365", kind: .int(0...36500), secret: false,
              help: "audit log entries are deleted after this many days (0 = keep)"),
        .init(name: "TSUBAME_OUTPUT_CAP_MB", defaultValue: "64", kind: .int(1...4096), secret: false,
              help: "output stored per execution; the rest is dropped with a system line"),
        .init(name: "TSUBAME_PUBLIC_URL", defaultValue: nil, kind: .url(["http", "https"]), secret: false,
              help: "the web UI's address as users reach it (e.g. https://ci.example.com); notifications link to executions with it"),
        .init(name: "TSUBAME_SMTP_URL", defaultValue: nil, kind: .url(["smtp", "smtps"]), secret: false,
              help: "mail server for e-mail notifications: smtp://host:25 (STARTTLS when the server offers it) or smtps://host:465 (TLS)"),
        .init(name: "TSUBAME_SMTP_FROM", defaultValue: "tsubame-ci@localhost", kind: .string, secret: false,
              help: "sender address of e-mail notifications"),
        .init(name: "TSUBAME_SMTP_USERNAME", defaultValue: nil, kind: .string, secret: false, help: "SMTP user name (when the server wants one)"),
        .init(name: "TSUBAME_SMTP_PASSWORD", defaultValue: nil, kind: .string, secret: true, help: "SMTP password"),
        .init(name: "TSUBAME_SMTP_CA_FILE", defaultValue: nil, kind: .path, secret: false,
              help: "PEM file of the CA that signed the mail server's certificate (default: the system's CAs)"),
        .init(name: "TSUBAME_NOTIFY_RETRY_SECONDS", defaultValue: "10", kind: .int(1...3600), secret: false,
              help: "wait before retrying a failed notification; later retries wait 6x, 30x and 180x this"),
        .init(name: "TSUBAME_NOTIFY_MAX_ATTEMPTS", defaultValue: "5", kind: .int(1...20), secret: false,
              help: "attempts per notification before it is marked failed"),
        .init(name: "TSUBAME_NOTIFY_TIMEOUT_SECONDS", defaultValue: "15", kind: .int(1...300), secret: false,
              help: "a notification's whole transfer (connecting takes at most 5 s of it)"),
        .init(name: "TSUBAME_NOTIFY_CONCURRENCY", defaultValue: "4", kind: .int(1...64), secret: false,
              help: "notifications one executor sends at once"),
        .init(name: "TSUBAME_LOG_LEVEL", defaultValue: "info", kind: .enumeration(["debug", "info", "warn", "error"]),
              secret: false, help: "least severe log level written to stderr"),
    ]

    /// The effective values, by variable name.
    public let values: [String: String]

    /// Loads and validates. `environment` defaults to the process environment.
    public static func load(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Config {
        var merged: [String: String] = [:]
        var errors: [String] = []
        if let file = environment["TSUBAME_CONFIG_FILE"], !file.isEmpty {
            do {
                let text = try String(contentsOfFile: file, encoding: .utf8)
                for (lineNo, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                    let line = raw.trimmingCharacters(in: .whitespaces)
                    if line.isEmpty || line.hasPrefix("#") { continue }
                    guard let eq = line.firstIndex(of: "=") else {
                        errors.append("TSUBAME_CONFIG_FILE \(file):\(lineNo + 1): expected KEY=VALUE"); continue
                    }
                    var value = String(line[line.index(after: eq)...]).trimmingCharacters(in: .whitespaces)
                    if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
                    merged[String(line[..<eq]).trimmingCharacters(in: .whitespaces)] = value
                }
            } catch {
                errors.append("TSUBAME_CONFIG_FILE: cannot read \(file)")
            }
        }
        for (k, v) in environment where k.hasPrefix("TSUBAME_") { merged[k] = v }
        var values: [String: String] = [:]
        for option in options {
            if option.secret, let path = merged[option.name + "_FILE"], !path.isEmpty {
                if let text = try? String(contentsOfFile: path, encoding: .utf8) {
                    values[option.name] = text.trimmingCharacters(in: .whitespacesAndNewlines)
                } else {
                    errors.append("\(option.name)_FILE: cannot read \(path)")
                }
            } else if let v = merged[option.name] {
                values[option.name] = v
            } else if let d = option.defaultValue {
                values[option.name] = d
            }
            if let v = values[option.name], let message = check(option, v) { errors.append("\(option.name): \(message)") }
        }
        if !errors.isEmpty { throw ConfigError(messages: errors) }
        return Config(values: values)
    }

    public init(values: [String: String]) { self.values = values }

    static func check(_ option: ConfigOption, _ value: String) -> String? {
        switch option.kind {
        case .string: return value.isEmpty ? "must not be empty" : nil
        case .path: return value.isEmpty ? "must be a path" : nil
        case let .int(range):
            guard let n = Int(value), range.contains(n) else { return "must be a whole number from \(range.lowerBound) to \(range.upperBound), got \"\(value)\"" }
            return nil
        case .bool: return parseBool(value) == nil ? "must be true or false, got \"\(value)\"" : nil
        case .octal:
            guard let n = Int(value, radix: 8), (0...0o777).contains(n) else { return "must be an octal mode like 0660, got \"\(value)\"" }
            return nil
        case let .enumeration(allowed):
            return allowed.contains(value) ? nil : "must be one of \(allowed.joined(separator: ", ")), got \"\(value)\""
        case let .url(schemes):
            let ok = schemes.contains { s in
                guard value.lowercased().hasPrefix(s + "://") else { return false }
                let host = value.dropFirst(s.count + 3).prefix { $0 != "/" && $0 != "?" && $0 != "#" }
                return !host.isEmpty && !value.contains(where: { $0.isWhitespace })
            }
            return ok ? nil : "must be a URL starting with \(schemes.map { $0 + "://" }.joined(separator: " or ")) and naming a host"
        }
    }

    static func parseBool(_ v: String) -> Bool? {
        switch v.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: return nil
        }
    }

    public func string(_ name: String) -> String? { values[name] }
    public func int(_ name: String) -> Int { Int(values[name] ?? "") ?? 0 }
    public func bool(_ name: String) -> Bool { Config.parseBool(values[name] ?? "") ?? false }
    public func octal(_ name: String) -> Int { Int(values[name] ?? "", radix: 8) ?? 0 }

    public var databaseURL: String { values["TSUBAME_DATABASE_URL"] ?? "" }

    /// Every setting as KEY=VALUE, secrets redacted unless asked.
    public func dump(revealSecrets: Bool = false) -> String {
        Config.options.map { o in
            let v = values[o.name].map { o.secret && !revealSecrets ? "(redacted)" : $0 } ?? "(unset)"
            return "\(o.name)=\(v)"
        }.joined(separator: "\n")
    }
}
