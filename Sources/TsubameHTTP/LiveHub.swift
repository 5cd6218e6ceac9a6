// SPDX-License-Identifier: MIT
// Long-polls without a thread each (DESIGN.md, "Long-polling without thread
// starvation"). A handler that finds nothing new parks its request here and
// its accept thread goes back to accepting. One thread per worker process
// LISTENs on PostgreSQL and polls the parked connections:
//   - a NOTIFY for a topic wakes the waiters it concerns,
//   - a waiter whose `wait` ran out is answered with what exists,
//   - a connection nginx closed (the client went away) is dropped.
// Woken waiters go to a few responder threads, each with its own App (and PG
// connection). Waiters with the same question (same execution and `after`)
// get one answer, computed once. PostgreSQL connections per process are
// accept threads + responders + 1, however many wait.
//
// The race between "nothing new" and parking: a handler takes `mark` (a
// count of notifications received) before it queries. A notification whose
// rows it could not see was sent after that query's snapshot, so it arrived
// after the mark; `park` looks at the notifications since the mark (a ring
// of recent ones) and wakes the waiter at once if one concerns it.

import Foundation
import TsubameCore
import TsubameCrypto
import TsubameFastCGI
import TsubamePostgres

/// What a parked long-poll waits for.
enum Topic: Hashable {
    case log(Int64)
    case events
}

/// How a parked request is answered. `resume` re-runs the data part of its handler (the caller was
/// authenticated when it parked) and returns nil while there is still nothing to say.
struct Park: @unchecked Sendable {
    let topic: Topic
    /// Waiters with the same key get the same answer, computed once.
    let shareKey: String
    /// The newest position the caller has (log seq, event id): only newer ones wake it.
    let after: Int64
    /// Monotonic seconds (`LiveHub.now`) after which it is answered with what exists.
    let deadline: Double
    let resume: (_ app: App, _ final: Bool) throws -> HTTPResponse?
}

public final class LiveHub: @unchecked Sendable {
    final class Waiter {
        let parked: ParkedRequest
        let park: Park
        let fd: Int32
        init(_ parked: ParkedRequest, _ park: Park) { self.parked = parked; self.park = park; fd = parked.fd }
    }

    /// A notification as the ring keeps it: `any` wakes every waiter of the topic whatever its `after`.
    struct Note { let counter: UInt64; let topic: Topic; let position: Int64; let any: Bool }

    let settings: AppSettings
    let box: SecretBox
    let maxWaiters: Int
    private let cond = NSCondition()
    private var waiters: [Topic: [ObjectIdentifier: Waiter]] = [:]
    private var count = 0
    private var ring: [Note] = []
    private var ringHead = 0
    static let ringSize = 4096
    private var counter: UInt64 = 0
    /// Waiters that parked with an older mark may have missed a notification (the listener reconnected).
    private var trustedSince: UInt64 = 0
    private var work: [(waiters: [Waiter], final: Bool)] = []
    private var stopping = false
    private var closed = false
    private var listening = false
    private var pollDirty = true
    private var wakePipe: [Int32] = [-1, -1]
    private var threads: [Thread] = []
    private let finished = DispatchGroup()

    init(settings: AppSettings, box: SecretBox, maxWaiters: Int) {
        self.settings = settings; self.box = box; self.maxWaiters = maxWaiters
        if pipe(&wakePipe) == 0 {
            for fd in wakePipe { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        }
    }

    /// Monotonic seconds.
    static var now: Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// Starts the listener and `responders` responder threads.
    func start(responders: Int) {
        spawn("tsubame-listen") { [self] in listenLoop() }
        for i in 0..<max(1, responders) {
            spawn("tsubame-respond-\(i)") { [self] in respondLoop(App(settings: settings, box: box)) }
        }
    }

    private func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) {
        finished.enter()
        let t = Thread { [finished] in body(); finished.leave() }
        t.name = name
        t.start()
        threads.append(t)
    }

    /// Notifications received so far: take it before looking for news, hand it to `park`.
    var mark: UInt64 { cond.lock(); defer { cond.unlock() }; return counter }

    /// Parked requests right now.
    public var waiting: Int { cond.lock(); defer { cond.unlock() }; return count }

    /// Parks a request, or hands it straight to a responder when something it waits for arrived since `mark`
    /// (or when the hub is stopping: then it is answered with what exists).
    func park(_ parked: ParkedRequest, _ park: Park, mark: UInt64) {
        let w = Waiter(parked, park)
        cond.lock()
        defer { cond.unlock() }
        if stopping || count >= maxWaiters {
            enqueue([w], final: true)
            return
        }
        if missed(since: mark, by: park) {
            enqueue([w], final: false)
            return
        }
        waiters[park.topic, default: [:]][ObjectIdentifier(w)] = w
        count += 1
        pollDirty = true
        knock()
    }

    /// Whether a notification after `mark` may concern `park` (caller holds the lock).
    private func missed(since mark: UInt64, by park: Park) -> Bool {
        if mark < trustedSince { return true }
        if counter == mark { return false }
        // The ring holds the last `ringSize` notifications, oldest at ringHead once full.
        let oldest = ring.count < LiveHub.ringSize ? ring.first?.counter ?? counter + 1 : ring[ringHead].counter
        if mark + 1 < oldest { return true }
        for n in ring where n.counter > mark && n.topic == park.topic && (n.any || n.position > park.after) { return true }
        return false
    }

    private func enqueue(_ ws: [Waiter], final: Bool) {
        guard !ws.isEmpty else { return }
        work.append((ws, final))
        cond.signal()
    }

    private func knock() {
        var b: UInt8 = 1
        _ = write(wakePipe[1], &b, 1)
    }

    /// Answers every waiter with what exists and parks nothing more. Safe to call more than once.
    public func shutdown() {
        cond.lock()
        stopping = true
        for (_, ws) in waiters { enqueue(Array(ws.values), final: true) }
        waiters = [:]
        count = 0
        cond.broadcast()
        cond.unlock()
        knock()
    }

    /// After the accept threads ended (nothing parks any more): lets the threads finish their work and waits for them.
    public func close() {
        shutdown()
        cond.lock()
        closed = true
        cond.broadcast()
        cond.unlock()
        knock()
        finished.wait()
        for fd in wakePipe where fd >= 0 { Foundation.close(fd) }
        wakePipe = [-1, -1]
    }

    // MARK: - the listener

    private func listenLoop() {
        var db: PGConnection?
        var nextConnect = 0.0
        var lastFallback = 0.0
        var fds: [pollfd] = []
        var owners: [Waiter] = []
        while true {
            let now = LiveHub.now
            if db == nil, now >= nextConnect {
                do {
                    let c = try PGConnection(settings.databaseURL)
                    try c.listen(Queue.logChannel)
                    try c.listen(Events.channel)
                    db = c
                    cond.lock()
                    // Anything may have happened while nobody listened: every waiter looks again.
                    trustedSince = counter + 1
                    counter += 1
                    listening = true
                    wakeAll()
                    cond.unlock()
                } catch {
                    Log.warn("long-poll listener cannot reach PostgreSQL; retrying", [("error", .string("\(error)"))])
                    nextConnect = now + 1
                }
            }
            cond.lock()
            if closed && work.isEmpty { cond.unlock(); break }
            if !listening && now - lastFallback >= 1 {
                // No LISTEN: every waiter looks again once a second instead.
                wakeAll()
                lastFallback = now
            }
            var deadline = db == nil ? min(nextConnect, lastFallback + 1) : now + 5
            if pollDirty {
                fds = [pollfd(fd: wakePipe[0], events: Int16(POLLIN), revents: 0), pollfd(fd: -1, events: Int16(POLLIN), revents: 0)]
                owners = []
                for (_, ws) in waiters {
                    for w in ws.values {
                        fds.append(pollfd(fd: w.fd, events: LiveHub.hangUp, revents: 0))
                        owners.append(w)
                    }
                }
                pollDirty = false
            }
            for (_, ws) in waiters { for w in ws.values { deadline = min(deadline, w.park.deadline) } }
            cond.unlock()
            fds[1].fd = db?.socket ?? -1
            for i in fds.indices { fds[i].revents = 0 }
            let timeout = Int32(max(0, min(deadline - now, 5)) * 1000 + 1)
            let rc = poll(&fds, nfds_t(fds.count), timeout)
            if rc < 0 && errno != EINTR { usleep(10_000) }
            if fds[0].revents != 0 {
                var buf = [UInt8](repeating: 0, count: 256)
                while read(wakePipe[0], &buf, buf.count) > 0 {}
            }
            if let c = db, fds[1].revents != 0 {
                do { deliver(try c.takeNotifications()) } catch {
                    Log.warn("long-poll listener lost PostgreSQL; reconnecting", [("error", .string("\(error)"))])
                    db = nil
                    nextConnect = LiveHub.now
                    cond.lock(); listening = false; cond.unlock()
                }
            }
            cond.lock()
            for (i, w) in owners.enumerated() where fds[i + 2].revents != 0 {
                // nginx closed the connection: the client is gone.
                if waiters[w.park.topic]?.removeValue(forKey: ObjectIdentifier(w)) != nil {
                    count -= 1
                    pollDirty = true
                    w.parked.drop()
                }
            }
            let later = LiveHub.now
            for (topic, ws) in waiters {
                let due = ws.values.filter { $0.park.deadline <= later }
                guard !due.isEmpty else { continue }
                for w in due { waiters[topic]?[ObjectIdentifier(w)] = nil }
                count -= due.count
                pollDirty = true
                enqueue(due, final: true)
            }
            cond.unlock()
        }
    }

    /// POLLRDHUP (Linux): the peer closed its end; POLLHUP and POLLERR are always reported.
    static let hangUp: Int16 = 0x2000

    /// Records notifications and wakes whom they concern.
    private func deliver(_ notes: [(String, String)]) {
        guard !notes.isEmpty else { return }
        cond.lock()
        defer { cond.unlock() }
        for (channel, payload) in notes {
            let parts = payload.split(separator: ":").compactMap { Int64($0) }
            guard parts.count == 2 else { continue }
            if channel == Queue.logChannel {
                record(Note(counter: 0, topic: .log(parts[0]), position: parts[1], any: false))
            } else if channel == Events.channel {
                record(Note(counter: 0, topic: .events, position: parts[0], any: false))
                // A status change: the log answer carries the status (and `complete`).
                record(Note(counter: 0, topic: .log(parts[1]), position: 0, any: true))
            }
        }
    }

    /// Caller holds the lock.
    private func record(_ n: Note) {
        counter += 1
        let note = Note(counter: counter, topic: n.topic, position: n.position, any: n.any)
        if ring.count < LiveHub.ringSize { ring.append(note) } else {
            ring[ringHead] = note
            ringHead = (ringHead + 1) % LiveHub.ringSize
        }
        guard let ws = waiters[n.topic] else { return }
        let woken = ws.values.filter { n.any || n.position > $0.park.after }
        guard !woken.isEmpty else { return }
        for w in woken { waiters[n.topic]?[ObjectIdentifier(w)] = nil }
        if waiters[n.topic]?.isEmpty == true { waiters[n.topic] = nil }
        count -= woken.count
        pollDirty = true
        enqueue(woken, final: false)
    }

    /// Caller holds the lock.
    private func wakeAll() {
        for (_, ws) in waiters { enqueue(Array(ws.values), final: false) }
        waiters = [:]
        count = 0
        pollDirty = true
    }

    // MARK: - responders

    private func respondLoop(_ app: App) {
        // Connected up front: the process's PostgreSQL connections are the same with or without waiters.
        _ = try? app.database()
        while true {
            cond.lock()
            while work.isEmpty && !closed { cond.wait() }
            if work.isEmpty && closed { cond.unlock(); return }
            let item = work.removeFirst()
            cond.unlock()
            // One answer per question: waiters with the same key share it.
            var groups: [String: [Waiter]] = [:]
            var order: [String] = []
            for w in item.waiters {
                if groups[w.park.shareKey] == nil { order.append(w.park.shareKey) }
                groups[w.park.shareKey, default: []].append(w)
            }
            for key in order {
                let ws = groups[key]!
                let mark = self.mark
                let requestID = Crypto.hex(Crypto.randomBytes(8))
                var again = false
                let response = app.guarded(requestID: requestID, path: ws[0].parked.request.path) {
                    if let r = try ws[0].park.resume(app, item.final || LiveHub.now >= ws[0].park.deadline) { return r }
                    again = true
                    return HTTPResponse(status: 0)
                }
                for w in ws {
                    if again { park(w.parked, w.park, mark: mark) } else { w.parked.answer(response) }
                }
            }
        }
    }
}
