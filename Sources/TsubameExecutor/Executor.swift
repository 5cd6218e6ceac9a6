// SPDX-License-Identifier: MIT
// The executor: a control thread (LISTEN, claim, heartbeat, cancel, reap) and
// a writer thread (batched log writes, results), around an SSH runner.

public import Foundation
public import TsubameCore
public import TsubameCrypto
import TsubamePostgres
public import TsubameSSH

/// What runs targets remotely. SSHRunner in production; tests may substitute.
public protocol TargetRunner: AnyObject, Sendable {
    func submit(_ target: SSHTarget)
    func cancel(id: Int64)
}

extension SSHRunner: TargetRunner {}

public struct ExecutorSettings: Sendable {
    public var id: String
    public var databaseURL: String
    public var capacity = 500
    public var leaseSeconds = 30
    public var heartbeatSeconds = 5.0
    public var pollSeconds = 2.0
    public var connectTimeout = 10.0
    public var outputCapBytes = 64 << 20
    /// Output waits at most this long before it is written (the latency a watcher sees).
    public var flushInterval = 0.05
    /// Size of one log chunk: consecutive output of one target and stream is merged up to this size.
    public var flushBytes = 64 << 10
    /// Under load, one write (one statement, one commit) takes up to this much of one execution's output. Measured
    /// (scripts/bench exec, 200 MB): PostgreSQL spends ~1 ms of CPU per statement besides the bytes, so 256 KiB
    /// statements cost it 1.2-1.5 CPU s, 1 MiB 0.6 s, 2 MiB 0.45 s, 4 MiB 0.3-0.4 s (but ~5 MiB more executor RSS).
    public var statementBytes = 2 << 20
    /// How often the scheduler looks for due slots (a slot fires at most this late, plus the claim).
    public var scheduleTickSeconds = 1.0
    /// History retention (Retention.sweep): days, 0 = keep; how often the sweep runs while nothing is left to delete.
    public var retentionDays = 30
    public var auditRetentionDays = 365
    public var retentionIntervalSeconds = 60.0
    public var idleSessionSeconds = 0.0
    public var channelsPerConnection = 8

    public init(id: String, databaseURL: String) { self.id = id; self.databaseURL = databaseURL }

    public init(config: Config) {
        let host = ProcessInfo.processInfo.hostName
        self.init(id: config.string("TSUBAME_EXECUTOR_ID") ?? "\(host)-\(getpid())-\(Crypto.hex(Crypto.randomBytes(3)))",
                  databaseURL: config.databaseURL)
        capacity = config.int("TSUBAME_EXECUTOR_CAPACITY")
        leaseSeconds = config.int("TSUBAME_LEASE_SECONDS")
        heartbeatSeconds = max(0.2, Double(leaseSeconds) / 6)
        pollSeconds = Double(config.int("TSUBAME_POLL_INTERVAL_MS")) / 1000
        connectTimeout = Double(config.int("TSUBAME_SSH_CONNECT_TIMEOUT_SECONDS"))
        outputCapBytes = config.int("TSUBAME_OUTPUT_CAP_MB") << 20
        retentionDays = config.int("TSUBAME_RETENTION_DAYS")
        auditRetentionDays = config.int("TSUBAME_AUDIT_RETENTION_DAYS")
        idleSessionSeconds = Double(config.int("TSUBAME_SSH_IDLE_SECONDS"))
        channelsPerConnection = config.int("TSUBAME_SSH_CHANNELS_PER_CONNECTION")
    }
}

/// A target this executor is running.
final class ActiveTarget: @unchecked Sendable {
    let claim: ClaimedTarget
    var stdout: OutputMasker
    var stderr: OutputMasker
    var lost = false
    let retries: Int
    /// Set when output of its execution could not be stored because the database is out of disk space: the target
    /// is stopped, its further output dropped, and it fails with this error.
    var storageError: String?
    var storageLineTried = false
    /// What the target ended with, decided once when it finished (its last line is then pending), so that a write
    /// retried after a database error neither writes that line twice nor decides differently. Set under the
    /// executor's lock (the heartbeat reads it).
    var result: (status: String, code: Int32?, error: String?, retryDelay: Double?)?
    init(claim: ClaimedTarget, secrets: [String], retries: Int) {
        self.claim = claim
        stdout = OutputMasker(secrets: secrets)
        stderr = OutputMasker(secrets: secrets)
        self.retries = retries
    }
}

public final class Executor: @unchecked Sendable {
    public let settings: ExecutorSettings
    let box: SecretBox
    let lock = NSLock()
    var active: [Int64: ActiveTarget] = [:]
    var runner: (any TargetRunner)?
    let events = EventQueue()
    var stopping = false
    var threads: [Thread] = []
    let done = DispatchGroup()
    /// Bytes written per execution by this executor (for the output cap).
    var written: [Int64: Int] = [:]
    var truncated: Set<Int64> = []

    public init(settings: ExecutorSettings, box: SecretBox) {
        self.settings = settings
        self.box = box
    }

    /// Starts the control and writer threads; `runner` gets the targets.
    public func start(runner: any TargetRunner) {
        self.runner = runner
        for name in ["control", "writer"] {
            done.enter()
            let t = Thread { [self] in
                if name == "control" { controlLoop() } else { writerLoop() }
                done.leave()
            }
            t.name = "executor-\(name)"
            t.start()
            threads.append(t)
        }
    }

    /// Stops claiming; running targets are cancelled (their remote processes killed) and recorded.
    public func stop() {
        lock.lock(); stopping = true; let ids = Array(active.keys); lock.unlock()
        for id in ids { runner?.cancel(id: id) }
        let deadline = Date().addingTimeInterval(10)
        while activeCount > 0, Date() < deadline { usleep(20_000) }
        events.close()
        done.wait()
    }

    /// Session settings of the executor's connections. A transaction left open by an executor that was cut off from
    /// the database mid-transaction (a network partition: the server sees no error, the connection just goes quiet)
    /// would hold its row locks until TCP gives up, many minutes later, and the reaper of another executor would wait
    /// for them (it locks the execution row): the server ends such a session after a third of the lease (at least 1 s),
    /// so the lost executor's targets are failed after lease + a third. The executor's transactions never wait
    /// between statements; one cut short by a stall is simply retried.
    public static func sessionSettings(leaseSeconds: Int) -> [(name: String, value: String)] {
        [("idle_in_transaction_session_timeout", "\(max(1000, leaseSeconds * 1000 / 3))ms")]
    }

    func connect() throws -> PGConnection {
        try PGConnection(settings.databaseURL, settings: Executor.sessionSettings(leaseSeconds: settings.leaseSeconds))
    }

    public var activeCount: Int { lock.lock(); defer { lock.unlock() }; return active.count }
    var isStopping: Bool { lock.lock(); defer { lock.unlock() }; return stopping }

    /// Receives the runner's events (on its thread); the writer thread does the database work.
    public func handle(_ event: SSHEvent) { events.push(event) }

    // MARK: control loop

    func controlLoop() {
        var db: PGConnection? = nil
        var lastHeartbeat = Date.distantPast, lastReap = Date.distantPast, lastClaim = Date.distantPast, nextTick = Date.distantPast
        var nextSweep = Date()
        var wake = true
        while !isStopping {
            do {
                if db == nil || !(db!.isOK) {
                    let c = try db ?? connect()
                    if db != nil { try c.reconnectAndListen() } else {
                        try c.listen(Queue.queueChannel)
                        try c.listen(Queue.cancelChannel)
                    }
                    db = c
                    wake = true  // notifications may have been missed while disconnected
                }
                let conn = db!
                if Date() >= nextTick {
                    // Scheduled jobs first (a slot is a deadline): whichever executor gets the lock fires what is due
                    // (its NOTIFY wakes the others).
                    let started = Date()
                    let tick = try Scheduler.tick(conn, now: started)
                    let now = Date()
                    if !tick.created.isEmpty || tick.skipped > 0 {
                        Log.info("scheduled runs queued", [("executions", .int(tick.created.count)), ("skipped", .int(tick.skipped)),
                                                           ("tick_ms", .int(Int(now.timeIntervalSince(started) * 1000)))])
                        wake = wake || !tick.created.isEmpty
                    }
                    // Again at once when the tick stopped at its limit; else after the tick interval, or at the next slot
                    // when that comes first (a slot is then queued within milliseconds, not up to an interval late).
                    nextTick = tick.more ? now : now.addingTimeInterval(settings.scheduleTickSeconds)
                    if !tick.more, let due = tick.nextDue, due > now, due < nextTick { nextTick = due }
                }
                if Date().timeIntervalSince(lastHeartbeat) >= settings.heartbeatSeconds {
                    try heartbeat(conn)
                    lastHeartbeat = Date()
                }
                if Date().timeIntervalSince(lastReap) >= Double(settings.leaseSeconds) / 2 {
                    let n = try Queue.reap(conn)
                    if n > 0 { Log.warn("reaped targets of a lost executor", [("count", .int(n))]) }
                    try Events.prune(conn)
                    lastReap = Date()
                }
                if Date() >= nextSweep {
                    // Old history, in batches for at most 200 ms (the loop also heartbeats); again at once while more is left.
                    let started = Date()
                    var total = Retention.Sweep(), more = false
                    repeat {
                        let s = try Retention.sweep(conn, defaultDays: settings.retentionDays, auditDays: settings.auditRetentionDays)
                        total.executions += s.executions; total.auditEntries += s.auditEntries
                        more = s.executions == 200 || s.auditEntries == 200
                    } while more && Date().timeIntervalSince(started) < 0.2
                    if total.executions + total.auditEntries > 0 {
                        Log.info("old history deleted", [("executions", .int(total.executions)), ("audit_entries", .int(total.auditEntries))])
                    }
                    nextSweep = Date().addingTimeInterval(more ? 1 : settings.retentionIntervalSeconds)
                }
                if wake { try claim(conn); wake = false; lastClaim = Date() }
                // Jittered poll: a missed NOTIFY costs at most one interval.
                let jitter = settings.pollSeconds * Double.random(in: 0.8...1.2)
                // (+2 ms: poll counts whole milliseconds, and waking before the slot would find nothing due.)
                let timeout = min(jitter, settings.heartbeatSeconds, max(0.001, nextTick.timeIntervalSinceNow + 0.002))
                for (channel, payload) in try conn.notifications(timeout: timeout) {
                    if channel == Queue.cancelChannel, let execution = Int64(payload) { cancelExecution(execution) } else { wake = true }
                }
                // The poll fallback: claim at least once per interval, NOTIFY or not (retries' run_at, missed notifications).
                if !wake, Date().timeIntervalSince(lastClaim) >= jitter { wake = true }
            } catch {
                Log.warn("executor database problem; retrying", [("error", .string("\(error)"))])
                db = nil
                usleep(500_000)
            }
        }
    }

    /// What the executor says of itself at each heartbeat (shown by /metrics): under `lock`.
    var targetsRun: Int64 = 0
    var connectSeconds = Histogram()

    var stats: JSON {
        lock.lock(); defer { lock.unlock() }
        return .object([("capacity", .int(settings.capacity)), ("running", .int(active.count)), ("targets_run", .int(targetsRun)),
                        ("ssh_connect_seconds", connectSeconds.json)])
    }

    func heartbeat(_ db: PGConnection) throws {
        let stats = stats
        lock.lock()
        let holding = Array(active.keys)
        lock.unlock()
        let held = try Queue.heartbeat(db, executor: settings.id, host: ProcessInfo.processInfo.hostName, leaseSeconds: settings.leaseSeconds,
                                       holding: holding, stats: stats)
        lock.lock()
        // A target whose result is being recorded is no longer `running` in the database because it finished (or
        // was queued again for a retry), not because another executor took it: only one with no result yet is lost.
        let lost = active.filter { holding.contains($0.key) && !held.contains($0.key) && !$0.value.lost && $0.value.result == nil }
        for (_, t) in lost { t.lost = true }
        lock.unlock()
        for (id, _) in lost {
            Log.warn("lease lost; stopping the target", [("target_id", .int(id))])
            runner?.cancel(id: id)
        }
        for id in try Queue.cancelRequested(db, executor: settings.id) { runner?.cancel(id: id) }
    }

    func cancelExecution(_ execution: Int64) {
        lock.lock()
        let ids = active.filter { $0.value.claim.executionID == execution }.map(\.key)
        lock.unlock()
        for id in ids { runner?.cancel(id: id) }
    }

    func claim(_ db: PGConnection) throws {
        while !isStopping {
            let free = settings.capacity - activeCount
            if free <= 0 { return }
            let claimed = try Queue.claim(db, executor: settings.id, limit: min(free, 100), leaseSeconds: settings.leaseSeconds)
            for c in claimed { launch(c, db: db) }
            if claimed.count < min(free, 100) { return }
        }
    }

    func launch(_ c: ClaimedTarget, db: PGConnection) {
        var secrets: [(String, String)] = []
        var failure: String? = nil
        if let sealed = c.secretEnv {
            if let plain = try? box.open(sealed), let obj = (try? JSON.parse(plain))?.objectValue {
                secrets = obj.compactMap { k, v in v.stringValue.map { (k, $0) } }
            } else {
                failure = "the job's secret environment cannot be decrypted with this executor's master key (key rotated?)"
            }
        }
        var auth: SSHAuth? = nil
        if c.serverID == nil || c.credentials == nil {
            failure = "the server was deleted after this run was queued"
        } else if let sealed = c.credentials, let plain = try? box.open(sealed), let creds = try? JSON.parse(plain) {
            if c.authMethod == "key", let key = creds["private_key"]?.stringValue {
                auth = .key(privateKey: key, passphrase: creds["passphrase"]?.stringValue)
            } else if let pw = creds["password"]?.stringValue {
                auth = .password(pw)
            } else {
                failure = "the server has no \(c.authMethod == "key" ? "private key" : "password") set"
            }
        } else if failure == nil {
            failure = "the server's credentials cannot be decrypted with this executor's master key (key rotated?)"
        }
        let t = ActiveTarget(claim: c, secrets: secrets.map(\.1), retries: c.retries)
        lock.lock(); active[c.id] = t; lock.unlock()
        if let failure {
            events.push(.finished(id: c.id, outcome: .failed(.protocolError, failure), durationMs: 0))
            return
        }
        var env = (c.env.objectValue ?? []).compactMap { k, v in v.stringValue.map { (k, $0) } }
        env += secrets
        runner?.submit(SSHTarget(id: c.id, host: c.host, port: c.port, username: c.username, auth: auth!,
                                 pinnedFingerprint: c.hostKeyFingerprint, script: c.script, environment: env,
                                 timeout: TimeInterval(c.timeoutSeconds), connectTimeout: settings.connectTimeout))
    }

    // MARK: writer loop

    /// Output waiting to be written, per execution, in arrival order.
    struct Pending {
        var pieces: [LogPiece] = []
        var bytes = 0
        var since = Date()
        /// The output cap's system line is among the pieces.
        var truncated = false

        mutating func add(_ t: ActiveTarget, stream: String, bytes: [UInt8], countBytes: Bool, executor: Executor) {
            let execution = t.claim.executionID
            var data = bytes
            if pieces.isEmpty { since = Date() }
            if countBytes {
                // Past the cap nothing more is kept, not even a smaller piece that would still fit.
                if executor.truncated.contains(execution) { return }
                let written = executor.written[execution] ?? 0
                if written + data.count > executor.settings.outputCapBytes {
                    // Keep the cap's worth exactly (cut on a UTF-8 boundary), then say so once.
                    let cut = OutputMasker.utf8Boundary(data, at: max(0, executor.settings.outputCapBytes - written))
                    data = Array(data[..<cut])
                    executor.truncated.insert(execution)
                    truncated = true
                    if !data.isEmpty { append(t, stream: stream, data: data, executor: executor) }
                    executor.written[execution] = written + data.count
                    self.bytes += data.count
                    pieces.append(LogPiece(serverID: t.claim.serverID, stream: "system",
                                           data: "output limit of \(executor.settings.outputCapBytes >> 20) MiB reached: further output of this execution is dropped (the job keeps running)\n",
                                           targetID: t.claim.id))
                    return
                }
                executor.written[execution] = written + data.count
                self.bytes += data.count
            }
            append(t, stream: stream, data: data, executor: executor)
        }

        private mutating func append(_ t: ActiveTarget, stream: String, data: [UInt8], executor: Executor) {
            // Merge consecutive output of one target and stream into one chunk.
            let n = pieces.count
            if n > 0, pieces[n - 1].stream == stream, pieces[n - 1].targetID == t.claim.id, stream != "system",
               pieces[n - 1].bytes.count < executor.settings.flushBytes {
                pieces[n - 1].bytes.append(contentsOf: data)
            } else {
                pieces.append(LogPiece(serverID: t.claim.serverID, stream: stream, bytes: data, targetID: t.claim.id))
            }
        }
    }

    func writerLoop() {
        var db: PGConnection? = nil
        var pending: [Int64: Pending] = [:]
        while true {
            let oldest = pending.values.map(\.since).min()
            let wait = oldest.map { max(0, settings.flushInterval - Date().timeIntervalSince($0)) } ?? 0.5
            let batch = events.pop(timeout: wait)
            if batch == nil && events.isClosed && pending.isEmpty { break }
            var applied = 0
            do {
                if db == nil || !(db!.isOK) { db = try connect() }
                let conn = db!
                for event in batch ?? [] {
                    try apply(event, conn, &pending)
                    applied += 1
                }
                // Nothing more came in meanwhile: write now, so a line reaches its watchers within a few ms. Under
                // load the queue is never empty here, and output gathers until flushBytes or flushInterval.
                let idle = events.isEmpty
                for (execution, p) in pending where idle || p.bytes >= settings.flushBytes || Date().timeIntervalSince(p.since) >= settings.flushInterval {
                    try flush(execution, conn, &pending)
                }
            } catch {
                Log.warn("executor could not write; retrying", [("error", .string("\(error)"))])
                db = nil
                if let batch, applied < batch.count {
                    // Output already taken in stays pending (not fed twice); anything else is retried.
                    var rest = Array(batch[(applied + 1)...])
                    if case .output = batch[applied] {} else { rest.insert(batch[applied], at: 0) }
                    events.pushFront(rest)
                }
                usleep(500_000)
            }
        }
    }

    func target(_ id: Int64) -> ActiveTarget? { lock.lock(); defer { lock.unlock() }; return active[id] }

    func add(_ t: ActiveTarget, stream: String, bytes: [UInt8], _ pending: inout [Int64: Pending], countBytes: Bool = true) {
        guard !bytes.isEmpty, t.storageError == nil else { return }
        let execution = t.claim.executionID
        // Mutated in place in the dictionary: a chunk being merged into is never copied.
        pending[execution, default: Pending()].add(t, stream: stream, bytes: bytes, countBytes: countBytes, executor: self)
    }

    func system(_ t: ActiveTarget, _ text: String, _ pending: inout [Int64: Pending]) {
        add(t, stream: "system", bytes: Array((text.hasSuffix("\n") ? text : text + "\n").utf8), &pending, countBytes: false)
    }

    func flush(_ execution: Int64, _ db: PGConnection, _ pending: inout [Int64: Pending]) throws {
        guard let p = pending[execution], !p.pieces.isEmpty else { pending[execution] = nil; return }
        do {
            // Fenced per piece: output of a target this executor no longer holds is dropped.
            try Queue.appendLog(db, executionID: execution, executor: settings.id, pieces: p.pieces, truncated: p.truncated)
        } catch let e as PGError where e.isDiskFull {
            // Retrying would not help and output would pile up here: what cannot be stored is dropped, and the
            // execution's targets are stopped and failed saying why (rows stored before stay as they are).
            pending[execution] = nil
            storageFull(execution, e)
            return
        }
        pending[execution] = nil
    }

    /// The database refused output of `execution` for lack of disk space: its targets here are stopped and will fail.
    func storageFull(_ execution: Int64, _ error: PGError) {
        let message = "output could not be stored: the database server is out of disk space (\(error.primaryMessage)); "
            + "the target was stopped and its output from then on is lost"
        lock.lock()
        let hit = active.values.filter { $0.claim.executionID == execution && $0.storageError == nil }
        for t in hit { t.storageError = message }
        lock.unlock()
        guard !hit.isEmpty else { return }
        Log.error("output could not be stored: the database is out of disk space; stopping the execution's targets",
                  [("execution_id", .int(execution)), ("targets", .int(hit.count)), ("error", .string(error.description))])
        for t in hit { runner?.cancel(id: t.claim.id) }
    }

    func apply(_ event: SSHEvent, _ db: PGConnection, _ pending: inout [Int64: Pending]) throws {
        switch event {
        case let .hostKey(id, algorithm, fingerprint, firstUse):
            guard let t = target(id) else { return }
            if firstUse, let server = t.claim.serverID {
                try Queue.pinHostKey(db, serverID: server, algorithm: algorithm, fingerprint: fingerprint)
                system(t, "host key \(algorithm) \(fingerprint) trusted on first use", &pending)
            }
        case let .started(id, connectMs):
            lock.lock(); connectSeconds.observe(connectMs / 1000); lock.unlock()
            guard let t = target(id) else { return }
            system(t, "connected to \(t.claim.host):\(t.claim.port) as \(t.claim.username) in \(Int(connectMs)) ms; running (attempt \(t.claim.attempt))", &pending)
        case let .output(id, stream, bytes):
            guard let t = target(id), !t.lost else { return }
            if stream == .stdout { add(t, stream: "stdout", bytes: t.stdout.feedBytes(bytes), &pending) } else {
                add(t, stream: "stderr", bytes: t.stderr.feedBytes(bytes), &pending)
            }
            // Under load, write once a statement's worth is waiting: memory stays bounded by that, not by the batch.
            if let p = pending[t.claim.executionID], p.bytes >= settings.statementBytes { try flush(t.claim.executionID, db, &pending) }
        case let .finished(id, outcome, durationMs):
            guard let t = target(id) else { return }
            if t.result == nil {
                // Once: when a write below fails, this event is applied again and the line is already pending.
                add(t, stream: "stdout", bytes: t.stdout.flushBytes(), &pending)
                add(t, stream: "stderr", bytes: t.stderr.flushBytes(), &pending)
                let (status, code, error, line) = Executor.describe(outcome, durationMs: durationMs, target: t)
                let retry = status == "failed" && t.claim.attempt <= t.retries && !t.lost && !isStopping && t.storageError == nil
                system(t, line + (retry ? "; retrying (attempt \(t.claim.attempt + 1) of \(t.retries + 1))" : ""), &pending)
                lock.lock()
                t.result = (status, code, error, retry ? min(pow(2, Double(t.claim.attempt)), 60) : nil)
                lock.unlock()
            }
            try flush(t.claim.executionID, db, &pending)
            guard var result = t.result else { return }
            if let storage = t.storageError {
                result = ("failed", result.code, storage, nil)
                if !t.storageLineTried, !t.lost {
                    // The reason in the log too, if there is room for one line.
                    t.storageLineTried = true
                    do {
                        try Queue.appendLog(db, executionID: t.claim.executionID, executor: settings.id,
                                            pieces: [LogPiece(serverID: t.claim.serverID, stream: "system", data: storage + "\n", targetID: id)])
                    } catch let e as PGError where e.isDiskFull {}
                }
            }
            if !t.lost {
                let ok = try Queue.finishTarget(db, targetID: id, executor: settings.id, status: result.status, exitCode: result.code,
                                                error: result.error, retryDelaySeconds: result.retryDelay)
                if !ok { Log.warn("result dropped: the lease was lost", [("target_id", .int(id))]) }
            }
            lock.lock()
            active[id] = nil
            targetsRun += 1
            let more = active.values.contains { $0.claim.executionID == t.claim.executionID }
            lock.unlock()
            if !more { written[t.claim.executionID] = nil; truncated.remove(t.claim.executionID) }
        }
    }

    /// Status, exit code, error and the system line for an outcome.
    static func describe(_ outcome: SSHOutcome, durationMs: Double, target t: ActiveTarget) -> (String, Int32?, String?, String) {
        let secs = String(format: "%.2f s", durationMs / 1000)
        switch outcome {
        case let .exited(code):
            return (code == 0 ? "succeeded" : "failed", code, nil, "exit code \(code) after \(secs)")
        case let .signaled(sig):
            return ("failed", nil, "the remote process was killed by signal \(sig)", "killed by signal \(sig) after \(secs)")
        case .timedOut:
            let m = "timed out after \(t.claim.timeoutSeconds) s; the remote process group was killed"
            return ("timed_out", nil, m, m)
        case .cancelled:
            if t.lost { return ("failed", nil, "this executor lost its lease", "stopped: this executor lost its lease") }
            return ("cancelled", nil, "cancelled", "cancelled after \(secs); the remote process group was killed")
        case let .failed(_, message):
            return ("failed", nil, message, message)
        }
    }
}

/// A closable queue of runner events with bounded memory: producers wait when it holds too many output bytes.
final class EventQueue: @unchecked Sendable {
    let cond = NSCondition()
    var items: [SSHEvent] = []
    var bytes = 0
    var closed = false
    let maxBytes = 4 << 20

    func push(_ e: SSHEvent) {
        cond.lock()
        var size = 0
        if case let .output(_, _, b) = e { size = b.count }
        while bytes + size > maxBytes, !closed { cond.wait() }
        items.append(e)
        bytes += size
        cond.broadcast()
        cond.unlock()
    }

    func pushFront(_ batch: [SSHEvent]) {
        cond.lock()
        items.insert(contentsOf: batch, at: 0)
        for e in batch { if case let .output(_, _, b) = e { bytes += b.count } }
        cond.unlock()
    }

    /// Everything queued, waiting up to `timeout` for something; nil when nothing arrived.
    func pop(timeout: Double) -> [SSHEvent]? {
        cond.lock()
        defer { cond.unlock() }
        if items.isEmpty, !closed { _ = cond.wait(until: Date().addingTimeInterval(timeout)) }
        if items.isEmpty { return nil }
        let out = items
        items = []
        bytes = 0
        cond.broadcast()
        return out
    }

    func close() { cond.lock(); closed = true; cond.broadcast(); cond.unlock() }
    var isClosed: Bool { cond.lock(); defer { cond.unlock() }; return closed }
    var isEmpty: Bool { cond.lock(); defer { cond.unlock() }; return items.isEmpty }
}
