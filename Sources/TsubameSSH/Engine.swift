// SPDX-License-Identifier: MIT
// The event loop: one thread, many SSH sessions, libssh2 in non-blocking mode
// and poll() on every socket (the directions from
// libssh2_session_block_directions) plus a wake pipe.
//
// Each target is a Job, a state machine:
//   resolve → TCP connect → handshake → host key check → auth      (a Conn)
//   → open channel → exec the wrapper → script on stdin, EOF
//   → read stdout/stderr until EOF → close → exit status / signal  (the Job)
// A Conn serves one Job at a time; with idleSeconds > 0 it is parked after a
// clean finish and the next Job for the same (host, port, user, credentials)
// opens a new channel on it instead of connecting again.
//
// The remote side. The command line only carries a small wrapper, run by
// /bin/sh (through the user's login shell, which `exec`s it, so it is the
// session leader sshd created with setsid(): its pid is the process group):
//   f=$(mktemp) || exit 125; echo "tsubame-pgid:$$:$f"; cat >"$f" || exit 125;
//   /bin/sh "$f" </dev/null; exit $?
// The script (of any size: it is not an argument) comes on stdin, after a
// line that removes the file once the shell has it open (`rm -f -- "$0"`) and
// `export NAME='value'` lines for the environment. The marker line tells the
// process group to kill on cancel/timeout (a second channel runs
// `kill -s TERM -- -PGID; sleep 1; kill -s KILL -- -PGID`); it is removed
// from stdout. No marker before the command ends = the login shell could not
// run /bin/sh (`.shellNotFound`). The script runs under /bin/sh whatever its
// first line says (a `#!` line is a comment to it).
//
// The end of a command. OpenSSH may send EOF before the exit status (the
// pipes close, then the child is reaped), but it always sends exit-status
// (or exit-signal) before its CHANNEL_CLOSE, even when we closed first. So:
// read until libssh2 reports EOF, then libssh2_channel_close (which waits
// for the server's close), then read the status. Closing earlier than EOF
// would cut the script's output pipes.

import Foundation
internal import CLibSSH2
import TsubameCore

/// The idle-session key: the same server, account and credentials (compared
/// exactly, in memory only).
struct PoolKey: Hashable {
    var host: String
    var port: Int
    var username: String
    var credentials: String

    init(_ t: SSHTarget) {
        host = t.host.lowercased()
        port = t.port
        username = t.username
        switch t.auth {
        case let .password(p): credentials = "password\0" + p
        case let .key(k, pass): credentials = "key\0" + k + "\0" + (pass ?? "")
        }
    }
}

/// Calls `body` again while it answers EAGAIN, at most `times` times in all
/// (for calls that need no answer from the peer and so finish at once).
func retry(_ times: Int, _ body: () -> Int32) {
    var n = 0
    while n < times && body() == LIBSSH2_ERROR_EAGAIN { n += 1 }
}

/// One TCP connection and its libssh2 session.
final class Conn {
    let key: PoolKey
    let label: String
    var fd: Int32 = -1
    var session: OpaquePointer?
    var addresses: [Address] = []
    var addressIndex = 0
    var lastConnectError: SSHError?
    var hostKey: HostKey?
    var authenticated = false
    var idleSince = 0.0
    /// Idle, and the server sent something we cannot consume without a channel.
    var idleDataPending = false
    var lastInbound = 0.0
    var nextKeepalive = 0.0

    init(key: PoolKey) {
        self.key = key
        label = key.host.contains(":") ? "[\(key.host)]:\(key.port)" : "\(key.host):\(key.port)"
    }

    /// Sends a disconnect when `polite`, then frees the session and closes the socket.
    func close(polite: Bool) {
        if let s = session {
            if polite && authenticated {
                retry(4) { libssh2_session_disconnect_ex(s, SSH_DISCONNECT_BY_APPLICATION, "done", "") }
            }
            // With the socket shut down, nothing in the free path can wait for the peer.
            if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
            retry(16) { libssh2_session_free(s) }
            session = nil
        }
        if fd >= 0 {
            Foundation.close(fd)
            fd = -1
        }
        authenticated = false
    }
}

enum Phase {
    case resolving, connecting, handshake, auth, openChannel, exec, sendStdin, sendEOF, running, closing, waitClosed
}

enum KillPhase {
    case none, open, exec, sent
}

enum Marker {
    /// Looking for the marker line; holds a partial line that may be its start.
    case searching([UInt8])
    case found
    /// Raw commands (the probe) have none.
    case none
}

final class Job {
    let serial: Int
    let target: SSHTarget
    let key: PoolKey
    let raw: Bool
    let submitted: Double
    var phase = Phase.resolving
    var conn: Conn
    var reused = false
    var retried = false
    var connectDeadline: Double
    /// When more addresses are left, each connect attempt gets its share of the connect timeout.
    var attemptDeadline = Double.infinity
    /// A reused session must open a channel by then, or it is taken for dead and replaced.
    var reuseDeadline = Double.infinity
    /// Stepped since the last poll: its socket's TCP_QUICKACK needs re-arming.
    var touched = true
    var channel: OpaquePointer?
    var killChannel: OpaquePointer?
    var killPhase = KillPhase.none
    var killCommand: CBuffer?
    let command: CBuffer
    let user: CBuffer
    let secret: CBuffer
    let passphrase: CBuffer?
    let keyKind: PrivateKeyKind?
    var stdin: [UInt8] = []
    var stdinOffset = 0
    var started = false
    var execStart = 0.0
    var stopReason: SSHOutcome?
    var killDeadline = Double.infinity
    var marker: Marker
    var pgid: Int32 = 0
    var tempFile: String?
    var stderrHead: [UInt8] = []
    var needsStep = false
    var finished = false

    init(serial: Int, target: SSHTarget, raw: String?, now: Double) {
        self.serial = serial
        self.target = target
        key = PoolKey(target)
        self.raw = raw != nil
        submitted = now
        connectDeadline = now + max(target.connectTimeout, 0.001)
        conn = Conn(key: key)
        marker = raw == nil ? .searching([]) : .none
        command = CBuffer(raw ?? Job.wrapper)
        user = CBuffer(target.username)
        switch target.auth {
        case let .password(p):
            secret = CBuffer(p, secret: true)
            passphrase = nil
            keyKind = nil
        case let .key(k, pass):
            secret = CBuffer(k, secret: true)
            // Never NULL: OpenSSL would then ask for a passphrase on the terminal.
            passphrase = CBuffer(pass ?? "", secret: true)
            keyKind = PrivateKeyKind(privateKey: k)
        }
    }

    static let markerPrefix = Array("tsubame-pgid:".utf8)
    /// The script removes its own file first thing (see `begin`), so the wrapper does not need to.
    /// `exit $?` keeps the wrapper alive as the script's parent (no exec of the last command).
    static let wrapper = "exec /bin/sh -c 'f=$(mktemp) || exit 125; echo \"tsubame-pgid:$$:$f\"; cat >\"$f\" || exit 125; "
        + "/bin/sh \"$f\" </dev/null; exit $?'"

    var label: String { conn.label }
}

final class Engine: @unchecked Sendable {
    let inbox: Inbox
    let idleSeconds: Double
    let keepaliveSeconds: Int
    let onEvent: @Sendable (SSHEvent) -> Void
    private var jobs: [Int: Job] = [:]
    private var idle: [PoolKey: Conn] = [:]
    private var serial = 0
    private var stopping = false
    private var stopDeadline = Double.infinity
    private lazy var resolver = Resolver(inbox: inbox)
    private var buffer = [UInt8](repeating: 0, count: 32768)
    /// The host key of the last handshake (the probe reports it).
    private(set) var lastHostKey: HostKey?

    /// What a server may send ahead of our reading, per job: this bounds the memory of a job that prints a lot.
    static let windowSize: UInt32 = 1024 * 1024
    static let packetSize: UInt32 = 32768
    /// Output bytes read from one job before the others get their turn.
    static let readQuantum = 256 * 1024
    /// From cancel/timeout to `.finished` at the latest.
    static let killGrace = 1.8

    init(inbox: Inbox, idleSeconds: Double, keepaliveSeconds: Int, onEvent: @escaping @Sendable (SSHEvent) -> Void) {
        precondition(LibSSH2.initialized, "libssh2_init failed")
        self.inbox = inbox
        self.idleSeconds = idleSeconds
        self.keepaliveSeconds = max(0, keepaliveSeconds)
        self.onEvent = onEvent
        inbox.onRejected = onEvent
    }

    /// Many sessions = many sockets: use all the descriptors the hard limit allows.
    static func raiseFileLimit() {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }

    // MARK: - the loop

    /// Runs until stopped, or (untilEmpty) until nothing is left to do.
    func run(untilEmpty: Bool) {
        var fds: [pollfd] = []
        var owners: [(Job?, Conn?)] = []
        while true {
            intake()
            timers()
            let ready = jobs.values.filter { $0.needsStep }
            for job in ready where !job.finished {
                job.needsStep = false
                step(job)
            }
            if stopping && jobs.isEmpty { break }
            if untilEmpty && jobs.isEmpty && inbox.active == 0 { break }

            // What to wait for.
            let now = monotonicNow()
            var deadline = now + 1
            fds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: inbox.wakeRead, events: Int16(POLLIN), revents: 0))
            owners.append((nil, nil))
            var quickAck: Int32 = 1
            for job in jobs.values {
                if job.needsStep { deadline = now }
                deadline = min(deadline, job.started ? min(job.execStart + job.target.timeout, job.killDeadline)
                                                     : min(job.connectDeadline, job.attemptDeadline, job.reuseDeadline))
                if job.conn.nextKeepalive > 0 { deadline = min(deadline, job.conn.nextKeepalive) }
                let fd = job.conn.fd
                guard fd >= 0, job.phase != .resolving else { continue }
                var events = Int16(POLLIN)
                if job.phase == .connecting {
                    events = Int16(POLLOUT)
                } else if let s = job.conn.session {
                    let dirs = libssh2_session_block_directions(s)
                    if dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { events = Int16(POLLOUT) | (dirs & LIBSSH2_SESSION_BLOCK_INBOUND != 0 ? Int16(POLLIN) : 0) }
                    // Our ACKs must not wait for the delayed-ACK timer (40 ms per command otherwise).
                    // The kernel drops the flag as traffic flows: re-arm it on sockets that saw some.
                    if job.touched {
                        setsockopt(fd, Int32(IPPROTO_TCP), TCP_QUICKACK, &quickAck, socklen_t(MemoryLayout<Int32>.size))
                        job.touched = false
                    }
                }
                fds.append(pollfd(fd: fd, events: events, revents: 0))
                owners.append((job, nil))
            }
            for conn in idle.values {
                deadline = min(deadline, conn.idleSince + idleSeconds)
                if conn.nextKeepalive > 0 { deadline = min(deadline, conn.nextKeepalive) }
                guard !conn.idleDataPending else { continue }
                fds.append(pollfd(fd: conn.fd, events: Int16(POLLIN), revents: 0))
                owners.append((nil, conn))
            }
            if stopping { deadline = min(deadline, stopDeadline) }
            let timeoutMs = Int32(max(0, min(1000, ((deadline - now) * 1000).rounded(.up))))
            let n = poll(&fds, nfds_t(fds.count), timeoutMs)
            if n < 0 && errno != EINTR {
                Log.error("ssh: poll failed", [("error", .string(String(cString: strerror(errno))))])
                usleep(10_000)
                continue
            }
            guard n > 0 else { continue }
            let after = monotonicNow()
            for (i, p) in fds.enumerated() where p.revents != 0 {
                switch owners[i] {
                case let (job?, _):
                    guard !job.finished else { continue }
                    if p.revents & Int16(POLLIN) != 0 { job.conn.lastInbound = after }
                    step(job, revents: p.revents)
                case let (nil, conn?):
                    idleReadable(conn)
                default:
                    inbox.drainWake()
                }
            }
        }
        for conn in idle.values { conn.close(polite: true) }
        idle.removeAll()
        inbox.count(idle: 0)
        for target in inbox.close() {
            inbox.finished()
            onEvent(.finished(id: target.id, outcome: .cancelled, durationMs: 0))
        }
    }

    /// New targets, cancels, resolved names, stop.
    private func intake() {
        let batch = inbox.take()
        let now = monotonicNow()
        for (target, raw) in batch.targets {
            serial += 1
            let job = Job(serial: serial, target: target, raw: raw, now: now)
            jobs[job.serial] = job
            if stopping {
                finish(job, .cancelled)
                continue
            }
            begin(job)
        }
        for (serial, result) in batch.resolved {
            guard let job = jobs[serial], !job.finished, job.phase == .resolving else { continue }
            switch result {
            case let .success(addresses):
                job.conn.addresses = addresses
                connect(job)
            case let .failure(error):
                finish(job, .failed(error.kind, error.message))
            }
        }
        for id in batch.cancels {
            for job in jobs.values where job.target.id == id && !job.finished {
                requestStop(job, .cancelled)
            }
        }
        if batch.stopping && !stopping {
            stopping = true
            stopDeadline = now + 3
            for job in jobs.values where !job.finished { requestStop(job, .cancelled) }
            for conn in idle.values { conn.close(polite: true) }
            idle.removeAll()
            inbox.count(idle: 0)
        }
    }

    private func timers() {
        let now = monotonicNow()
        for job in jobs.values where !job.finished {
            if !job.started {
                if now >= job.connectDeadline && job.stopReason == nil {
                    finish(job, .failed(.timeout, timeoutMessage(job)))
                    continue
                }
                if job.reused && job.phase == .openChannel && now >= job.reuseDeadline && !job.retried {
                    // A silently dead session (a NAT forgot it, the host froze). No command was sent
                    // on it, so starting over on a new connection cannot run the script twice.
                    reconnect(job)
                    continue
                }
                if job.phase == .connecting && now >= job.attemptDeadline {
                    // This address does not answer: try the next one (IPv6 first, then IPv4, ...).
                    job.attemptDeadline = .infinity
                    connectFailed(job, ETIMEDOUT)
                    connect(job)
                    if job.finished { continue }
                }
            } else if job.stopReason == nil && now >= job.execStart + job.target.timeout {
                requestStop(job, .timedOut)
            }
            if let reason = job.stopReason, now >= job.killDeadline {
                finish(job, reason)
                continue
            }
            if job.finished { continue }
            if stopping && now >= stopDeadline {
                finish(job, job.stopReason ?? .cancelled)
                continue
            }
            keepalive(job.conn, now: now, job: job)
        }
        for (key, conn) in idle where now >= conn.idleSince + idleSeconds {
            idle[key] = nil
            conn.close(polite: true)
            inbox.count(idle: idle.count)
        }
        for conn in idle.values { keepalive(conn, now: now, job: nil) }
    }

    private func keepalive(_ conn: Conn, now: Double, job: Job?) {
        guard keepaliveSeconds > 0, conn.authenticated, let s = conn.session, conn.nextKeepalive > 0, now >= conn.nextKeepalive else { return }
        if let job, job.started, job.stopReason == nil, now - conn.lastInbound > Double(3 * keepaliveSeconds) + 1 {
            finish(job, .failed(.disconnected, "\(conn.label) stopped answering (no reply to keepalives for \(3 * keepaliveSeconds) s) "
                                + "while the job was running; the host or the network may be down, and the job may still be running there"))
            return
        }
        // Not in the middle of sending a packet: keepalive_send would interleave.
        if libssh2_session_block_directions(s) & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 {
            conn.nextKeepalive = now + 0.5
            return
        }
        var next: Int32 = 0
        let rc = libssh2_keepalive_send(s, &next)
        conn.nextKeepalive = now + Double(max(1, rc == 0 ? Int(next) : keepaliveSeconds))
    }

    // MARK: - starting

    private func begin(_ job: Job) {
        let t = job.target
        for (name, _) in t.environment where !Shell.isValidName(name) {
            finish(job, .failed(.protocolError, "environment variable name \"\(name)\" is not valid for \(job.label) "
                                + "(letters, digits and _, not starting with a digit)"))
            return
        }
        if !job.raw {
            // The file removes itself as soon as the shell has it open; the kill command removes it too.
            var text = "rm -f -- \"$0\"\n"
            for (name, value) in t.environment { text += "export \(name)=\(Shell.quote(value))\n" }
            job.stdin = Array(text.utf8) + Array(t.script.utf8)
        }
        if let conn = idle.removeValue(forKey: job.key) {
            inbox.count(reuse: true, idle: idle.count)
            job.conn = conn
            job.reused = true
            job.reuseDeadline = monotonicNow() + min(2, max(job.target.connectTimeout / 3, 0.2))
            if let s = conn.session { libssh2_keepalive_config(s, 1, UInt32(keepaliveSeconds)) }
            conn.lastInbound = monotonicNow()
            if checkHostKey(job) {
                job.phase = .openChannel
                job.needsStep = true
            }
            return
        }
        guard (1...65535).contains(t.port) else {
            finish(job, .failed(.unreachable, "\(job.label): the port must be between 1 and 65535"))
            return
        }
        job.phase = .resolving
        switch Resolver.lookup(host: t.host, port: t.port, numericOnly: true) {
        case let .success(addresses) where !addresses.isEmpty:
            job.conn.addresses = addresses
            connect(job)
        case let .failure(error):
            finish(job, .failed(error.kind, error.message))
        default:
            resolver.resolve(serial: job.serial, host: t.host, port: t.port)
        }
    }

    /// A fresh connection for a job whose reused session turned out dead.
    private func reconnect(_ job: Job) {
        Log.debug("ssh: idle session was dead; connecting again", [("server", .string(job.label))])
        job.conn.close(polite: false)
        job.conn = Conn(key: job.key)
        job.reused = false
        job.retried = true
        job.reuseDeadline = .infinity
        job.channel = nil
        job.connectDeadline = monotonicNow() + max(job.target.connectTimeout, 0.001)
        job.phase = .resolving
        begin(job)
    }

    /// Non-blocking connect to the next address.
    private func connect(_ job: Job) {
        let conn = job.conn
        while conn.addressIndex < conn.addresses.count {
            let address = conn.addresses[conn.addressIndex]
            let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                let why = String(cString: strerror(errno))
                finish(job, .failed(.unreachable, "cannot open a socket for \(conn.label): \(why) (too many open files?)"))
                return
            }
            conn.fd = fd
            inbox.count(connect: true)
            let rc = address.bytes.withUnsafeBytes { raw in
                Foundation.connect(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
            }
            if rc == 0 {
                connected(job)
                return
            }
            if errno == EINPROGRESS {
                job.phase = .connecting
                let now = monotonicNow(), left = conn.addresses.count - conn.addressIndex
                job.attemptDeadline = left > 1 ? now + (job.connectDeadline - now) / Double(left) : .infinity
                return
            }
            connectFailed(job, errno)
        }
        finish(job, .failed(conn.lastConnectError?.kind ?? .unreachable, conn.lastConnectError?.message ?? "\(conn.label): no address to connect to"))
    }

    private func connectFailed(_ job: Job, _ code: Int32) {
        let conn = job.conn
        let address = conn.addressIndex < conn.addresses.count ? conn.addresses[conn.addressIndex].description : "?"
        let why = String(cString: strerror(code))
        let via = address == conn.key.host ? "" : " (\(address))"
        let error: SSHError
        switch code {
        case ECONNREFUSED:
            error = SSHError(kind: .refused, message: "\(conn.label)\(via) refused the connection: is sshd running and listening on port \(conn.key.port)?")
        case ETIMEDOUT:
            error = SSHError(kind: .timeout, message: "connecting to \(conn.label)\(via) timed out: \(why)")
        default:
            error = SSHError(kind: .unreachable, message: "cannot connect to \(conn.label)\(via): \(why)")
        }
        conn.lastConnectError = error
        Foundation.close(conn.fd)
        conn.fd = -1
        conn.addressIndex += 1
    }

    private func connected(_ job: Job) {
        let conn = job.conn
        var one: Int32 = 1
        // libssh2 never sets it: every small packet would wait for the peer's delayed ACK.
        setsockopt(conn.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        guard let s = libssh2_session_init_ex(nil, nil, nil, nil) else {
            finish(job, .failed(.protocolError, "libssh2_session_init failed (out of memory?) for \(conn.label)"))
            return
        }
        libssh2_session_set_blocking(s, 0)
        conn.session = s
        conn.lastInbound = monotonicNow()
        job.phase = .handshake
        job.needsStep = true
    }

    /// Compares the session's host key with the pinned one and reports it.
    /// False (and the job failed) when it changed: no credential was sent.
    private func checkHostKey(_ job: Job) -> Bool {
        guard let key = job.conn.hostKey else {
            finish(job, .failed(.protocolError, "\(job.label) sent no host key"))
            return false
        }
        lastHostKey = key
        if let pinned = job.target.pinnedFingerprint, HostKey.normalize(pinned) != key.fingerprint {
            finish(job, .failed(.hostKeyChanged, "the host key of \(job.label) has changed: the server now presents \(key.algorithm) "
                                + "\(key.fingerprint), but \(pinned) is pinned. This can be a man-in-the-middle attack, or the "
                                + "server was reinstalled. Verify the new key on the server (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                                + "then have an admin clear the pinned key (PATCH the server with {\"host_key\": null}). "
                                + "No credential was sent."))
            return false
        }
        onEvent(.hostKey(id: job.target.id, algorithm: key.algorithm, fingerprint: key.fingerprint, firstUse: job.target.pinnedFingerprint == nil))
        return !job.finished
    }

    // MARK: - the state machine

    private func requestStop(_ job: Job, _ reason: SSHOutcome) {
        guard job.stopReason == nil, !job.finished else { return }
        switch job.phase {
        case .resolving, .connecting, .handshake, .auth, .openChannel:
            // Nothing runs remotely yet.
            finish(job, reason)
        default:
            job.stopReason = reason
            job.killDeadline = monotonicNow() + Engine.killGrace
            job.needsStep = true
        }
    }

    private func step(_ job: Job, revents: Int16 = 0) {
        job.touched = true
        do throws(SSHError) {
            if job.phase == .connecting {
                guard revents != 0 else { return }
                var code: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(job.conn.fd, SOL_SOCKET, SO_ERROR, &code, &len)
                if code == 0 {
                    connected(job)
                } else {
                    connectFailed(job, code)
                    connect(job)
                    return
                }
            }
            try advance(job)
        } catch {
            fail(job, error)
        }
    }

    /// Runs the job's state machine until it would block or ends.
    private func advance(_ job: Job) throws(SSHError) {
        let conn = job.conn
        guard let s = conn.session else { return }
        if job.killPhase != .none || job.stopReason != nil { try advanceKill(job, s) }
        if job.finished { return }
        while !job.finished {
            switch job.phase {
            case .resolving, .connecting:
                return
            case .handshake:
                guard try check(libssh2_session_handshake(s, conn.fd), "SSH handshake with \(conn.label)", s) else { return }
                conn.hostKey = HostKey(session: s)
                guard checkHostKey(job) else { return }
                job.phase = .auth
            case .auth:
                guard try authenticate(job, s) else { return }
                conn.authenticated = true
                if keepaliveSeconds > 0 {
                    libssh2_keepalive_config(s, 1, UInt32(keepaliveSeconds))
                    conn.nextKeepalive = monotonicNow() + Double(keepaliveSeconds)
                }
                job.phase = .openChannel
            case .openChannel:
                guard let ch = libssh2_channel_open_ex(s, "session", 7, Engine.windowSize, Engine.packetSize, nil, 0) else {
                    let rc = libssh2_session_last_errno(s)
                    if rc == LIBSSH2_ERROR_EAGAIN { return }
                    if job.reused && !job.retried {
                        reconnect(job)
                        return
                    }
                    try check(rc, "opening a session channel on \(conn.label)", s)
                    return
                }
                job.channel = ch
                job.phase = .exec
            case .exec:
                let rc = libssh2_channel_process_startup(job.channel, "exec", 4, job.command.pointer, UInt32(job.command.count))
                do {
                    guard try check(rc, "starting the command on \(conn.label)", s) else { return }
                } catch where job.reused && !job.retried && error.kind == .disconnected {
                    reconnect(job)
                    return
                }
                job.started = true
                job.execStart = monotonicNow()
                onEvent(.started(id: job.target.id, connectMs: (job.execStart - job.submitted) * 1000))
                job.phase = job.raw ? .sendEOF : .sendStdin
                if job.stopReason != nil {
                    // Cancelled while starting: the script never gets its input; the kill follows the marker.
                    job.phase = .running
                    try advanceKill(job, s)
                }
            case .sendStdin:
                try readOutput(job, s)
                if job.finished { return }
                if job.stopReason != nil {
                    job.phase = .running
                    continue
                }
                if libssh2_channel_eof(job.channel) != 0 {
                    // The wrapper ended before it read the script (no /bin/sh, no mktemp).
                    job.phase = .closing
                    continue
                }
                while job.stdinOffset < job.stdin.count {
                    let n = min(Int(Engine.packetSize), job.stdin.count - job.stdinOffset)
                    let rc = job.stdin.withUnsafeBufferPointer { buf in
                        buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) { p in
                            libssh2_channel_write_ex(job.channel, 0, p + job.stdinOffset, n)
                        }
                    }
                    do {
                        guard try check(rc, "sending the script to \(conn.label)", s) else { return }
                    } catch where error.kind != .disconnected {
                        // The channel closed under us: what it printed tells why.
                        job.stdinOffset = job.stdin.count
                        break
                    }
                    job.stdinOffset += rc
                }
                job.stdin = []
                job.phase = .sendEOF
            case .sendEOF:
                let rc = libssh2_channel_send_eof(job.channel)
                do {
                    guard try check(rc, "closing the script's input on \(conn.label)", s) else { return }
                } catch where error.kind != .disconnected {}
                job.phase = .running
            case .running:
                guard try readOutput(job, s) else { return }
                job.phase = .closing
            case .closing:
                guard try check(libssh2_channel_close(job.channel), "closing the channel on \(conn.label)", s) else { return }
                job.phase = .waitClosed
            case .waitClosed:
                guard try check(libssh2_channel_wait_closed(job.channel), "closing the channel on \(conn.label)", s) else { return }
                complete(job, s)
                return
            }
        }
    }

    /// Reads what is there on stdout and stderr. True at end of output.
    @discardableResult
    private func readOutput(_ job: Job, _ s: OpaquePointer) throws(SSHError) -> Bool {
        var budget = Engine.readQuantum
        for stream in [0, 1] {
            while !job.finished {
                let rc = buffer.withUnsafeMutableBufferPointer { buf in
                    buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) { p in
                        libssh2_channel_read_ex(job.channel, Int32(stream), p, buf.count)
                    }
                }
                guard try check(rc, "reading output from \(job.label)", s) else { break }
                if rc == 0 { break }
                job.conn.lastInbound = monotonicNow()
                let bytes = Array(buffer[0..<rc])
                if stream == 0 {
                    stdout(job, bytes)
                } else {
                    if job.stderrHead.count < 2048 { job.stderrHead += bytes.prefix(2048 - job.stderrHead.count) }
                    onEvent(.output(id: job.target.id, stream: .stderr, bytes: bytes))
                }
                budget -= rc
                if budget <= 0 {
                    // Others' turn; come back without waiting for the socket (libssh2 may hold more).
                    job.needsStep = true
                    return false
                }
            }
        }
        // Only libssh2's EOF flag counts: closing the channel early would cut the script's output pipes.
        return !job.finished && libssh2_channel_eof(job.channel) != 0
    }

    /// Stdout, with the wrapper's marker line taken out.
    private func stdout(_ job: Job, _ bytes: [UInt8]) {
        guard case var .searching(pending) = job.marker else {
            onEvent(.output(id: job.target.id, stream: .stdout, bytes: bytes))
            return
        }
        pending += bytes
        let prefix = Job.markerPrefix
        var lineStart = 0
        while lineStart < pending.count {
            let newline = pending[lineStart...].firstIndex(of: 0x0A)
            let line = pending[lineStart..<(newline ?? pending.count)]
            if line.starts(with: prefix), let newline {
                let text = String(decoding: line.dropFirst(prefix.count), as: UTF8.self)
                let parts = text.split(separator: ":", maxSplits: 1)
                if let pid = parts.first.flatMap({ Int32($0) }), pid > 1 { job.pgid = pid }
                if parts.count == 2, parts[1].hasPrefix("/"),
                   parts[1].utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "'") }) {
                    job.tempFile = String(parts[1])
                }
                job.marker = .found
                let before = Array(pending[0..<lineStart]), after = Array(pending[(newline + 1)...])
                if !before.isEmpty { onEvent(.output(id: job.target.id, stream: .stdout, bytes: before)) }
                if !after.isEmpty { onEvent(.output(id: job.target.id, stream: .stdout, bytes: after)) }
                if job.stopReason != nil { job.needsStep = true }
                return
            }
            guard let newline else { break }
            lineStart = newline + 1
        }
        // No marker yet: what cannot be its start is output (a login shell's rc file may print).
        var keep = lineStart
        if !prefix.starts(with: pending[lineStart...].prefix(prefix.count)) || pending.count - lineStart > 4096 { keep = pending.count }
        if keep > 0 { onEvent(.output(id: job.target.id, stream: .stdout, bytes: Array(pending[0..<keep]))) }
        job.marker = .searching(Array(pending[keep...]))
    }

    private func authenticate(_ job: Job, _ s: OpaquePointer) throws(SSHError) -> Bool {
        let label = job.label, user = job.target.username
        switch job.target.auth {
        case .password:
            let rc = libssh2_userauth_password_ex(s, job.user.pointer, UInt32(job.user.count), job.secret.pointer, UInt32(job.secret.count), nil)
            do {
                return try check(rc, "password authentication", s)
            } catch where error.kind == .authFailed {
                throw SSHError(kind: .authFailed, message: "\(label) refused the password for user \(user): wrong password, "
                               + "or password authentication is disabled on the server (\(error.message))", code: error.code)
            }
        case .key:
            let rc = libssh2_userauth_publickey_frommemory(s, job.user.pointer, job.user.count, nil, 0, job.secret.pointer, job.secret.count,
                                                             job.passphrase!.pointer)
            do {
                return try check(rc, "public key authentication", s)
            } catch where error.code == LIBSSH2_ERROR_FILE || error.code == LIBSSH2_ERROR_KEYFILE_AUTH_FAILED {
                throw SSHError(kind: .authFailed, message: "the private key for \(user)@\(label) cannot be used: wrong passphrase, "
                               + "or a key format libssh2 cannot read (PEM or OpenSSH format; \(error.message))", code: error.code)
            } catch where error.kind == .authFailed {
                if job.keyKind == .rsa {
                    throw SSHError(kind: .rsaSHA1Refused, message: "\(label) refused the RSA key for user \(user). The server most likely "
                                   + "refuses SHA-1 RSA signatures (ssh-rsa), which OpenSSH 8.8 and later disable by default and which "
                                   + "libssh2 1.10 still makes. Use an ed25519 key instead (ssh-keygen -t ed25519) and add its public key "
                                   + "to ~\(user)/.ssh/authorized_keys (or check that the RSA key is authorized at all).", code: error.code)
                }
                throw SSHError(kind: .authFailed, message: "\(label) refused the key for user \(user): is its public key in "
                               + "~\(user)/.ssh/authorized_keys, and is public key authentication enabled? (\(error.message))", code: error.code)
            }
        }
    }

    /// Cancel/timeout: a second channel kills the remote process group.
    private func advanceKill(_ job: Job, _ s: OpaquePointer) throws(SSHError) {
        guard job.stopReason != nil, job.started else { return }
        if job.killPhase == .none {
            guard job.pgid > 1 else {
                // The marker is not there yet (it is the first line): keep reading.
                if case .searching = job.marker { return }
                // No process group known (raw command): closing the channel is all we can do.
                job.killPhase = .sent
                return
            }
            var text = "exec /bin/sh -c 'kill -s TERM -- -\(job.pgid) 2>/dev/null || kill -s TERM \(job.pgid) 2>/dev/null; sleep 1; "
                + "kill -s KILL -- -\(job.pgid) 2>/dev/null"
            if let f = job.tempFile { text += "; rm -f \(f)" }
            text += "' </dev/null >/dev/null 2>&1"
            job.killCommand = CBuffer(text)
            job.killPhase = .open
        }
        do {
            if job.killPhase == .open {
                guard let ch = libssh2_channel_open_ex(s, "session", 7, Engine.windowSize, Engine.packetSize, nil, 0) else {
                    let rc = libssh2_session_last_errno(s)
                    if rc == LIBSSH2_ERROR_EAGAIN { return }
                    try check(rc, "opening a channel to kill the job on \(job.label)", s)
                    return
                }
                job.killChannel = ch
                job.killPhase = .exec
            }
            if job.killPhase == .exec {
                let cmd = job.killCommand!
                guard try check(libssh2_channel_process_startup(job.killChannel, "exec", 4, cmd.pointer, UInt32(cmd.count)),
                                "killing the job on \(job.label)", s) else { return }
                job.killPhase = .sent
                Log.debug("ssh: sent kill", [("server", .string(job.label)), ("pgid", .int(job.pgid))])
            }
        } catch {
            // Could not kill (session gone?): the grace deadline still ends the job.
            Log.warn("ssh: could not kill the remote process group", [("server", .string(job.label)), ("error", .string(error.message))])
            job.killPhase = .sent
            if error.kind == .disconnected { finish(job, job.stopReason!) }
        }
    }

    /// The channel closed: exit status or signal.
    private func complete(_ job: Job, _ s: OpaquePointer) {
        var outcome: SSHOutcome
        var name: UnsafeMutablePointer<CChar>?
        var nameLength = 0
        if libssh2_channel_get_exit_signal(job.channel, &name, &nameLength, nil, nil, nil, nil) == 0, let name, nameLength > 0 {
            outcome = .signaled(String(decoding: UnsafeRawBufferPointer(start: name, count: nameLength), as: UTF8.self))
            libssh2_free(s, name)
        } else {
            outcome = .exited(libssh2_channel_get_exit_status(job.channel))
        }
        retry(4) { libssh2_channel_free(job.channel) }
        job.channel = nil
        if case let .searching(pending) = job.marker {
            if !pending.isEmpty { onEvent(.output(id: job.target.id, stream: .stdout, bytes: pending)) }
            job.marker = .none
            if job.stopReason == nil, case let .exited(code) = outcome {
                let said = String(decoding: job.stderrHead, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
                let detail = said.isEmpty ? "exit status \(code)" : "exit status \(code): \(said)"
                if code == 125 {
                    outcome = .failed(.protocolError, "could not store the script in a temporary file on \(job.label) (mktemp/cat failed; "
                                      + "\(detail)). Is /tmp full or not writable?")
                } else if code == 0 {
                    outcome = .failed(.protocolError, "\(job.label) did not run the script (the command ended without starting it: "
                                      + "a ForceCommand or a restricted login shell for \(job.target.username)?)")
                } else {
                    outcome = .failed(.shellNotFound, "the login shell of \(job.target.username) on \(job.label) could not run /bin/sh "
                                      + "(\(detail)). The target needs a POSIX /bin/sh and a login shell that runs commands.")
                }
            }
        }
        finish(job, job.stopReason ?? outcome)
    }

    private func fail(_ job: Job, _ error: SSHError) {
        if let reason = job.stopReason {
            finish(job, reason)
            return
        }
        var kind = error.kind, message = error.message
        if kind == .disconnected {
            switch job.phase {
            case .handshake:
                message = "\(job.label) closed the connection during the SSH handshake (not an SSH server, or it refuses "
                    + "more connections: MaxStartups?) (\(error.message))"
            case .auth:
                message = "\(job.label) closed the connection during authentication (\(error.message))"
            default:
                if job.started {
                    message = "the connection to \(job.label) was lost while the job was running (sshd or the host went away); "
                        + "the job may still be running there (\(error.message))"
                }
            }
        } else if kind == .timeout {
            message = timeoutMessage(job)
        } else if job.phase == .handshake {
            kind = .protocolError
            message = "SSH handshake with \(job.label) failed: no common algorithm, or not an SSH server (\(error.message))"
        }
        finish(job, .failed(kind, message))
    }

    private func timeoutMessage(_ job: Job) -> String {
        let seconds = job.target.connectTimeout
        let s = seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
        switch job.phase {
        case .resolving: return "resolving \(job.target.host) did not finish within \(s) s"
        case .connecting: return "no answer from \(job.label) within \(s) s (host down, or a firewall drops the packets)"
        case .handshake: return "the SSH handshake with \(job.label) did not finish within \(s) s"
        case .auth: return "authentication on \(job.label) did not finish within \(s) s"
        default: return "\(job.label) did not start the command within \(s) s"
        }
    }

    // MARK: - the end

    private func finish(_ job: Job, _ outcome: SSHOutcome) {
        guard !job.finished else { return }
        job.finished = true
        jobs[job.serial] = nil
        let conn = job.conn
        let clean: Bool
        switch outcome {
        case .exited, .signaled: clean = job.channel == nil && job.killPhase == .none && conn.authenticated
        default: clean = false
        }
        if clean && idleSeconds > 0 && !stopping && idle[job.key] == nil, let s = conn.session {
            conn.idleSince = monotonicNow()
            conn.idleDataPending = false
            // Idle: no replies wanted, so anything readable means the server is going away.
            if keepaliveSeconds > 0 { libssh2_keepalive_config(s, 0, UInt32(keepaliveSeconds)) }
            idle[job.key] = conn
            inbox.count(idle: idle.count)
        } else {
            conn.close(polite: clean || !job.started)
        }
        job.channel = nil
        job.killChannel = nil
        inbox.finished()
        onEvent(.finished(id: job.target.id, outcome: outcome, durationMs: (monotonicNow() - job.submitted) * 1000))
    }

    /// An idle session's socket is readable: end of stream means it is dead.
    private func idleReadable(_ conn: Conn) {
        var byte: UInt8 = 0
        let n = recv(conn.fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        if n > 0 {
            conn.idleDataPending = true
            return
        }
        if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
        idle[conn.key] = nil
        conn.close(polite: false)
        inbox.count(idle: idle.count)
    }
}
