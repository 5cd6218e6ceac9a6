// SPDX-License-Identifier: MIT
// The SSH engine against a real loopback fleet of sshd processes
// (scripts/lib/fleet.sh; scripts/test starts three). Skipped unless the
// TSUBAME_TEST_SSH_* variables name one.

import Foundation
import Testing
@testable import TsubameSSH

enum Fleet {
    static let env = ProcessInfo.processInfo.environment
    static var enabled: Bool {
        ["TSUBAME_TEST_SSH_HOST", "TSUBAME_TEST_SSH_PORTS", "TSUBAME_TEST_SSH_USER", "TSUBAME_TEST_SSH_PASSWORD", "TSUBAME_TEST_SSH_DIR"]
            .allSatisfy { env[$0] != nil }
    }
    static var host: String { env["TSUBAME_TEST_SSH_HOST"]! }
    static var ports: [Int] { env["TSUBAME_TEST_SSH_PORTS"]!.split(separator: ",").compactMap { Int($0) } }
    static var port: Int { ports[0] }
    static var user: String { env["TSUBAME_TEST_SSH_USER"]! }
    static var password: String { env["TSUBAME_TEST_SSH_PASSWORD"]! }
    static var dir: String { env["TSUBAME_TEST_SSH_DIR"]! }
    /// Writable by the tests and by the target user.
    static var shared: String { dir + "/shared" }

    static func keyText(_ variable: String) throws -> String {
        try String(contentsOfFile: env[variable]!, encoding: .utf8)
    }

    static func target(_ id: Int64, _ script: String, port: Int? = nil, user: String? = nil, auth: SSHAuth? = nil,
                       pinned: String? = nil, env: [(String, String)] = [], timeout: TimeInterval = 30,
                       connectTimeout: TimeInterval = 10) -> SSHTarget {
        SSHTarget(id: id, host: host, port: port ?? self.port, username: user ?? self.user, auth: auth ?? .password(password),
                  pinnedFingerprint: pinned, script: script, environment: env, timeout: timeout, connectTimeout: connectTimeout)
    }

    /// `ssh-keygen -lf` of the fleet's host keys: fingerprint → algorithm.
    static func hostFingerprints() throws -> [String: String] {
        var out: [String: String] = [:]
        for (file, algorithm) in [("ssh_host_ed25519_key.pub", "ssh-ed25519"), ("ssh_host_ecdsa_key.pub", "ecdsa-sha2-nistp256")] {
            let line = try run("/usr/bin/ssh-keygen", ["-lf", dir + "/" + file])
            let fields = line.split(separator: " ")
            out[String(fields[1])] = algorithm
        }
        return out
    }

    static func run(_ path: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    static func logPath(_ port: Int) -> String { dir + "/sshd-\(port).log" }

    /// The sshd log of `port` from byte `offset` on.
    static func log(_ port: Int, from offset: Int = 0) -> String {
        guard let data = FileManager.default.contents(atPath: logPath(port)), data.count >= offset else { return "" }
        return String(decoding: data[offset...], as: UTF8.self)
    }

    static func logSize(_ port: Int) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: logPath(port))[.size] as? Int) ?? 0
    }

    /// The per-connection sshd processes of the listener on `port` (not the listener).
    static func connectionProcesses(_ port: Int) -> [pid_t] {
        guard let text = try? String(contentsOfFile: dir + "/sshd-\(port).pid", encoding: .utf8),
              let listener = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return [] }
        var parent: [pid_t: pid_t] = [:], name: [pid_t: String] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { continue }
            name[pid] = String(stat[stat.index(after: open)..<close])
            let rest = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            parent[pid] = pid_t(rest[1])
        }
        return parent.keys.filter { pid in
            guard name[pid] == "sshd", pid != listener else { return false }
            var p = parent[pid]
            while let q = p, q > 1 {
                if q == listener { return true }
                p = parent[q]
            }
            return false
        }
    }

    static func alive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        // A zombie is gone too, only not yet reaped.
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        if let close = stat.lastIndex(of: ")"), stat[stat.index(close, offsetBy: 2)] == "Z" { return false }
        return true
    }

    /// Waits until `pid` is gone (up to `seconds`).
    static func gone(_ pid: pid_t, within seconds: Double = 2) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if !alive(pid) { return true }
            usleep(20_000)
        }
        return !alive(pid)
    }

    static func readPid(_ path: String, within seconds: Double = 10) -> pid_t? {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if let text = try? String(contentsOfFile: path, encoding: .utf8),
               let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) { return pid }
            usleep(10_000)
        }
        return nil
    }

    static func tempPath(_ name: String) -> String {
        shared + "/\(name)-\(UUID().uuidString.prefix(8))"
    }

    /// `script` made too large for the inline command: it runs from a file.
    static func fromFile(_ script: String) -> String {
        script + "\n#" + String(repeating: "x", count: Job.inlineLimit) + "\n"
    }

    /// A private sshd like the fleet's, with `options` added (root only; loopback).
    /// Returns its port and a function that stops it.
    static func startSSHD(_ options: [String]) throws -> (port: Int, stop: () -> Void) {
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(probe, $0, len) } }
        withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(probe, $0, &len) } }
        close(probe)
        let port = Int(UInt16(bigEndian: addr.sin_port))
        let pidFile = dir + "/sshd-private-\(port).pid"
        var args = ["-f", dir + "/sshd_config", "-E", dir + "/sshd-private-\(port).log",
                    "-o", "ListenAddress=127.0.0.1:\(port)", "-o", "PidFile=\(pidFile)"]
        for option in options { args += ["-o", option] }
        _ = try run("/usr/sbin/sshd", args)
        let pid = try #require(readPid(pidFile))
        let stop = { _ = kill(pid, SIGTERM) }
        // Until it accepts connections.
        for _ in 0..<100 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) } }
            close(fd)
            if rc == 0 { return (port, stop) }
            usleep(20_000)
        }
        stop()
        throw CocoaError(.fileReadUnknown)
    }

    /// Connections sshd on `port` accepted since `mark` (its log's size then).
    static func connections(_ port: Int, since mark: Int) -> Int {
        usleep(100_000)
        return log(port, from: mark).components(separatedBy: "Connection from").count - 1
    }
}

/// Collects a runner's events and lets a test wait for them.
final class Events: @unchecked Sendable {
    private let condition = NSCondition()
    private(set) var all: [SSHEvent] = []

    func record(_ event: SSHEvent) {
        condition.lock()
        all.append(event)
        condition.broadcast()
        condition.unlock()
    }

    func snapshot() -> [SSHEvent] {
        condition.lock()
        defer { condition.unlock() }
        return all
    }

    /// Waits until `predicate` holds over the events so far.
    @discardableResult
    func wait(_ seconds: Double = 20, _ predicate: ([SSHEvent]) -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        condition.lock()
        defer { condition.unlock() }
        while !predicate(all) {
            if !condition.wait(until: end) { return predicate(all) }
        }
        return true
    }

    func outcome(_ id: Int64, within seconds: Double = 20) -> SSHOutcome? {
        wait(seconds) { $0.contains { if case .finished(id, _, _) = $0 { return true }; return false } }
        for case let .finished(eid, outcome, _) in snapshot() where eid == id { return outcome }
        return nil
    }

    func duration(_ id: Int64) -> Double? {
        for case let .finished(eid, _, ms) in snapshot() where eid == id { return ms }
        return nil
    }

    func output(_ id: Int64, _ stream: SSHStream) -> String {
        Events.output(id, stream, in: snapshot())
    }

    static func output(_ id: Int64, _ stream: SSHStream, in list: [SSHEvent]) -> String {
        var bytes: [UInt8] = []
        for case let .output(eid, s, b) in list where eid == id && s == stream { bytes += b }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Waits until this id's output on `stream` contains `text`.
    func waitOutput(_ id: Int64, _ stream: SSHStream = .stdout, contains text: String, within seconds: Double = 10) -> Bool {
        wait(seconds) { Events.output(id, stream, in: $0).contains(text) }
    }

    func outputCount(_ id: Int64, _ stream: SSHStream) -> Int {
        var n = 0
        for case let .output(eid, s, b) in snapshot() where eid == id && s == stream { n += b.count }
        return n
    }

    func hostKeys(_ id: Int64) -> [(algorithm: String, fingerprint: String, firstUse: Bool)] {
        snapshot().compactMap { if case let .hostKey(eid, a, f, first) = $0, eid == id { return (a, f, first) }; return nil }
    }

    func started(_ id: Int64) -> Bool {
        snapshot().contains { if case .started(id, _) = $0 { return true }; return false }
    }

    /// The kinds of this id's events, in order.
    func kinds(_ id: Int64) -> [String] {
        snapshot().filter { $0.id == id }.map {
            switch $0 {
            case .hostKey: "hostKey"
            case .started: "started"
            case .output: "output"
            case .finished: "finished"
            }
        }
    }
}

/// A started runner and its events; stopped by the test.
func makeRunner(idle: Double = 0, keepalive: Int = 15, channels: Int = 8) -> (SSHRunner, Events) {
    let events = Events()
    let runner = SSHRunner(idleSessionSeconds: idle, keepaliveSeconds: keepalive, channelsPerConnection: channels) { events.record($0) }
    runner.start()
    return (runner, events)
}

/// Runs one target to its end.
func runOne(_ target: SSHTarget, within seconds: Double = 30) -> (SSHOutcome?, Events) {
    let (runner, events) = makeRunner()
    defer { runner.stop() }
    runner.submit(target)
    return (events.outcome(target.id, within: seconds), events)
}

func failureKind(_ outcome: SSHOutcome?) -> SSHFailureKind? {
    if case let .failed(kind, _)? = outcome { return kind }
    return nil
}

func failureMessage(_ outcome: SSHOutcome?) -> String {
    if case let .failed(_, message)? = outcome { return message }
    return ""
}

@Suite(.serialized, .enabled(if: Fleet.enabled, "set TSUBAME_TEST_SSH_* (scripts/lib/fleet.sh starts a loopback sshd fleet) to run the SSH tests"))
struct SSHTests {
    @Test func passwordAuthRunsTheScript() {
        let (outcome, events) = runOne(Fleet.target(1, "echo hello; echo \"user=$(id -un)\""))
        #expect(outcome == .exited(0))
        #expect(events.output(1, .stdout) == "hello\nuser=\(Fleet.user)\n")
        #expect(events.output(1, .stderr) == "")
        let kinds = events.kinds(1)
        #expect(kinds.first == "hostKey" && kinds.dropFirst().first == "started" && kinds.last == "finished")
        #expect(kinds.filter { $0 == "finished" }.count == 1)
    }

    @Test(arguments: ["TSUBAME_TEST_SSH_KEY_ED25519", "TSUBAME_TEST_SSH_KEY_ECDSA", "TSUBAME_TEST_SSH_KEY_ED25519_PASSPHRASE"])
    func keyAuth(_ variable: String) throws {
        let passphrase = variable.hasSuffix("PASSPHRASE") ? Fleet.env["TSUBAME_TEST_SSH_KEY_PASSPHRASE"] : nil
        let auth = SSHAuth.key(privateKey: try Fleet.keyText(variable), passphrase: passphrase)
        let (outcome, events) = runOne(Fleet.target(2, "echo key-ok", auth: auth))
        #expect(outcome == .exited(0), "\(variable): \(String(describing: outcome))")
        #expect(events.output(2, .stdout) == "key-ok\n")
    }

    @Test func wrongPassphraseIsAnAuthFailure() throws {
        let auth = SSHAuth.key(privateKey: try Fleet.keyText("TSUBAME_TEST_SSH_KEY_ED25519_PASSPHRASE"), passphrase: "not-it")
        let (outcome, _) = runOne(Fleet.target(3, "true", auth: auth))
        #expect(failureKind(outcome) == .authFailed)
        #expect(failureMessage(outcome).contains("passphrase"))
        // Encrypted key without a passphrase: an error, never a prompt.
        let (none, _) = runOne(Fleet.target(3, "true", auth: .key(privateKey: try Fleet.keyText("TSUBAME_TEST_SSH_KEY_ED25519_PASSPHRASE"),
                                                                   passphrase: nil)))
        #expect(failureKind(none) == .authFailed)
    }

    @Test func stdoutAndStderrAreSeparate() {
        let (outcome, events) = runOne(Fleet.target(4, "echo out1; echo err1 >&2; printf out2; echo err2 >&2"))
        #expect(outcome == .exited(0))
        #expect(events.output(4, .stdout) == "out1\nout2")
        #expect(events.output(4, .stderr) == "err1\nerr2\n")
    }

    @Test func exitStatusAndSignal() {
        let (outcome, events) = runOne(Fleet.target(5, "echo before; exit 3"))
        #expect(outcome == .exited(3))
        #expect(events.output(5, .stdout) == "before\n")
        // The shell that runs the script killed by a signal: reported as such.
        let (inline, _) = runOne(Fleet.target(6, "echo before; kill -s KILL $$; echo after"))
        #expect(inline == .signaled("KILL"))
        // From a file, the wrapper is the script's parent.
        let (signaled, killed) = runOne(Fleet.target(6, Fleet.fromFile("echo \"$0\"; kill -s KILL $PPID")))
        #expect(signaled == .signaled("KILL"))
        // The script file is gone all the same (it removes itself once the shell has it open).
        let file = killed.output(6, .stdout).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(file.hasPrefix("/"))
        #expect(!FileManager.default.fileExists(atPath: file))
        // A command the script cannot find is the script's own exit 127, not a missing shell.
        let (missing, _) = runOne(Fleet.target(7, "no-such-command-here"))
        #expect(missing == .exited(127))
    }

    @Test(arguments: [false, true])
    func environmentReachesTheScript(fromFile: Bool) {
        let tricky = "it's \"quoted\" $HOME `date` \\ \n second line\t!\n3\nexport X=1\n"
        // Also names the inline form's own variables use: the script sees the values it was given.
        let env = [("TRICKY", tricky), ("EMPTY", ""), ("_under_2", "x"), ("_tsubame_n", "n"), ("_tsubame_env", "e")]
        var script = "printf '%s|%s|%s|%s|%s|%s' \"$TRICKY\" \"$EMPTY\" \"$_under_2\" \"$_tsubame_n\" \"$_tsubame_env\" \"${X-unset}\"; "
            + "env | grep -c '^_under_2=x$' >&2; if read -r line; then echo \"stdin: $line\"; fi"
        if fromFile { script = Fleet.fromFile(script) }
        #expect(Job.remote(Fleet.target(8, script, env: env)).inline == !fromFile)
        let (outcome, events) = runOne(Fleet.target(8, script, env: env))
        #expect(outcome == .exited(0))
        // The script's stdin is empty (it was the environment's, or the file's).
        #expect(events.output(8, .stdout) == tricky + "||x|n|e|unset")
        #expect(events.output(8, .stderr) == "1\n")
        let (bad, _) = runOne(Fleet.target(9, "true", env: [("1BAD", "x")]))
        #expect(failureKind(bad) == .protocolError)
        #expect(failureMessage(bad).contains("1BAD"))
    }

    @Test func largeScriptTravelsOnStdin() {
        // 2 MiB: far above the 128 KiB limit of one command-line argument.
        var script = "n=0\n"
        let filler = "# " + String(repeating: "x", count: 97) + "\n"
        for i in 0..<20_000 {
            script += filler
            if i % 1000 == 0 { script += "n=$((n+1))\n" }
        }
        script += "echo \"n=$n\"\n"
        #expect(script.utf8.count > 2_000_000)
        let (outcome, events) = runOne(Fleet.target(10, script))
        #expect(outcome == .exited(0))
        #expect(events.output(10, .stdout) == "n=20\n")
    }

    @Test func inlineAndFileFormsAgree() {
        let scripts = ["echo out; echo err >&2; exit 7", "printf 'a\\\\b\\n'; echo 'it'\\''s'; echo \"$0\" >/dev/null", "true", ""]
        for (i, script) in scripts.enumerated() {
            let id = Int64(60 + i)
            #expect(Job.remote(Fleet.target(id, script)).inline)
            let (inline, a) = runOne(Fleet.target(id, script))
            let (file, b) = runOne(Fleet.target(id, Fleet.fromFile(script)))
            #expect(inline == file, "\(script)")
            #expect(a.output(id, .stdout) == b.output(id, .stdout) && a.output(id, .stderr) == b.output(id, .stderr), "\(script)")
        }
        let (outcome, events) = runOne(Fleet.target(64, scripts[1]))
        #expect(outcome == .exited(0) && events.output(64, .stdout) == "a\\b\nit's\n")
        // A NUL byte cannot be in an argument; a large environment is not read a byte at a time.
        #expect(!Job.remote(Fleet.target(65, "echo a\0b")).inline)
        #expect(!Job.remote(Fleet.target(65, "true", env: [("BIG", String(repeating: "v", count: Job.inlineLimit))])).inline)
    }

    @Test(arguments: [false, true])
    func secretsAreNotOnAnyCommandLine(fromFile: Bool) {
        let secret = "s3cret-" + UUID().uuidString
        // Every command line on the server while the script runs (its own and its ancestors' among them).
        var script = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <\"$f\"; echo; done 2>/dev/null; echo --; printf %s \"$TOKEN\""
        if fromFile { script = Fleet.fromFile(script) }
        let (outcome, events) = runOne(Fleet.target(66, script, env: [("PLAIN", "p"), ("TOKEN", secret)]))
        #expect(outcome == .exited(0))
        let parts = events.output(66, .stdout).components(separatedBy: "--\n")
        #expect(parts.count == 2)
        #expect(parts.last == secret, "the secret reached the script")
        let lines = parts.first ?? ""
        #expect(lines.contains(fromFile ? "mktemp" : "/proc/[0-9]*/cmdline"), "the wrapper's own command line is among them")
        #expect(!lines.contains(secret), "the secret is on a command line")
    }

    @Test func largeOutputArrivesWhole() {
        let (outcome, events) = runOne(Fleet.target(11, "head -c 5000000 /dev/zero | tr '\\0' a; echo; echo done >&2"))
        #expect(outcome == .exited(0))
        #expect(events.outputCount(11, .stdout) == 5_000_001)
        #expect(events.output(11, .stderr) == "done\n")
    }

    @Test func trustOnFirstUseThenPinned() throws {
        let known = try Fleet.hostFingerprints()
        let (first, events) = runOne(Fleet.target(12, "true"))
        #expect(first == .exited(0))
        let keys = events.hostKeys(12)
        #expect(keys.count == 1)
        let key = try #require(keys.first)
        #expect(key.firstUse)
        #expect(known[key.fingerprint] == key.algorithm, "\(key) not among \(known)")
        let (second, again) = runOne(Fleet.target(13, "true", pinned: key.fingerprint))
        #expect(second == .exited(0))
        #expect(again.hostKeys(13).first?.firstUse == false)
        // Pasted with padding or without the prefix: the same key.
        let (third, _) = runOne(Fleet.target(14, "true", pinned: String(key.fingerprint.dropFirst(7)) + "="))
        #expect(third == .exited(0))
    }

    @Test func changedHostKeyIsRefusedBeforeAnyCredential() throws {
        let flag = Fleet.tempPath("ran")
        let mark = Fleet.logSize(Fleet.port)
        let pinned = "SHA256:" + String(repeating: "A", count: 43)
        let (outcome, events) = runOne(Fleet.target(15, "touch \(flag)", pinned: pinned))
        #expect(failureKind(outcome) == .hostKeyChanged)
        let message = failureMessage(outcome)
        #expect(message.contains("\(Fleet.host):\(Fleet.port)") && message.contains(pinned) && message.contains("host_key"))
        #expect(events.hostKeys(15).isEmpty)
        #expect(!events.started(15))
        #expect(!FileManager.default.fileExists(atPath: flag))
        usleep(200_000)
        let log = Fleet.log(Fleet.port, from: mark)
        #expect(log.contains("Connection from"), "the connection reached sshd")
        #expect(!log.contains("password for"), "no password was tried: \(log)")
        #expect(!log.contains("publickey for"))
    }

    @Test func wrongPasswordIsAnAuthFailure() {
        let (outcome, _) = runOne(Fleet.target(16, "true", auth: .password("wrong-password")))
        #expect(failureKind(outcome) == .authFailed)
        #expect(failureMessage(outcome).contains("\(Fleet.host):\(Fleet.port)"))
        #expect(failureMessage(outcome).contains("password"))
    }

    @Test func rsaKeyAgainstModernOpenSSH() throws {
        let version = Double(Fleet.env["TSUBAME_TEST_SSH_OPENSSH_VERSION"] ?? "") ?? 99
        let auth = SSHAuth.key(privateKey: try Fleet.keyText("TSUBAME_TEST_SSH_KEY_RSA"), passphrase: nil)
        let (outcome, _) = runOne(Fleet.target(17, "echo rsa-ok", auth: auth))
        if version >= 8.8 {
            #expect(failureKind(outcome) == .rsaSHA1Refused)
            #expect(failureMessage(outcome).contains("ed25519") && failureMessage(outcome).contains("SHA-1"))
        } else {
            #expect(outcome == .exited(0))
        }
    }

    @Test func refusedPortDnsAndSilentServer() throws {
        // A port nobody listens on.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) } }
        let freePort = Int(UInt16(bigEndian: addr.sin_port))
        close(fd)
        let (refused, _) = runOne(Fleet.target(18, "true", port: freePort))
        #expect(failureKind(refused) == .refused)
        #expect(failureMessage(refused).contains("127.0.0.1:\(freePort)"))

        var dnsTarget = Fleet.target(19, "true")
        dnsTarget.host = "nonexistent.invalid"
        let (dns, _) = runOne(dnsTarget)
        #expect(failureKind(dns) == .dns)
        #expect(failureMessage(dns).contains("nonexistent.invalid"))

        // A server that accepts TCP but never speaks SSH: the connect timeout covers the handshake.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        addr.sin_port = 0
        withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(listener, 8)
        len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(listener, $0, &len) } }
        let silent = Fleet.target(20, "true", port: Int(UInt16(bigEndian: addr.sin_port)), connectTimeout: 0.5)
        let started = Date()
        let (timeout, _) = runOne(silent)
        #expect(failureKind(timeout) == .timeout)
        #expect(failureMessage(timeout).contains("handshake"))
        #expect(Date().timeIntervalSince(started) < 3)
    }

    @Test func shellNotFound() {
        guard let user = Fleet.env["TSUBAME_TEST_SSH_NOSHELL_USER"] else { return }
        let (outcome, _) = runOne(Fleet.target(21, "echo never", user: user))
        #expect(failureKind(outcome) == .shellNotFound)
        #expect(failureMessage(outcome).contains("/bin/sh"))
    }

    @Test func timeoutKillsTheRemoteProcessGroup() throws {
        let pidFile = Fleet.tempPath("pid")
        let (runner, events) = makeRunner()
        defer { runner.stop() }
        let started = Date()
        runner.submit(Fleet.target(22, "sleep 300 & echo $! > \(pidFile); wait", timeout: 1))
        let pid = try #require(Fleet.readPid(pidFile))
        #expect(Fleet.alive(pid))
        let outcome = events.outcome(22, within: 10)
        #expect(outcome == .timedOut)
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed >= 1 && elapsed < 4, "took \(elapsed) s")
        #expect(Fleet.gone(pid), "the remote sleep \(pid) is still alive")
        #expect(runner.activeCount == 0)
    }

    @Test func cancelKillsTheRemoteProcessGroup() throws {
        let (runner, events) = makeRunner()
        defer { runner.stop() }
        // One plain, one that ignores SIGTERM (only the KILL a second later ends it).
        for (id, prefix) in [(Int64(23), ""), (Int64(24), "trap '' TERM; ")] {
            let pidFile = Fleet.tempPath("pid")
            runner.submit(Fleet.target(id, prefix + "sleep 300 & echo $! > \(pidFile); echo running; wait; wait"))
            let pid = try #require(Fleet.readPid(pidFile))
            #expect(events.waitOutput(id, contains: "running"))
            let asked = Date()
            runner.cancel(id: id)
            let outcome = events.outcome(id, within: 5)
            let took = Date().timeIntervalSince(asked)
            #expect(outcome == .cancelled)
            #expect(took < 2, "cancel took \(took) s")
            #expect(Fleet.gone(pid, within: 2), "the remote sleep \(pid) is still alive")
        }
        // Cancelling what is still connecting, and an unknown id.
        runner.submit(Fleet.target(25, "echo never"))
        runner.cancel(id: 25)
        runner.cancel(id: 999)
        #expect(events.outcome(25, within: 5) == .cancelled)
        #expect(events.output(25, .stdout) == "")
        #expect(runner.activeCount == 0)
    }

    @Test func fiftyConcurrentTargets() {
        let (runner, events) = makeRunner()
        defer { runner.stop() }
        let ports = Fleet.ports
        let started = Date()
        for i in 0..<50 {
            runner.submit(Fleet.target(Int64(100 + i), "echo \"target \(i)\"; sleep 0.2", port: ports[i % ports.count]))
        }
        let all = events.wait(60) { list in list.filter { if case .finished = $0 { return true }; return false }.count == 50 }
        #expect(all)
        for i in 0..<50 {
            let id = Int64(100 + i)
            #expect(events.outcome(id, within: 0) == .exited(0), "target \(i): \(String(describing: events.outcome(id, within: 0)))")
            #expect(events.output(id, .stdout) == "target \(i)\n")
        }
        // Concurrent: 50 × 0.2 s of sleep took far less than 10 s.
        #expect(Date().timeIntervalSince(started) < 8)
        #expect(runner.activeCount == 0)
    }

    @Test func concurrentTargetsShareAConnection() {
        let port = Fleet.ports[Fleet.ports.count > 2 ? 2 : 0]
        let (runner, events) = makeRunner()
        defer { runner.stop() }
        let mark = Fleet.logSize(port)
        let started = Date()
        for i in 0..<8 {
            runner.submit(Fleet.target(Int64(200 + i), "echo \"target \(i)\"; echo err\(i) >&2; sleep 0.5; exit \(i % 3)", port: port))
        }
        #expect(events.wait(20) { $0.filter { if case .finished = $0 { return true }; return false }.count == 8 })
        for i in 0..<8 {
            let id = Int64(200 + i)
            #expect(events.outcome(id, within: 0) == .exited(Int32(i % 3)))
            #expect(events.output(id, .stdout) == "target \(i)\n" && events.output(id, .stderr) == "err\(i)\n")
            #expect(events.hostKeys(id).count == 1 && events.started(id))
        }
        #expect(Date().timeIntervalSince(started) < 3, "they ran at once")
        #expect(runner.stats.connects == 1 && runner.stats.shared == 7)
        #expect(Fleet.connections(port, since: mark) == 1)

        // Over the limit per connection: another connection.
        let (small, more) = makeRunner(channels: 3)
        defer { small.stop() }
        for i in 0..<7 { small.submit(Fleet.target(Int64(210 + i), "echo \(i)", port: port)) }
        #expect(more.wait(20) { $0.filter { if case .finished = $0 { return true }; return false }.count == 7 })
        for i in 0..<7 { #expect(more.outcome(Int64(210 + i), within: 0) == .exited(0) && more.output(Int64(210 + i), .stdout) == "\(i)\n") }
        #expect(small.stats.connects == 3)
    }

    @Test func cancelOnASharedConnectionKillsOnlyThatTarget() throws {
        let (runner, events) = makeRunner()
        defer { runner.stop() }
        var pids: [Int64: pid_t] = [:]
        for id in Int64(220)...222 {
            let pidFile = Fleet.tempPath("pid")
            runner.submit(Fleet.target(id, "sleep \(id == 221 ? 300 : 2) & echo $! > \(pidFile); echo running; wait; echo done"))
            pids[id] = try #require(Fleet.readPid(pidFile))
        }
        for id in Int64(220)...222 { #expect(events.waitOutput(id, contains: "running")) }
        #expect(runner.stats.connects == 1)
        let asked = Date()
        runner.cancel(id: 221)
        #expect(events.outcome(221, within: 5) == .cancelled)
        #expect(Date().timeIntervalSince(asked) < 2)
        #expect(Fleet.gone(pids[221]!, within: 2))
        // The others ran on to their end.
        for id in [Int64(220), 222] {
            #expect(events.outcome(id, within: 10) == .exited(0))
            #expect(events.output(id, .stdout) == "running\ndone\n")
        }
        #expect(runner.stats.connects == 1)
    }

    @Test func lostConnectionEndsEveryTargetOnIt() throws {
        let port = Fleet.ports.last!
        let (runner, events) = makeRunner()
        defer { runner.stop() }
        var pids: [pid_t] = []
        for id in Int64(240)...242 {
            let pidFile = Fleet.tempPath("pid")
            runner.submit(Fleet.target(id, "sleep 30 & echo $! > \(pidFile); echo started; wait", port: port))
            pids.append(try #require(Fleet.readPid(pidFile)))
        }
        for id in Int64(240)...242 { #expect(events.waitOutput(id, contains: "started")) }
        #expect(runner.stats.connects == 1)
        for p in Fleet.connectionProcesses(port) { kill(p, SIGKILL) }
        for id in Int64(240)...242 {
            let outcome = events.outcome(id, within: 10)
            #expect(failureKind(outcome) == .disconnected)
            #expect(failureMessage(outcome).contains("127.0.0.1:\(port)"))
        }
        for pid in pids { kill(pid, SIGKILL) }
    }

    @Test func serverRefusingChannelsGetsMoreConnections() throws {
        // OpenSSH with MaxSessions 2: a third channel on a connection is refused.
        let (port, stop) = try Fleet.startSSHD(["MaxSessions=2"])
        defer { stop() }
        let (runner, events) = makeRunner()
        defer { runner.stop() }
        var pids: [Int64: pid_t] = [:]
        for id in Int64(230)...234 {
            let pidFile = Fleet.tempPath("pid")
            runner.submit(Fleet.target(id, "sleep \(id == 230 ? 300 : 1) & echo $! > \(pidFile); echo running; wait; echo done", port: port))
            pids[id] = try #require(Fleet.readPid(pidFile))
        }
        for id in Int64(230)...234 { #expect(events.waitOutput(id, contains: "running")) }
        #expect(runner.stats.connects >= 3)
        // Its connection is full (its own channel and another's): the kill goes over another connection.
        let asked = Date()
        runner.cancel(id: 230)
        #expect(events.outcome(230, within: 5) == .cancelled)
        #expect(Date().timeIntervalSince(asked) < 2)
        #expect(Fleet.gone(pids[230]!, within: 2), "the remote sleep was not killed")
        for id in Int64(231)...234 {
            #expect(events.outcome(id, within: 10) == .exited(0))
            #expect(events.output(id, .stdout) == "running\ndone\n")
        }
    }

    @Test func idleSessionIsReused() throws {
        let port = Fleet.ports[Fleet.ports.count > 1 ? 1 : 0]
        let (runner, events) = makeRunner(idle: 5)
        defer { runner.stop() }
        let mark = Fleet.logSize(port)
        runner.submit(Fleet.target(30, "echo one", port: port))
        #expect(events.outcome(30) == .exited(0))
        runner.submit(Fleet.target(31, "echo two", port: port))
        #expect(events.outcome(31) == .exited(0))
        #expect(events.output(31, .stdout) == "two\n")
        #expect(runner.stats.connects == 1 && runner.stats.reuses == 1)
        #expect(events.hostKeys(31).count == 1)
        usleep(100_000)
        #expect(Fleet.log(port, from: mark).components(separatedBy: "Connection from").count - 1 == 1)
        // Other credentials: another session.
        runner.submit(Fleet.target(32, "echo three", port: port, auth: .key(privateKey: try Fleet.keyText("TSUBAME_TEST_SSH_KEY_ED25519"),
                                                                               passphrase: nil)))
        #expect(events.outcome(32) == .exited(0))
        #expect(runner.stats.connects == 2)

        // The server drops the idle session: the next target connects again, transparently.
        for pid in Fleet.connectionProcesses(port) { kill(pid, SIGKILL) }
        usleep(200_000)
        runner.submit(Fleet.target(33, "echo four", port: port))
        #expect(events.outcome(33) == .exited(0))
        #expect(events.output(33, .stdout) == "four\n")
        #expect(runner.stats.connects == 3)
    }

    @Test func frozenIdleSessionIsReplaced() {
        let port = Fleet.ports[0]
        let (runner, events) = makeRunner(idle: 30)
        defer { runner.stop() }
        runner.submit(Fleet.target(36, "true", port: port))
        #expect(events.outcome(36) == .exited(0))
        // The server side of the idle session stops answering (as behind a NAT that forgot it).
        let frozen = Fleet.connectionProcesses(port)
        #expect(!frozen.isEmpty)
        for pid in frozen { kill(pid, SIGSTOP) }
        defer { for pid in frozen { kill(pid, SIGKILL); kill(pid, SIGCONT) } }
        let asked = Date()
        runner.submit(Fleet.target(37, "echo fresh", port: port, connectTimeout: 3))
        #expect(events.outcome(37) == .exited(0))
        #expect(events.output(37, .stdout) == "fresh\n")
        #expect(runner.stats.connects == 2 && runner.stats.reuses == 1)
        #expect(Date().timeIntervalSince(asked) < 3)
    }

    @Test func silentServerMidRunIsADisconnect() throws {
        let port = Fleet.ports[0]
        let pidFile = Fleet.tempPath("pid")
        let (runner, events) = makeRunner(keepalive: 1)
        defer { runner.stop() }
        runner.submit(Fleet.target(38, "sleep 30 & echo $! > \(pidFile); echo started; wait", port: port))
        #expect(events.waitOutput(38, contains: "started"))
        let frozen = Fleet.connectionProcesses(port)
        for pid in frozen { kill(pid, SIGSTOP) }
        defer { for pid in frozen { kill(pid, SIGKILL); kill(pid, SIGCONT) } }
        let outcome = events.outcome(38, within: 10)
        #expect(failureKind(outcome) == .disconnected)
        #expect(failureMessage(outcome).contains("keepalive"))
        if let pid = Fleet.readPid(pidFile) { kill(pid, SIGKILL) }
    }

    @Test func idleSessionCloses() {
        let (runner, events) = makeRunner(idle: 0.3)
        defer { runner.stop() }
        runner.submit(Fleet.target(34, "true"))
        #expect(events.outcome(34) == .exited(0))
        #expect(runner.stats.idleSessions == 1)
        usleep(800_000)
        #expect(runner.stats.idleSessions == 0)
        runner.submit(Fleet.target(35, "true"))
        #expect(events.outcome(35) == .exited(0))
        #expect(runner.stats.connects == 2 && runner.stats.reuses == 0)
    }

    @Test func sshdKilledMidRunIsADisconnect() throws {
        let port = Fleet.ports.last!
        let pidFile = Fleet.tempPath("pid")
        let (runner, events) = makeRunner()
        defer { runner.stop() }
        runner.submit(Fleet.target(40, "sleep 30 & echo $! > \(pidFile); echo started; wait", port: port))
        #expect(events.waitOutput(40, contains: "started"))
        let pid = Fleet.readPid(pidFile)
        let victims = Fleet.connectionProcesses(port)
        #expect(!victims.isEmpty)
        for p in victims { kill(p, SIGKILL) }
        let outcome = events.outcome(40, within: 10)
        #expect(failureKind(outcome) == .disconnected)
        #expect(failureMessage(outcome).contains("127.0.0.1:\(port)"))
        if let pid { kill(pid, SIGKILL) }
    }

    @Test func stopCancelsWhatRuns() {
        let (runner, events) = makeRunner()
        runner.submit(Fleet.target(41, "echo up; sleep 300"))
        #expect(events.waitOutput(41, contains: "up"))
        let asked = Date()
        runner.stop()
        #expect(events.outcome(41, within: 0) == .cancelled)
        #expect(Date().timeIntervalSince(asked) < 3)
        // After stop: refused at once.
        runner.submit(Fleet.target(42, "true"))
        #expect(events.outcome(42, within: 1) == .cancelled)
    }

    @Test func probe() throws {
        let ok = SSHProbe.test(host: Fleet.host, port: Fleet.port, username: Fleet.user, auth: .password(Fleet.password),
                               pinnedFingerprint: nil, connectTimeout: 5)
        #expect(ok.ok, "\(ok)")
        #expect(ok.fingerprint?.hasPrefix("SHA256:") == true && ok.algorithm != nil)
        #expect(ok.latencyMs > 0 && ok.latencyMs < 5000)
        #expect(ok.failure == nil && ok.error == nil)

        let pinned = SSHProbe.test(host: Fleet.host, port: Fleet.port, username: Fleet.user, auth: .password(Fleet.password),
                                   pinnedFingerprint: ok.fingerprint, connectTimeout: 5)
        #expect(pinned.ok)

        let wrong = SSHProbe.test(host: Fleet.host, port: Fleet.port, username: Fleet.user, auth: .password("nope"),
                                  pinnedFingerprint: nil, connectTimeout: 5)
        #expect(!wrong.ok && wrong.failure == .authFailed && wrong.error?.isEmpty == false)

        let changed = SSHProbe.test(host: Fleet.host, port: Fleet.port, username: Fleet.user, auth: .password(Fleet.password),
                                    pinnedFingerprint: "SHA256:" + String(repeating: "B", count: 43), connectTimeout: 5)
        #expect(!changed.ok && changed.failure == .hostKeyChanged)
        #expect(changed.fingerprint == ok.fingerprint)

        if let user = Fleet.env["TSUBAME_TEST_SSH_NOSHELL_USER"] {
            let noShell = SSHProbe.test(host: Fleet.host, port: Fleet.port, username: user, auth: .password(Fleet.password),
                                        pinnedFingerprint: nil, connectTimeout: 5)
            #expect(!noShell.ok && noShell.failure == .shellNotFound)
        }
    }

    @Test func noLeaksUnderRepeatedUse() {
        func openFiles() -> Int { ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count }
        func describeFiles() -> String {
            ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).sorted().map {
                "\($0)→" + ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) ?? "?")
            }.joined(separator: " ")
        }
        func rssKiB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ")[1]) ?? 0
        }
        func round(_ first: Int64) {
            let (runner, events) = makeRunner(idle: 0.2)
            for i in 0..<100 {
                let id = first + Int64(i)
                // Every fifth fails in a different way; the rest reuse or open sessions.
                let auth: SSHAuth = i % 5 == 4 ? .password("wrong") : .password(Fleet.password)
                runner.submit(Fleet.target(id, "echo \(i)", port: Fleet.ports[i % Fleet.ports.count], auth: auth))
                if i % 10 == 9 { _ = events.outcome(id, within: 20) }
            }
            _ = events.wait(30) { $0.filter { if case .finished = $0 { return true }; return false }.count == 100 }
            #expect(runner.activeCount == 0)
            runner.stop()
        }
        round(1000) // warm-up: lazily created state (libssh2, OpenSSL, Foundation)
        let files = openFiles(), rss = rssKiB()
        round(2000)
        round(3000)
        // The runner's thread lets go of its wake pipe just after stop() returns.
        for _ in 0..<100 where openFiles() > files { usleep(20_000) }
        // Other suites run in parallel and open files too: a leak per target would show as hundreds, not a few.
        #expect(openFiles() <= files + 10, "descriptors leaked: \(describeFiles())")
        #expect(rssKiB() - rss < 20_000, "RSS grew by \(rssKiB() - rss) KiB over 200 targets")
    }

    @Test(.enabled(if: Fleet.env["TSUBAME_TEST_SSH_BENCH"] == "1", "TSUBAME_TEST_SSH_BENCH=1 measures latency and 500 concurrent targets"))
    func benchmark() {
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        func measure(idle: Double, raw: Bool, _ n: Int = 30) -> Double {
            let (runner, events) = makeRunner(idle: idle)
            defer { runner.stop() }
            var times: [Double] = []
            for i in 0..<n {
                let id = Int64(5000 + i)
                let start = monotonicNow()
                if raw { runner.submit(Fleet.target(id, ""), rawCommand: "true") } else { runner.submit(Fleet.target(id, "true")) }
                #expect(events.outcome(id) == .exited(0))
                if i > 0 { times.append((monotonicNow() - start) * 1000) }
            }
            return median(times)
        }
        let coldRaw = measure(idle: 0, raw: true), warmRaw = measure(idle: 10, raw: true)
        let cold = measure(idle: 0, raw: false), warm = measure(idle: 10, raw: false)
        print(String(format: "ssh latency (median of 29): exec true: cold %.1f ms, warm %.1f ms; wrapped script: cold %.1f ms, warm %.1f ms",
                     coldRaw, warmRaw, cold, warm))

        let (runner, events) = makeRunner()
        defer { runner.stop() }
        let start = monotonicNow()
        for i in 0..<500 {
            runner.submit(Fleet.target(Int64(10_000 + i), "echo $((\(i) * 2)); sleep 1", port: Fleet.ports[i % Fleet.ports.count],
                                       connectTimeout: 60))
        }
        let all = events.wait(120) { $0.filter { if case .finished = $0 { return true }; return false }.count == 500 }
        let elapsed = monotonicNow() - start
        #expect(all)
        var ok = 0
        for i in 0..<500 where events.outcome(Int64(10_000 + i), within: 0) == .exited(0)
            && events.output(Int64(10_000 + i), .stdout) == "\(i * 2)\n" { ok += 1 }
        #expect(ok == 500)
        print(String(format: "ssh: 500 concurrent targets (each sleeps 1 s) on %d sshd: %d ok in %.1f s", Fleet.ports.count, ok, elapsed))

        // Memory over many targets (after the warm-up above).
        func rssKiB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            return Int(status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }?.split(separator: " ")[1] ?? "") ?? 0
        }
        let before = rssKiB()
        for round in 0..<5 {
            for i in 0..<200 {
                runner.submit(Fleet.target(Int64(20_000 + round * 1000 + i), "echo x", port: Fleet.ports[i % Fleet.ports.count]))
            }
            _ = events.wait(60) { $0.filter { if case .finished = $0 { return true }; return false }.count == 500 + (round + 1) * 200 }
            print("ssh: after \((round + 1) * 200) more targets: RSS \(rssKiB() - before) KiB above the start")
        }
    }

    @Test func privateKeyKinds() throws {
        #expect(PrivateKeyKind(privateKey: try Fleet.keyText("TSUBAME_TEST_SSH_KEY_RSA")) == .rsa)
        #expect(PrivateKeyKind(privateKey: try Fleet.keyText("TSUBAME_TEST_SSH_KEY_ECDSA")) == .ecdsa)
        #expect(PrivateKeyKind(privateKey: try Fleet.keyText("TSUBAME_TEST_SSH_KEY_ED25519")) == .ed25519)
        #expect(PrivateKeyKind(privateKey: try Fleet.keyText("TSUBAME_TEST_SSH_KEY_ED25519_PASSPHRASE")) == .ed25519)
        #expect(PrivateKeyKind(privateKey: "garbage") == .unknown)
    }
}

/// Pure helpers; no fleet needed.
struct SSHHelperTests {
    @Test func quotingAndNames() {
        #expect(Shell.quote("it's") == "'it'\\''s'")
        #expect(Shell.isValidName("_A1") && Shell.isValidName("path") && !Shell.isValidName("1A") && !Shell.isValidName("A-B")
                && !Shell.isValidName(""))
        #expect(HostKey.normalize("abc=") == "SHA256:abc" && HostKey.normalize("SHA256:abc") == "SHA256:abc"
                && HostKey.normalize(" sha256:abc ") == "SHA256:abc")
        #expect(HostKey.format(sha256: Data(repeating: 0, count: 32)) == "SHA256:" + String(repeating: "A", count: 43))
    }
}
