// SPDX-License-Identifier: MIT
// Running shell scripts on many servers over SSH, with libssh2 behind Swift
// types: no C type appears in this module's public interface.
//
// One event-loop thread (SSHRunner) drives every connection in non-blocking
// mode with poll(); see Engine.swift for the state machines, how jobs share
// connections, and the remote wrapper.

public import Foundation

/// How to log in.
public enum SSHAuth: Sendable {
    case password(String)
    /// A private key in PEM or OpenSSH format, with its passphrase when it is encrypted.
    case key(privateKey: String, passphrase: String?)
}

/// One script to run on one server.
public struct SSHTarget: Sendable {
    /// An opaque key chosen by the caller (e.g. an execution target id); it names the events.
    public var id: Int64
    public var host: String
    public var port: Int
    public var username: String
    public var auth: SSHAuth
    /// "SHA256:<unpadded base64>" as `ssh-keygen -lf` prints it; nil = trust on first use.
    public var pinnedFingerprint: String?
    /// Shell script text, run by /bin/sh on the server. A small one goes on the
    /// command line; a larger one travels on the channel's stdin, so its size is not limited by ARG_MAX.
    public var script: String
    /// Exported before the script runs. The values travel on the channel's stdin
    /// (or in the script's private file), never on the command line, which other
    /// users of the server can see; this does not rely on sshd's AcceptEnv.
    public var environment: [(String, String)]
    /// Wall time from the start of the remote command; then its process group is killed → `.timedOut`.
    public var timeout: TimeInterval
    /// TCP connect + SSH handshake + authentication (name resolution included).
    public var connectTimeout: TimeInterval

    public init(id: Int64, host: String, port: Int = 22, username: String, auth: SSHAuth, pinnedFingerprint: String? = nil,
                script: String, environment: [(String, String)] = [], timeout: TimeInterval = 3600, connectTimeout: TimeInterval = 10) {
        self.id = id
        self.host = host
        self.port = port
        self.username = username
        self.auth = auth
        self.pinnedFingerprint = pinnedFingerprint
        self.script = script
        self.environment = environment
        self.timeout = timeout
        self.connectTimeout = connectTimeout
    }
}

public enum SSHStream: Sendable, Equatable {
    case stdout, stderr
}

/// What went wrong, in kinds a user can act on.
public enum SSHFailureKind: String, Sendable {
    case dns, refused, unreachable, timeout, hostKeyChanged, authFailed, rsaSHA1Refused, shellNotFound, protocolError, disconnected
}

public enum SSHOutcome: Sendable, Equatable {
    /// The script exited with this status.
    case exited(Int32)
    /// The script was killed by this signal ("TERM", "KILL", ...), not by us.
    case signaled(String)
    /// It ran longer than `timeout`; its process group was killed.
    case timedOut
    /// `cancel(id:)` or `stop()`; its process group was killed.
    case cancelled
    /// It could not run or the connection broke; the message names host:port and says what to do.
    case failed(SSHFailureKind, String)
}

/// What a runner reports, on its event-loop thread, in this order per target:
/// `hostKey`? → `started`? → `output`* → `finished` (exactly once).
public enum SSHEvent: Sendable {
    /// The server's host key, before any credential is sent. `firstUse`: the
    /// target had no pinned key, so the caller should pin this one.
    case hostKey(id: Int64, algorithm: String, fingerprint: String, firstUse: Bool)
    /// The remote command is running; `connectMs` is the time from submit to here.
    case started(id: Int64, connectMs: Double)
    /// Bytes as they arrived; the caller batches them.
    case output(id: Int64, stream: SSHStream, bytes: [UInt8])
    /// `durationMs` is the time from submit to here.
    case finished(id: Int64, outcome: SSHOutcome, durationMs: Double)

    public var id: Int64 {
        switch self {
        case let .hostKey(id, _, _, _), let .started(id, _), let .output(id, _, _), let .finished(id, _, _): return id
        }
    }
}

/// Counters since the runner started.
public struct SSHRunnerStats: Sendable, Equatable {
    /// TCP connections opened (each with a handshake and authentication).
    public var connects = 0
    /// Targets that ran on an idle session kept from an earlier target.
    public var reuses = 0
    /// Targets that opened their channel on a connection other targets were using (or still opening).
    public var shared = 0
    /// Authenticated sessions waiting for the next target on their server.
    public var idleSessions = 0
}

/// Runs targets concurrently on one event-loop thread.
///
/// `onEvent` is called on that thread; it may block briefly (that is the
/// back-pressure: no output is read meanwhile), and it may call `submit` and `cancel`.
public final class SSHRunner: @unchecked Sendable {
    private let engine: Engine
    private let inbox: Inbox
    private let lock = NSLock()
    private var thread: Thread?
    private let done = DispatchSemaphore(value: 0)
    private var state = 0 // 0 new, 1 running, 2 stopped

    /// - idleSessionSeconds: keep an authenticated session per (host, port,
    ///   user, credentials) open this long after a target finished, for the
    ///   next target on that server (0 = close at once).
    /// - keepaliveSeconds: SSH keepalive interval on authenticated sessions
    ///   (0 = off); a session that answers nothing for three intervals while a
    ///   command runs is reported as `.disconnected`.
    /// - channelsPerConnection: targets on the same server with the same
    ///   account and credentials share one connection, a channel each, up to
    ///   this many (a server that allows fewer sessions per connection gets more connections).
    public init(idleSessionSeconds: Double = 0, keepaliveSeconds: Int = 15, channelsPerConnection: Int = 8,
                onEvent: @escaping @Sendable (SSHEvent) -> Void) {
        inbox = Inbox()
        engine = Engine(inbox: inbox, idleSeconds: idleSessionSeconds, keepaliveSeconds: keepaliveSeconds,
                        channelsPerConnection: channelsPerConnection, onEvent: onEvent)
    }

    /// Starts the event-loop thread (once). Raises RLIMIT_NOFILE's soft limit to the hard one.
    public func start() {
        lock.lock()
        defer { lock.unlock() }
        guard state == 0 else { return }
        state = 1
        Engine.raiseFileLimit()
        let engine = self.engine, done = self.done
        let t = Thread {
            Thread.current.name = "tsubame-ssh"
            engine.run(untilEmpty: false)
            done.signal()
        }
        t.stackSize = 1 << 20
        thread = t
        t.start()
    }

    /// Queues a target; it runs concurrently with all others. Thread-safe.
    public func submit(_ target: SSHTarget) {
        inbox.submit(target)
    }

    /// Runs `command` as it is (no wrapper, no script on stdin, no process
    /// group to kill): the probe's `true`, and latency measurements.
    func submit(_ target: SSHTarget, rawCommand command: String) {
        inbox.submit(target, rawCommand: command)
    }

    /// Kills the remote process group of the target(s) with this id and
    /// reports `.finished(.cancelled)` within about 2 s. Thread-safe; no-op for unknown ids.
    public func cancel(id: Int64) {
        inbox.cancel(id)
    }

    /// Cancels everything that runs, closes idle sessions and joins the thread.
    public func stop() {
        lock.lock()
        let wasRunning = state == 1
        state = 2
        lock.unlock()
        inbox.stop()
        if wasRunning {
            done.wait()
        } else {
            // Never started: what was queued is not going to run.
            for target in inbox.close() {
                inbox.finished()
                engine.onEvent(.finished(id: target.id, outcome: .cancelled, durationMs: 0))
            }
        }
    }

    /// Targets submitted and not yet finished.
    public var activeCount: Int { inbox.active }

    public var stats: SSHRunnerStats { inbox.stats }
}

public struct SSHProbeResult: Sendable {
    public var ok: Bool
    public var latencyMs: Double
    /// The host key seen (also when it did not match the pinned one).
    public var algorithm: String?
    public var fingerprint: String?
    public var failure: SSHFailureKind?
    public var error: String?
}

public enum SSHProbe {
    /// Blocking: connect, handshake, host key check, authenticate, `exec true`.
    /// For POST /servers/{id}/test. A changed host key fails before any
    /// credential is sent; `fingerprint` then holds the new key for the admin to verify.
    public static func test(host: String, port: Int, username: String, auth: SSHAuth, pinnedFingerprint: String?,
                            connectTimeout: TimeInterval) -> SSHProbeResult {
        let target = SSHTarget(id: 1, host: host, port: port, username: username, auth: auth, pinnedFingerprint: pinnedFingerprint,
                               script: "", timeout: max(connectTimeout, 5), connectTimeout: connectTimeout)
        let box = ProbeBox()
        let engine = Engine(inbox: Inbox(), idleSeconds: 0, keepaliveSeconds: 0) { event in box.record(event) }
        engine.inbox.submit(target, rawCommand: "true")
        engine.run(untilEmpty: true)
        return box.result(engine.lastHostKey)
    }
}

private final class ProbeBox: @unchecked Sendable {
    var outcome: SSHOutcome = .failed(.protocolError, "no result")
    var duration = 0.0
    var stderr: [UInt8] = []

    func record(_ event: SSHEvent) {
        switch event {
        case let .finished(_, outcome, durationMs): self.outcome = outcome; duration = durationMs
        case let .output(_, .stderr, bytes): if stderr.count < 4096 { stderr += bytes.prefix(4096 - stderr.count) }
        default: break
        }
    }

    func result(_ key: HostKey?) -> SSHProbeResult {
        var r = SSHProbeResult(ok: false, latencyMs: duration, algorithm: key?.algorithm, fingerprint: key?.fingerprint)
        switch outcome {
        case .exited(0): r.ok = true
        case let .exited(code):
            let text = String(decoding: stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            r.failure = code == 127 ? .shellNotFound : .protocolError
            r.error = "`true` exited with status \(code)" + (text.isEmpty ? "" : ": \(text)")
        case let .signaled(name): r.failure = .protocolError; r.error = "`true` was killed by SIG\(name)"
        case .timedOut: r.failure = .timeout; r.error = "`true` did not finish in time"
        case .cancelled: r.failure = .protocolError; r.error = "cancelled"
        case let .failed(kind, message): r.failure = kind; r.error = message
        }
        return r
    }
}
