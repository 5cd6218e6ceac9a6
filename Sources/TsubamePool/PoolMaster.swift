// SPDX-License-Identifier: MIT
// The pool master, php-fpm style: binds the FastCGI socket, spawns N workers
// with it as fd 0, respawns the dead (with backoff when they die young),
// replaces a worker that recycled itself after max_requests, reloads
// gracefully on SIGHUP/SIGUSR2, stops gracefully on SIGTERM/SIGINT, and
// answers status requests on a control socket.

public import Foundation
public import TsubameCore

public struct PoolSettings: Sendable {
    public var workerPath: String
    public var workerArguments: [String] = []
    /// Environment for the workers (the scoreboard variables are added per worker).
    public var environment: [String: String]
    public var workers: Int
    public var socketPath: String
    public var socketMode: Int = 0o660
    public var socketGroup: String? = nil
    public var controlPath: String
    /// Drop to this user when started as root (nil: never drop).
    public var user: String? = nil
    public var stopTimeout: TimeInterval = 30

    public init(workerPath: String, environment: [String: String], workers: Int, socketPath: String, controlPath: String) {
        self.workerPath = workerPath; self.environment = environment; self.workers = workers
        self.socketPath = socketPath; self.controlPath = controlPath
    }
}

public struct PoolError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public final class PoolMaster: @unchecked Sendable {
    public struct WorkerInfo: Sendable {
        public let pid: pid_t
        public let slot: Int
        public let startedAt: Date
        /// Set when the master asked it to stop (reload or shutdown).
        public var retiring: Bool
    }

    public let settings: PoolSettings
    public private(set) var workers: [pid_t: WorkerInfo] = [:]
    public private(set) var restarts = 0 { didSet { publish() } }
    public private(set) var recycled = 0 { didSet { publish() } }
    public private(set) var reloads = 0 { didSet { publish() } }
    public private(set) var stopping = false
    public let startedAt = Date()
    var listenFD: Int32 = -1
    var controlFD: Int32 = -1
    var scoreboard: Scoreboard?
    var scoreboardPath: String { settings.socketPath + ".scoreboard" }
    var backoff: TimeInterval = 0
    var respawnAt: Date? = nil
    var pendingRespawns = 0

    public init(settings: PoolSettings) { self.settings = settings }

    /// Binds both sockets and creates the scoreboard, then `dropPrivileges`. Call once, before `spawnAll`.
    public func prepare() throws {
        try bindSockets()
        try dropPrivileges()
    }

    /// Binds the FastCGI and control sockets and creates the scoreboard (as the starting user).
    public func bindSockets() throws {
        listenFD = try PoolMaster.bindUnix(settings.socketPath, mode: settings.socketMode, backlog: 1024)
        controlFD = try PoolMaster.bindUnix(settings.controlPath, mode: 0o600, backlog: 16)
        _ = fcntl(controlFD, F_SETFL, fcntl(controlFD, F_GETFL) | O_NONBLOCK)
        scoreboard = try Scoreboard(path: scoreboardPath, slots: settings.workers * 2, create: true)
    }

    static func bindUnix(_ path: String, mode: Int, backlog: Int32) throws -> Int32 {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw PoolError("socket: \(String(cString: strerror(errno)))") }
        let rc: Int32
        do { rc = try withUnixAddress(path) { bind(fd, $0, $1) } } catch { close(fd); throw error }
        guard rc == 0 else { close(fd); throw PoolError("cannot bind \(path): \(String(cString: strerror(errno)))") }
        guard listen(fd, backlog) == 0 else { close(fd); throw PoolError("cannot listen on \(path)") }
        chmod(path, mode_t(mode))
        return fd
    }

    /// When root and a user is set: hands the sockets to that user and becomes it.
    public func dropPrivileges() throws {
        var gid: gid_t? = nil
        if let group = settings.socketGroup {
            guard let g = getgrnam(group) else { throw PoolError("TSUBAME_FCGI_SOCKET_GROUP: no group named \(group)") }
            gid = g.pointee.gr_gid
        }
        guard geteuid() == 0, let name = settings.user else {
            if let gid { chown(settings.socketPath, uid_t.max, gid) }
            return
        }
        guard let pw = getpwnam(name) else { throw PoolError("TSUBAME_POOL_USER: no user named \(name) (create it, or set another)") }
        let uid = pw.pointee.pw_uid, userGID = pw.pointee.pw_gid
        chown(settings.socketPath, uid, gid ?? userGID)
        chown(settings.controlPath, uid, userGID)
        chown(scoreboardPath, uid, userGID)
        guard initgroups(name, userGID) == 0, setgid(userGID) == 0, setuid(uid) == 0 else {
            throw PoolError("cannot drop privileges to \(name): \(String(cString: strerror(errno)))")
        }
    }

    func freeSlot() -> Int {
        let used = Set(workers.values.map(\.slot))
        return (0..<(settings.workers * 2)).first { !used.contains($0) } ?? 0
    }

    /// Starts one worker with the socket on fd 0 and a clean signal state.
    @discardableResult
    public func spawn() throws -> pid_t {
        let slot = freeSlot()
        scoreboard?.write(slot, .init(pid: 0, served: 0, busy: 0))
        var env = settings.environment
        env["TSUBAME_SCOREBOARD"] = scoreboardPath
        env["TSUBAME_SCOREBOARD_SLOTS"] = String(settings.workers * 2)
        env["TSUBAME_WORKER_SLOT"] = String(slot)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, listenFD, 0)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t(), all = sigset_t()
        sigemptyset(&empty)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = [settings.workerPath] + settings.workerArguments
        let envp = env.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = envp.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }
        let rc = posix_spawn(&pid, settings.workerPath, &actions, &attr, cArgs, cEnv)
        guard rc == 0 else { throw PoolError("cannot start \(settings.workerPath): \(String(cString: strerror(rc)))") }
        workers[pid] = WorkerInfo(pid: pid, slot: slot, startedAt: Date(), retiring: false)
        Log.info("worker started", [("worker_pid", .int(pid)), ("slot", .int(slot))])
        return pid
    }

    public func spawnAll() throws {
        for _ in 0..<settings.workers { try spawn() }
    }

    /// Graceful rolling reload: new workers first, then the old ones finish what they hold and leave.
    public func reload() throws {
        reloads += 1
        let old = workers.values.filter { !$0.retiring }.map(\.pid)
        for _ in 0..<settings.workers { try spawn() }
        for pid in old { retire(pid) }
        Log.info("reload", [("replaced", .int(old.count))])
    }

    func retire(_ pid: pid_t) {
        workers[pid]?.retiring = true
        kill(pid, SIGTERM)
    }

    /// Collects exited workers and schedules replacements. Returns how many exited.
    @discardableResult
    /// The counters /metrics shows, in the scoreboard's header.
    func publish() {
        scoreboard?.writePool(.init(restarts: Int64(restarts), recycled: Int64(recycled), reloads: Int64(reloads)))
    }

    public func reap() -> Int {
        var n = 0
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid <= 0 { break }
            n += 1
            guard let info = workers.removeValue(forKey: pid) else { continue }
            scoreboard?.write(info.slot, .init(pid: 0, served: 0, busy: 0))
            scoreboard?.retire(info.slot)  // its request counters stay in the pool's totals
            let exitedCleanly = (status & 0x7f) == 0 && ((status >> 8) & 0xff) == 0
            if info.retiring || stopping { continue }
            if exitedCleanly {
                recycled += 1
                Log.info("worker recycled", [("worker_pid", .int(pid))])
                pendingRespawns += 1
            } else {
                restarts += 1
                let lived = Date().timeIntervalSince(info.startedAt)
                // A worker that dies young (bad config, database schema) is restarted with growing delay.
                backoff = lived < 2 ? min(max(backoff * 2, 0.1), 10) : 0
                Log.warn("worker died", [("worker_pid", .int(pid)), ("status", .int(status)), ("restart_in_s", .double(backoff))])
                pendingRespawns += 1
                respawnAt = Date().addingTimeInterval(backoff)
            }
        }
        if pendingRespawns > 0, !stopping, respawnAt.map({ $0 <= Date() }) ?? true {
            while pendingRespawns > 0 {
                pendingRespawns -= 1
                do { try spawn() } catch { Log.error("respawn failed", [("error", .string("\(error)"))]) }
            }
            respawnAt = nil
        }
        return n
    }

    /// Asks every worker to stop, waits up to the timeout, then kills what is left.
    public func stop() {
        stopping = true
        for pid in workers.keys { retire(pid) }
        let deadline = Date().addingTimeInterval(settings.stopTimeout)
        while !workers.isEmpty, Date() < deadline {
            reap()
            usleep(20_000)
        }
        for pid in workers.keys { kill(pid, SIGKILL) }
        while !workers.isEmpty, reap() > 0 {}
        workers.removeAll()
        close(listenFD)
        close(controlFD)
        unlink(settings.socketPath)
        unlink(settings.controlPath)
        unlink(scoreboardPath)
    }

    /// The status view: master, totals and each worker with its scoreboard counters.
    public func status() -> JSON {
        let ws: [JSON] = workers.values.sorted { $0.slot < $1.slot }.map { w in
            let s = scoreboard?.read(w.slot) ?? .init(pid: 0, served: 0, busy: 0)
            return .object([("pid", .int(w.pid)), ("slot", .int(w.slot)), ("started_at", .string(Timestamp.format(w.startedAt))),
                            ("requests", .int(s.served)), ("busy_threads", .int(s.busy)), ("waiting", .int(s.waiting)),
                            ("retiring", .bool(w.retiring))])
        }
        return .object([
            ("master_pid", .int(getpid())), ("started_at", .string(Timestamp.format(startedAt))),
            ("workers_configured", .int(settings.workers)), ("workers_running", .int(workers.count)),
            ("restarts", .int(restarts)), ("recycled", .int(recycled)), ("reloads", .int(reloads)), ("workers", .array(ws)),
        ])
    }

    public static func statusText(_ j: JSON) -> String {
        var s = "pool master \(j["master_pid"]?.text ?? "?") since \(j["started_at"]?.stringValue ?? "?")\n"
        s += "workers: \(j["workers_running"]?.text ?? "0") running of \(j["workers_configured"]?.text ?? "0"); "
        s += "restarts \(j["restarts"]?.text ?? "0"), recycled \(j["recycled"]?.text ?? "0"), reloads \(j["reloads"]?.text ?? "0")\n"
        s += "  PID      SLOT  REQUESTS  BUSY  WAITING  STARTED\n"
        for w in j["workers"]?.arrayValue ?? [] {
            let cols = [w["pid"]?.text ?? "", w["slot"]?.text ?? "", w["requests"]?.text ?? "", w["busy_threads"]?.text ?? "",
                        w["waiting"]?.text ?? ""]
            s += "  " + cols[0].padding(toLength: 9, withPad: " ", startingAt: 0) + cols[1].padding(toLength: 6, withPad: " ", startingAt: 0)
                + cols[2].padding(toLength: 10, withPad: " ", startingAt: 0) + cols[3].padding(toLength: 6, withPad: " ", startingAt: 0)
                + cols[4].padding(toLength: 9, withPad: " ", startingAt: 0)
                + (w["started_at"]?.stringValue ?? "") + (w["retiring"]?.boolValue == true ? " (retiring)" : "") + "\n"
        }
        return s
    }

    /// Answers pending control connections: "status" → text, "status json" → JSON.
    public func serveControl() {
        while true {
            let c = accept(controlFD, nil, nil)
            if c < 0 { return }
            var tv = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var buf = [UInt8](repeating: 0, count: 256)
            let n = recv(c, &buf, buf.count, 0)
            let cmd = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : ""
            let reply: String
            switch cmd {
            case "status json": reply = status().text + "\n"
            case "status": reply = PoolMaster.statusText(status())
            default: reply = "unknown command; use: status | status json\n"
            }
            let bytes = Array(reply.utf8)
            _ = bytes.withUnsafeBufferPointer { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(c)
        }
    }

    /// The master's loop: signals (blocked by the caller, read with sigtimedwait), children, control socket.
    public func run() -> Int32 {
        var set = PoolMaster.signalSet()
        while true {
            var ts = timespec(tv_sec: 0, tv_nsec: 100_000_000)
            let sig = sigtimedwait(&set, nil, &ts)
            switch sig {
            case SIGTERM, SIGINT, SIGQUIT:
                Log.info("stopping", [("signal", .int(sig))])
                stop()
                return 0
            case SIGHUP, SIGUSR2:
                do { try reload() } catch { Log.error("reload failed", [("error", .string("\(error)"))]) }
            default: break
            }
            reap()
            serveControl()
        }
    }

    /// The signals the master handles synchronously; block them in every thread before `run`.
    public static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR2, SIGCHLD] { sigaddset(&set, s) }
        return set
    }

    public static func blockSignals() {
        var set = signalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Calls `body` (bind or connect) with the sockaddr_un of `path`; throws when the path does not fit.
    static func withUnixAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) throws -> Int32 {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw PoolError("socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// Asks a running master over its control socket.
    public static func query(controlPath: String, command: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        let rc = try withUnixAddress(controlPath) { connect(fd, $0, $1) }
        guard rc == 0 else { throw PoolError("no pool master answers at \(controlPath): \(String(cString: strerror(errno)))") }
        // A master busy elsewhere must not hold the caller (a worker thread answering /pool-status) for long.
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let cmd = Array((command + "\n").utf8)
        _ = cmd.withUnsafeBufferPointer { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
