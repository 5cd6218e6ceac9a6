// SPDX-License-Identifier: MIT
// The event loop: one thread, many SSH connections, libssh2 in non-blocking
// mode and poll() on every socket (the directions from
// libssh2_session_block_directions) plus a wake pipe.
//
// A Conn is one TCP connection and its libssh2 session, a state machine:
//   resolve → TCP connect → handshake → host key check → auth → ready
// Each target is a Job with one channel on a Conn, a state machine too:
//   wait for the Conn → open channel → exec the command → its stdin, EOF
//   → read stdout/stderr until EOF → close → exit status / signal
// Jobs for the same (host, port, user, credentials) share a Conn, one channel
// each, up to `channelsPerConnection` (OpenSSH's MaxSessions is 10 by default:
// the rest leaves room for the channels that kill on cancel). Jobs that come
// while it is still connecting wait for it instead of dialing again. A server
// that refuses a channel (its MaxSessions) caps that Conn at what it carries,
// and the refused job goes to another Conn. An error on one channel ends that
// job only; an error of the session (the socket died) ends every job on it.
// With idleSeconds > 0 a Conn whose last job finished cleanly is parked, and
// the next job for the same key opens a channel on it instead of connecting.
//
// libssh2 reads the socket for all the channels of a session: a call for one
// channel queues the packets of the others, and poll() then shows nothing for
// them. So whenever a job's call took bytes off the socket (the session's recv
// callback counts them), the other jobs on that Conn are stepped too.
//
// The remote side. The command line carries a wrapper run by /bin/sh (through
// the user's login shell, which `exec`s it, so it is the session leader sshd
// created with setsid(): its pid is the process group). Its first line of
// output is a marker, `tsubame-pgid:PID` (`:FILE` in the file form): the
// process group to kill on cancel/timeout (a second channel runs
// `kill -s TERM -- -PGID`, and a second later the KILL from the background,
// so that this channel closes at once; when the server refuses it, it goes
// over another connection); it is removed from stdout. No marker before the command ends = the login shell could not
// run /bin/sh (`.shellNotFound`). The script runs under /bin/sh whatever its
// first line says (a `#!` line is a comment to it), with stdin /dev/null.
// Two forms:
// - Inline, for a script without NUL bytes whose command stays within
//   `inlineLimit`: it runs in the wrapper's own shell, no other process first
//   (so its `$$` is the session leader, and `$0` is /bin/sh):
//     exec /bin/sh -c 'echo "tsubame-pgid:$$"; [the environment]; exec </dev/null; SCRIPT'
//   The environment (secret_env included) never goes on the command line,
//   which `ps` shows to every user of the server: it comes on stdin, as a
//   line count and `export NAME='value'` lines that the `read` builtin
//   collects and `eval` runs.
// - From a file, for larger scripts (of any size: it is not an argument):
//     f=$(mktemp) || exit 125; echo "tsubame-pgid:$$:$f"; cat >"$f" || exit 125;
//     /bin/sh "$f" </dev/null; exit $?
//   The script comes on stdin, after a line that removes the file once the
//   shell has it open (`rm -f -- "$0"`) and the `export` lines. The wrapper
//   stays the script's parent.
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

/// The connection-sharing key: the same server, account and credentials
/// (compared exactly, in memory only).
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

    var label: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Calls `body` again while it answers EAGAIN, at most `times` times in all
/// (for calls that need no answer from the peer and so finish at once).
func retry(_ times: Int, _ body: () -> Int32) {
    var n = 0
    while n < times && body() == LIBSSH2_ERROR_EAGAIN { n += 1 }
}

enum ConnPhase {
    case resolving, connecting, handshake, auth, ready
}

/// One TCP connection and its libssh2 session, carrying the channels of its jobs.
final class Conn {
    let id: Int
    let key: PoolKey
    let label: String
    var phase = ConnPhase.resolving
    var fd: Int32 = -1
    var session: OpaquePointer?
    var addresses: [Address] = []
    var addressIndex = 0
    var lastConnectError: SSHError?
    var hostKey: HostKey?
    var authenticated = false
    /// The jobs on it, in arrival order (each has or will have one channel).
    var jobs: [Job] = []
    /// Jobs it may carry at once; lowered to what it carries when the server refuses a channel.
    var limit: Int
    /// The first job's: when more addresses are left, each connect attempt gets its share of what remains.
    let connectDeadline: Double
    var attemptDeadline = Double.infinity
    /// Taken from the idle pool and no command started on it yet: if it fails
    /// now, it died while idle, and its jobs connect again (nothing ran twice).
    var probation = false
    /// ...and it must open a channel by then, or it is taken for dead.
    var reuseDeadline = Double.infinity
    var needsStep = false
    /// Stepped since the last poll: its socket's TCP_QUICKACK needs re-arming.
    var touched = true
    var idleSince = 0.0
    /// Idle, and the server sent something we cannot consume without a channel.
    var idleDataPending = false
    var lastInbound = 0.0
    var nextKeepalive = 0.0
    /// Bytes the session has read from the socket (its recv callback counts them).
    let received = UnsafeMutablePointer<Int>.allocate(capacity: 1)
    let user: CBuffer
    let secret: CBuffer
    let passphrase: CBuffer?
    let keyKind: PrivateKeyKind?

    init(id: Int, target: SSHTarget, key: PoolKey, limit: Int, connectDeadline: Double) {
        self.id = id
        self.key = key
        self.limit = limit
        self.connectDeadline = connectDeadline
        label = key.label
        received.initialize(to: 0)
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

    deinit {
        received.deallocate()
    }

    /// Sends a disconnect when `polite`, then frees the session (and the
    /// channels left on it) and closes the socket.
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
    case waiting, openChannel, exec, sendStdin, sendEOF, running, closing, waitClosed
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
    var phase = Phase.waiting
    /// Set by `attach` before the job is ever stepped.
    var conn: Conn!
    var connectDeadline: Double
    var channel: OpaquePointer?
    var killChannel: OpaquePointer?
    var killPhase = KillPhase.none
    var killCommand: CBuffer?
    /// Runs another job's kill command (`killElsewhere`): it reports no events.
    let quiet: Bool
    let command: CBuffer
    /// Whether the command is the inline wrapper (else the file one, or raw).
    let inline: Bool
    var stdin: [UInt8]
    var stdinOffset = 0
    /// A stdin write libssh2 did not finish: its packet may be half sent on the
    /// shared socket, and nothing else can be sent on it until it is, so it is
    /// called again even when the job is stopping.
    var writing = false
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

    init(serial: Int, target: SSHTarget, raw: String?, now: Double, quiet: Bool = false) {
        self.serial = serial
        self.quiet = quiet
        self.target = target
        key = PoolKey(target)
        self.raw = raw != nil
        submitted = now
        connectDeadline = now + max(target.connectTimeout, 0.001)
        marker = raw == nil ? .searching([]) : .none
        if let raw {
            command = CBuffer(raw)
            inline = false
            stdin = []
        } else {
            let remote = Job.remote(target)
            command = CBuffer(remote.command)
            inline = remote.inline
            stdin = remote.stdin
        }
    }

    static let markerPrefix = Array("tsubame-pgid:".utf8)
    /// The largest inline command, and the most environment text read with the
    /// `read` builtin (a byte per system call). Far below what one SSH packet
    /// (libssh2: 35,000 bytes) and one argument (Linux: 128 KiB) can hold.
    static let inlineLimit = 16 * 1024
    /// The script removes its own file first thing, so the wrapper does not need to.
    /// `exit $?` keeps the wrapper alive as the script's parent (no exec of the last command).
    static let fileWrapper = "exec /bin/sh -c 'f=$(mktemp) || exit 125; echo \"tsubame-pgid:$$:$f\"; cat >\"$f\" || exit 125; "
        + "/bin/sh \"$f\" </dev/null; exit $?'"
    /// Reads the line count, then that many lines, and runs them; 125 when stdin ended early.
    /// The text it runs unsets these variables first (eval has its own copy).
    static let readEnvironment = """
        IFS= read -r _tsubame_n || exit 125
        _tsubame_env=
        while [ "$_tsubame_n" -gt 0 ] && IFS= read -r _tsubame_line; do
        _tsubame_env="$_tsubame_env$_tsubame_line
        "
        _tsubame_n=$((_tsubame_n - 1))
        done
        [ "$_tsubame_n" = 0 ] || exit 125
        eval "$_tsubame_env"

        """

    /// The command line, and what goes on the channel's stdin (see the top of this file).
    static func remote(_ t: SSHTarget) -> (command: String, inline: Bool, stdin: [UInt8]) {
        var exports = ""
        for (name, value) in t.environment { exports += "export \(name)=\(Shell.quote(value))\n" }
        if exports.utf8.count <= inlineLimit && !t.script.utf8.contains(0) {
            var text = "echo \"tsubame-pgid:$$\"\n"
            var input: [UInt8] = []
            if !exports.isEmpty {
                let lines = "unset _tsubame_n _tsubame_env _tsubame_line\n" + exports
                input = Array("\(lines.utf8.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) })\n\(lines)".utf8)
                text += readEnvironment
            }
            text += "exec </dev/null\n" + t.script
            let command = "exec /bin/sh -c " + Shell.quoteForLoginShell(text)
            if command.utf8.count <= inlineLimit { return (command, true, input) }
        }
        return (fileWrapper, false, Array(("rm -f -- \"$0\"\n" + exports).utf8) + Array(t.script.utf8))
    }

    var label: String { key.label }
}

final class Engine: @unchecked Sendable {
    let inbox: Inbox
    let idleSeconds: Double
    let keepaliveSeconds: Int
    let channelsPerConnection: Int
    let onEvent: @Sendable (SSHEvent) -> Void
    private var jobs: [Int: Job] = [:]
    /// Connections with jobs on them (connecting or ready), by id.
    private var conns: [Int: Conn] = [:]
    private var idle: [PoolKey: Conn] = [:]
    private var serial = 0
    private var connSerial = 0
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

    init(inbox: Inbox, idleSeconds: Double, keepaliveSeconds: Int, channelsPerConnection: Int = 8,
         onEvent: @escaping @Sendable (SSHEvent) -> Void) {
        precondition(LibSSH2.initialized, "libssh2_init failed")
        self.inbox = inbox
        self.idleSeconds = idleSeconds
        self.keepaliveSeconds = max(0, keepaliveSeconds)
        self.channelsPerConnection = max(1, channelsPerConnection)
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

    private enum Watched {
        case wake, active(Conn), idle(Conn)
    }

    /// Runs until stopped, or (untilEmpty) until nothing is left to do.
    func run(untilEmpty: Bool) {
        var fds: [pollfd] = []
        var owners: [Watched] = []
        while true {
            intake()
            timers()
            for conn in conns.values where conn.needsStep {
                conn.needsStep = false
                advance(conn)
            }
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
            owners.append(.wake)
            for job in jobs.values {
                if job.needsStep { deadline = now }
                deadline = min(deadline, job.started ? min(job.execStart + job.target.timeout, job.killDeadline)
                                                     : job.connectDeadline)
            }
            var quickAck: Int32 = 1
            for conn in conns.values {
                if conn.needsStep { deadline = now }
                deadline = min(deadline, conn.attemptDeadline, conn.reuseDeadline)
                if conn.nextKeepalive > 0 { deadline = min(deadline, conn.nextKeepalive) }
                guard conn.fd >= 0, conn.phase != .resolving else { continue }
                var events = Int16(POLLIN)
                if conn.phase == .connecting {
                    events = Int16(POLLOUT)
                } else if let s = conn.session {
                    let dirs = libssh2_session_block_directions(s)
                    if dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { events = Int16(POLLOUT) | (dirs & LIBSSH2_SESSION_BLOCK_INBOUND != 0 ? Int16(POLLIN) : 0) }
                    // Our ACKs must not wait for the delayed-ACK timer (40 ms per command otherwise).
                    // The kernel drops the flag as traffic flows: re-arm it on sockets that saw some.
                    if conn.touched {
                        setsockopt(conn.fd, Int32(IPPROTO_TCP), TCP_QUICKACK, &quickAck, socklen_t(MemoryLayout<Int32>.size))
                        conn.touched = false
                    }
                }
                fds.append(pollfd(fd: conn.fd, events: events, revents: 0))
                owners.append(.active(conn))
            }
            for conn in idle.values {
                deadline = min(deadline, conn.idleSince + idleSeconds)
                if conn.nextKeepalive > 0 { deadline = min(deadline, conn.nextKeepalive) }
                guard !conn.idleDataPending else { continue }
                fds.append(pollfd(fd: conn.fd, events: Int16(POLLIN), revents: 0))
                owners.append(.idle(conn))
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
                case let .active(conn):
                    // Closed meanwhile (its descriptor may already belong to another connection).
                    guard conns[conn.id] === conn else { continue }
                    if p.revents & Int16(POLLIN) != 0 { conn.lastInbound = after }
                    socketReady(conn)
                case let .idle(conn):
                    guard idle[conn.key] === conn else { continue }
                    idleReadable(conn)
                case .wake:
                    inbox.drainWake()
                }
            }
        }
        for conn in Array(conns.values) + Array(idle.values) { conn.close(polite: true) }
        conns.removeAll()
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
        for (id, result) in batch.resolved {
            guard let conn = conns[id], conn.phase == .resolving else { continue }
            switch result {
            case let .success(addresses):
                conn.addresses = addresses
                connect(conn)
            case let .failure(error):
                abandon(conn) { _ in .failed(error.kind, error.message) }
            }
        }
        for id in batch.cancels {
            for job in jobs.values where job.target.id == id && !job.finished && !job.quiet {
                requestStop(job, .cancelled)
            }
        }
        if batch.stopping && !stopping {
            stopping = true
            stopDeadline = now + 3
            // The kills under way still go out (until the stop deadline).
            for job in jobs.values where !job.finished && !job.quiet { requestStop(job, .cancelled) }
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
        }
        for conn in Array(conns.values) where conns[conn.id] === conn {
            if conn.probation && now >= conn.reuseDeadline {
                // A silently dead session (a NAT forgot it, the host froze). No command was sent
                // on it, so starting over on a new connection cannot run a script twice.
                redial(conn)
                continue
            }
            if conn.phase == .connecting && now >= conn.attemptDeadline {
                // This address does not answer: try the next one (IPv6 first, then IPv4, ...).
                conn.attemptDeadline = .infinity
                connectFailed(conn, ETIMEDOUT)
                connect(conn)
                continue
            }
            keepalive(conn, now: now)
        }
        for (key, conn) in idle where now >= conn.idleSince + idleSeconds {
            idle[key] = nil
            conn.close(polite: true)
            inbox.count(idle: idle.count)
        }
        for conn in idle.values { keepalive(conn, now: now) }
    }

    private func keepalive(_ conn: Conn, now: Double) {
        guard keepaliveSeconds > 0, conn.authenticated, let s = conn.session, conn.nextKeepalive > 0, now >= conn.nextKeepalive else { return }
        if conn.jobs.contains(where: { $0.started && $0.stopReason == nil }), now - conn.lastInbound > Double(3 * keepaliveSeconds) + 1 {
            let silent = "\(conn.label) stopped answering (no reply to keepalives for \(3 * keepaliveSeconds) s)"
            abandon(conn) { job in
                .failed(.disconnected, job.started ? silent + " while the job was running; the host or the network may be down, "
                            + "and the job may still be running there" : silent)
            }
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
        guard (1...65535).contains(t.port) else {
            finish(job, .failed(.unreachable, "\(job.label): the port must be between 1 and 65535"))
            return
        }
        attach(job)
    }

    /// Puts the job on a connection to its server: one that is up or on its
    /// way with room for another channel, else an idle one, else a new one.
    private func attach(_ job: Job) {
        let now = monotonicNow()
        job.phase = .waiting
        if let conn = conns.values.first(where: { $0.key == job.key && $0.jobs.count < $0.limit }) {
            inbox.count(shared: true)
            conn.jobs.append(job)
            job.conn = conn
            // Past the handshake: the host key is known (and checked before anything is sent for this job).
            if conn.hostKey != nil && !checkHostKey(job) { return }
            if conn.phase == .ready {
                job.phase = .openChannel
                job.needsStep = true
            }
            return
        }
        if let conn = idle.removeValue(forKey: job.key) {
            inbox.count(reuse: true, idle: idle.count)
            conns[conn.id] = conn
            conn.jobs = [job]
            job.conn = conn
            conn.probation = true
            conn.reuseDeadline = now + min(2, max(job.target.connectTimeout / 3, 0.2))
            if let s = conn.session { libssh2_keepalive_config(s, 1, UInt32(keepaliveSeconds)) }
            conn.lastInbound = now
            if checkHostKey(job) {
                job.phase = .openChannel
                job.needsStep = true
            }
            return
        }
        connSerial += 1
        let conn = Conn(id: connSerial, target: job.target, key: job.key, limit: channelsPerConnection, connectDeadline: job.connectDeadline)
        conns[conn.id] = conn
        conn.jobs = [job]
        job.conn = conn
        switch Resolver.lookup(host: job.target.host, port: job.target.port, numericOnly: true) {
        case let .success(addresses) where !addresses.isEmpty:
            conn.addresses = addresses
            connect(conn)
        case let .failure(error):
            abandon(conn) { _ in .failed(error.kind, error.message) }
        default:
            resolver.resolve(serial: conn.id, host: job.target.host, port: job.target.port)
        }
    }

    /// A connection from the idle pool turned out dead before any command ran
    /// on it: its jobs start over on another connection.
    private func redial(_ conn: Conn) {
        Log.debug("ssh: idle session was dead; connecting again", [("server", .string(conn.label))])
        conns[conn.id] = nil
        let waiting = conn.jobs
        conn.jobs = []
        conn.close(polite: false)
        let now = monotonicNow()
        for job in waiting where !job.finished {
            // The channel went with the session.
            job.channel = nil
            if let reason = job.stopReason {
                finish(job, reason)
                continue
            }
            job.connectDeadline = now + max(job.target.connectTimeout, 0.001)
            attach(job)
        }
    }

    /// The server refused one more channel on the job's connection (its
    /// MaxSessions): the connection keeps what it carries, the job goes to another.
    private func overflow(_ job: Job) {
        let conn = job.conn!
        conn.limit = conn.jobs.filter { $0 !== job && $0.channel != nil }.count
        conn.jobs.removeAll { $0 === job }
        Log.debug("ssh: the server refused another channel; using another connection",
                  [("server", .string(conn.label)), ("channels", .int(conn.limit))])
        attach(job)
    }

    /// The server refused the kill channel: its MaxSessions is reached on this
    /// connection, and the job's own channel holds a session until the job dies.
    /// The kill command goes over another connection to the same server.
    private func killElsewhere(_ job: Job) {
        let conn: Conn = job.conn
        job.killPhase = .sent
        conn.limit = min(conn.limit, conn.jobs.count)
        Log.debug("ssh: the server refused the kill channel; killing over another connection", [("server", .string(conn.label))])
        var target = job.target
        target.timeout = 10
        serial += 1
        let killer = Job(serial: serial, target: target, raw: String(cString: job.killCommand!.pointer), now: monotonicNow(), quiet: true)
        jobs[killer.serial] = killer
        attach(killer)
    }

    /// Non-blocking connect to the next address.
    private func connect(_ conn: Conn) {
        while conn.addressIndex < conn.addresses.count {
            let address = conn.addresses[conn.addressIndex]
            let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else {
                let why = String(cString: strerror(errno))
                abandon(conn) { _ in .failed(.unreachable, "cannot open a socket for \(conn.label): \(why) (too many open files?)") }
                return
            }
            conn.fd = fd
            inbox.count(connect: true)
            let rc = address.bytes.withUnsafeBytes { raw in
                Foundation.connect(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
            }
            if rc == 0 {
                connected(conn)
                return
            }
            if errno == EINPROGRESS {
                conn.phase = .connecting
                let now = monotonicNow(), left = conn.addresses.count - conn.addressIndex
                conn.attemptDeadline = left > 1 ? now + (conn.connectDeadline - now) / Double(left) : .infinity
                return
            }
            connectFailed(conn, errno)
        }
        let error = conn.lastConnectError
        abandon(conn) { _ in .failed(error?.kind ?? .unreachable, error?.message ?? "\(conn.label): no address to connect to") }
    }

    private func connectFailed(_ conn: Conn, _ code: Int32) {
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

    private func connected(_ conn: Conn) {
        var one: Int32 = 1
        // libssh2 never sets it: every small packet would wait for the peer's delayed ACK.
        setsockopt(conn.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        guard let s = LibSSH2.session(counting: conn.received) else {
            abandon(conn) { _ in .failed(.protocolError, "libssh2_session_init failed (out of memory?) for \(conn.label)") }
            return
        }
        conn.session = s
        conn.lastInbound = monotonicNow()
        conn.phase = .handshake
        conn.needsStep = true
    }

    /// Compares the session's host key with the job's pinned one and reports it.
    /// False (and the job failed) when it changed.
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
        emit(job, .hostKey(id: job.target.id, algorithm: key.algorithm, fingerprint: key.fingerprint, firstUse: job.target.pinnedFingerprint == nil))
        return !job.finished
    }

    // MARK: - the connection's state machine

    /// Its socket is ready.
    private func socketReady(_ conn: Conn) {
        switch conn.phase {
        case .resolving:
            return
        case .connecting:
            var code: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(conn.fd, SOL_SOCKET, SO_ERROR, &code, &len)
            if code == 0 {
                connected(conn)
            } else {
                connectFailed(conn, code)
                connect(conn)
            }
        case .handshake, .auth:
            advance(conn)
        case .ready:
            // Any of them may have a half-sent packet to finish, or data waiting.
            for job in conn.jobs where !job.finished && job.conn === conn { step(job) }
        }
    }

    /// Handshake, host key check, authentication: until it would block, fails or is ready.
    private func advance(_ conn: Conn) {
        guard let s = conn.session else { return }
        conn.touched = true
        do throws(SSHError) {
            if conn.phase == .handshake {
                guard try check(libssh2_session_handshake(s, conn.fd), "SSH handshake with \(conn.label)", s) else { return }
                conn.hostKey = HostKey(session: s)
                // Each job checks its own pinned key before any credential is sent.
                for job in conn.jobs { _ = checkHostKey(job) }
                // None of them is left: it was closed.
                guard conns[conn.id] === conn else { return }
                conn.phase = .auth
            }
            if conn.phase == .auth {
                guard try authenticate(conn, s) else { return }
                conn.authenticated = true
                if keepaliveSeconds > 0 {
                    libssh2_keepalive_config(s, 1, UInt32(keepaliveSeconds))
                    conn.nextKeepalive = monotonicNow() + Double(keepaliveSeconds)
                }
                conn.phase = .ready
                for job in conn.jobs {
                    job.phase = .openChannel
                    job.needsStep = true
                }
            }
        } catch {
            abandon(conn) { job in self.failure(job, error) }
        }
    }

    private func authenticate(_ conn: Conn, _ s: OpaquePointer) throws(SSHError) -> Bool {
        let label = conn.label, user = conn.key.username
        if let passphrase = conn.passphrase {
            let rc = libssh2_userauth_publickey_frommemory(s, conn.user.pointer, conn.user.count, nil, 0, conn.secret.pointer, conn.secret.count,
                                                             passphrase.pointer)
            do {
                return try check(rc, "public key authentication", s)
            } catch where error.code == LIBSSH2_ERROR_FILE || error.code == LIBSSH2_ERROR_KEYFILE_AUTH_FAILED {
                throw SSHError(kind: .authFailed, message: "the private key for \(user)@\(label) cannot be used: wrong passphrase, "
                               + "or a key format libssh2 cannot read (PEM or OpenSSH format; \(error.message))", code: error.code)
            } catch where error.kind == .authFailed {
                if conn.keyKind == .rsa {
                    throw SSHError(kind: .rsaSHA1Refused, message: "\(label) refused the RSA key for user \(user). The server most likely "
                                   + "refuses SHA-1 RSA signatures (ssh-rsa), which OpenSSH 8.8 and later disable by default and which "
                                   + "libssh2 1.10 still makes. Use an ed25519 key instead (ssh-keygen -t ed25519) and add its public key "
                                   + "to ~\(user)/.ssh/authorized_keys (or check that the RSA key is authorized at all).", code: error.code)
                }
                throw SSHError(kind: .authFailed, message: "\(label) refused the key for user \(user): is its public key in "
                               + "~\(user)/.ssh/authorized_keys, and is public key authentication enabled? (\(error.message))", code: error.code)
            }
        }
        let rc = libssh2_userauth_password_ex(s, conn.user.pointer, UInt32(conn.user.count), conn.secret.pointer, UInt32(conn.secret.count), nil)
        do {
            return try check(rc, "password authentication", s)
        } catch where error.kind == .authFailed {
            throw SSHError(kind: .authFailed, message: "\(label) refused the password for user \(user): wrong password, "
                           + "or password authentication is disabled on the server (\(error.message))", code: error.code)
        }
    }

    // MARK: - the job's state machine

    private func requestStop(_ job: Job, _ reason: SSHOutcome) {
        guard job.stopReason == nil, !job.finished else { return }
        switch job.phase {
        case .waiting, .openChannel:
            // Nothing runs remotely yet.
            finish(job, reason)
        default:
            job.stopReason = reason
            job.killDeadline = monotonicNow() + Engine.killGrace
            job.needsStep = true
        }
    }

    private func step(_ job: Job) {
        let conn: Conn = job.conn
        guard let s = conn.session, conn.phase == .ready, job.phase != .waiting else { return }
        conn.touched = true
        let received = conn.received.pointee
        do throws(SSHError) {
            try advance(job, s)
        } catch where LibSSH2.channelLevel(error.code) {
            fail(job, error)
        } catch {
            if conn.probation {
                redial(conn)
            } else {
                abandon(conn) { job in self.failure(job, error) }
            }
        }
        // Packets for the other channels may now wait inside libssh2, out of poll()'s sight.
        if conn.received.pointee != received && conns[conn.id] === conn {
            for other in conn.jobs where other !== job { other.needsStep = true }
        }
    }

    /// Runs the job's state machine until it would block or ends.
    private func advance(_ job: Job, _ s: OpaquePointer) throws(SSHError) {
        let conn: Conn = job.conn
        if job.killPhase != .none || job.stopReason != nil { try advanceKill(job, s) }
        if job.finished { return }
        while !job.finished {
            switch job.phase {
            case .waiting:
                return
            case .openChannel:
                guard let ch = libssh2_channel_open_ex(s, "session", 7, Engine.windowSize, Engine.packetSize, nil, 0) else {
                    let rc = libssh2_session_last_errno(s)
                    if rc == LIBSSH2_ERROR_EAGAIN { return }
                    if rc == LIBSSH2_ERROR_CHANNEL_FAILURE && conn.jobs.contains(where: { $0 !== job && $0.channel != nil }) {
                        overflow(job)
                        return
                    }
                    if conn.probation {
                        redial(conn)
                        return
                    }
                    try check(rc, "opening a session channel on \(conn.label)", s)
                    return
                }
                job.channel = ch
                conn.reuseDeadline = .infinity
                job.phase = .exec
            case .exec:
                let rc = libssh2_channel_process_startup(job.channel, "exec", 4, job.command.pointer, UInt32(job.command.count))
                guard try check(rc, "starting the command on \(conn.label)", s) else { return }
                conn.probation = false
                job.started = true
                job.execStart = monotonicNow()
                emit(job, .started(id: job.target.id, connectMs: (job.execStart - job.submitted) * 1000))
                job.phase = job.stdin.isEmpty ? .sendEOF : .sendStdin
                if job.stopReason != nil {
                    // Cancelled while starting: the script never gets its input; the kill follows the marker.
                    job.phase = .running
                    try advanceKill(job, s)
                }
            case .sendStdin:
                try readOutput(job, s)
                if job.finished { return }
                if !job.writing {
                    if job.stopReason != nil {
                        job.phase = .running
                        continue
                    }
                    if libssh2_channel_eof(job.channel) != 0 {
                        // The wrapper ended before it read its input (no /bin/sh, no mktemp).
                        job.phase = .closing
                        continue
                    }
                }
                while job.stdinOffset < job.stdin.count {
                    let n = min(Int(Engine.packetSize), job.stdin.count - job.stdinOffset)
                    let rc = job.stdin.withUnsafeBufferPointer { buf in
                        buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buf.count) { p in
                            libssh2_channel_write_ex(job.channel, 0, p + job.stdinOffset, n)
                        }
                    }
                    do {
                        guard try check(rc, "sending the script to \(conn.label)", s) else {
                            // Waiting for the socket (a packet may be half sent), or only for the window.
                            job.writing = libssh2_session_block_directions(s) & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0
                            return
                        }
                    } catch where LibSSH2.channelLevel(error.code) {
                        // The channel closed under us: what it printed tells why.
                        job.writing = false
                        job.stdinOffset = job.stdin.count
                        break
                    }
                    job.writing = false
                    job.stdinOffset += rc
                    if job.stopReason != nil { break }
                }
                if job.stopReason != nil {
                    job.phase = .running
                    continue
                }
                job.stdin = []
                job.phase = .sendEOF
            case .sendEOF:
                let rc = libssh2_channel_send_eof(job.channel)
                do {
                    guard try check(rc, "closing the script's input on \(conn.label)", s) else { return }
                } catch where LibSSH2.channelLevel(error.code) {}
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
        var received = -1
        // Reading one stream reads the socket for all: it can queue the other stream's data
        // (and the EOF) inside libssh2, where poll() cannot see it. Again, until nothing came.
        while received != job.conn.received.pointee && !job.finished {
            received = job.conn.received.pointee
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
                        emit(job, .output(id: job.target.id, stream: .stderr, bytes: bytes))
                    }
                    budget -= rc
                    if budget <= 0 {
                        // Others' turn; come back without waiting for the socket (libssh2 may hold more).
                        job.needsStep = true
                        return false
                    }
                }
            }
        }
        // Only libssh2's EOF flag counts: closing the channel early would cut the script's output pipes.
        return !job.finished && libssh2_channel_eof(job.channel) != 0
    }

    /// Stdout, with the wrapper's marker line taken out.
    private func stdout(_ job: Job, _ bytes: [UInt8]) {
        guard case var .searching(pending) = job.marker else {
            emit(job, .output(id: job.target.id, stream: .stdout, bytes: bytes))
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
                if !before.isEmpty { emit(job, .output(id: job.target.id, stream: .stdout, bytes: before)) }
                if !after.isEmpty { emit(job, .output(id: job.target.id, stream: .stdout, bytes: after)) }
                if job.stopReason != nil { job.needsStep = true }
                return
            }
            guard let newline else { break }
            lineStart = newline + 1
        }
        // No marker yet: what cannot be its start is output (a login shell's rc file may print).
        var keep = lineStart
        if !prefix.starts(with: pending[lineStart...].prefix(prefix.count)) || pending.count - lineStart > 4096 { keep = pending.count }
        if keep > 0 { emit(job, .output(id: job.target.id, stream: .stdout, bytes: Array(pending[0..<keep]))) }
        job.marker = .searching(Array(pending[keep...]))
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
            // The KILL a second later comes from the background, so that this channel (a session
            // of the server's MaxSessions) closes at once.
            var text = "exec /bin/sh -c 'kill -s TERM -- -\(job.pgid) 2>/dev/null || kill -s TERM \(job.pgid) 2>/dev/null; "
                + "(sleep 1; kill -s KILL -- -\(job.pgid) 2>/dev/null"
            if let f = job.tempFile { text += "; rm -f \(f)" }
            text += ") </dev/null >/dev/null 2>&1 &' </dev/null >/dev/null 2>&1"
            job.killCommand = CBuffer(text)
            job.killPhase = .open
        }
        do {
            if job.killPhase == .open {
                guard let ch = libssh2_channel_open_ex(s, "session", 7, Engine.windowSize, Engine.packetSize, nil, 0) else {
                    let rc = libssh2_session_last_errno(s)
                    if rc == LIBSSH2_ERROR_EAGAIN { return }
                    if rc == LIBSSH2_ERROR_CHANNEL_FAILURE {
                        killElsewhere(job)
                        return
                    }
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
            if !LibSSH2.channelLevel(error.code) { throw error }
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
            if !pending.isEmpty { emit(job, .output(id: job.target.id, stream: .stdout, bytes: pending)) }
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
                                      + "(\(detail)). The target needs a POSIX /bin/sh and a login shell that runs commands"
                                      + (job.inline ? " given in POSIX quoting (sh, bash, zsh, fish; csh takes no multi-line command)." : "."))
                }
            }
        }
        finish(job, job.stopReason ?? outcome)
    }

    /// A libssh2 error that ends this job only (its channel): the others on the connection go on.
    private func fail(_ job: Job, _ error: SSHError) {
        finish(job, job.stopReason ?? failure(job, error))
    }

    /// What a job reports for an error of its channel or its connection.
    private func failure(_ job: Job, _ error: SSHError) -> SSHOutcome {
        var kind = error.kind, message = error.message
        let phase = job.phase == .waiting ? job.conn.phase : .ready
        if kind == .disconnected {
            if job.started {
                message = "the connection to \(job.label) was lost while the job was running (sshd or the host went away); "
                    + "the job may still be running there (\(error.message))"
            } else if phase == .handshake {
                message = "\(job.label) closed the connection during the SSH handshake (not an SSH server, or it refuses "
                    + "more connections: MaxStartups?) (\(error.message))"
            } else if phase == .auth {
                message = "\(job.label) closed the connection during authentication (\(error.message))"
            }
        } else if kind == .timeout {
            message = timeoutMessage(job)
        } else if phase == .handshake {
            kind = .protocolError
            message = "SSH handshake with \(job.label) failed: no common algorithm, or not an SSH server (\(error.message))"
        }
        return .failed(kind, message)
    }

    private func timeoutMessage(_ job: Job) -> String {
        let seconds = job.target.connectTimeout
        let s = seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
        switch job.phase == .waiting ? job.conn.phase : .ready {
        case .resolving: return "resolving \(job.target.host) did not finish within \(s) s"
        case .connecting: return "no answer from \(job.label) within \(s) s (host down, or a firewall drops the packets)"
        case .handshake: return "the SSH handshake with \(job.label) did not finish within \(s) s"
        case .auth: return "authentication on \(job.label) did not finish within \(s) s"
        case .ready: return "\(job.label) did not start the command within \(s) s"
        }
    }

    // MARK: - the end

    private func finish(_ job: Job, _ outcome: SSHOutcome) {
        guard !job.finished else { return }
        job.finished = true
        jobs[job.serial] = nil
        if let conn = job.conn {
            let clean: Bool
            switch outcome {
            case .exited, .signaled: clean = job.channel == nil && job.killPhase == .none
            default: clean = false
            }
            conn.jobs.removeAll { $0 === job }
            if conn.session != nil {
                // The others on the connection go on: only this job's channels go (with their session otherwise).
                for channel in [job.channel, job.killChannel] {
                    if let channel { retry(4) { libssh2_channel_free(channel) } }
                }
            }
            if conn.jobs.isEmpty && conns[conn.id] === conn { release(conn, clean: clean, started: job.started) }
        }
        job.channel = nil
        job.killChannel = nil
        if job.quiet { return }
        inbox.finished()
        onEvent(.finished(id: job.target.id, outcome: outcome, durationMs: (monotonicNow() - job.submitted) * 1000))
    }

    private func emit(_ job: Job, _ event: SSHEvent) {
        if !job.quiet { onEvent(event) }
    }

    /// Its last job finished: it is parked for the next job on the same server, or closed.
    private func release(_ conn: Conn, clean: Bool, started: Bool) {
        conns[conn.id] = nil
        if clean && conn.authenticated && idleSeconds > 0 && !stopping && idle[conn.key] == nil, let s = conn.session {
            conn.idleSince = monotonicNow()
            conn.idleDataPending = false
            conn.probation = false
            conn.reuseDeadline = .infinity
            // Idle: no replies wanted, so anything readable means the server is going away.
            if keepaliveSeconds > 0 { libssh2_keepalive_config(s, 0, UInt32(keepaliveSeconds)) }
            idle[conn.key] = conn
            inbox.count(idle: idle.count)
        } else {
            conn.close(polite: clean || !started)
        }
    }

    /// The connection is unusable: it is closed, and every job on it ends with
    /// its stop reason or `outcome`.
    private func abandon(_ conn: Conn, _ outcome: (Job) -> SSHOutcome) {
        conns[conn.id] = nil
        let affected = conn.jobs
        conn.jobs = []
        // First: the jobs' channels go with the session.
        conn.close(polite: false)
        for job in affected where !job.finished { finish(job, job.stopReason ?? outcome(job)) }
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
