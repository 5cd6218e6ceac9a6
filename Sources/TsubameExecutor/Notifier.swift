// SPDX-License-Identifier: MIT
// The notification delivery loop of an executor: its own thread and its own
// PostgreSQL connection (LISTEN tsubame_notify), and a few sender threads.
// It never touches a job: a slow or failing receiver only delays other
// notifications, never a run (README.md, "Notifications").
//
// The loop claims due deliveries (SKIP LOCKED, so several executors share
// the work without sending one twice), hands them to the senders, and
// records each outcome: sent, retried later (backoff), or failed for good.
// Every few seconds it also looks for running executions that run long.

import Foundation
import TsubameCore
public import TsubameCrypto
public import TsubameNotify
import TsubamePostgres

public final class Notifier: @unchecked Sendable {
    let databaseURL: String
    let settings: NotifySettings
    let box: SecretBox
    /// How often running executions are checked against their job's median duration.
    public var runningLongCheckSeconds = 2.0
    /// Claim at least this often without a NOTIFY (retries come due without one).
    public var pollSeconds = 1.0

    private let cond = NSCondition()
    private var stopping = false
    private var work: [ClaimedDelivery] = []
    private var results: [(ClaimedDelivery, TransferResult)] = []
    private var inFlight = 0
    private let done = DispatchGroup()

    public init(databaseURL: String, settings: NotifySettings, box: SecretBox) {
        self.databaseURL = databaseURL
        self.settings = settings
        self.box = box
    }

    /// A claimed delivery is due again after this long unless its outcome was recorded (the sender died).
    var leaseSeconds: Int { settings.timeouts.totalSeconds + 45 }

    public func start() {
        done.enter()
        let loop = Thread { [self] in
            run()
            done.leave()
        }
        loop.name = "notify-loop"
        loop.start()
        for n in 0..<max(1, settings.concurrency) {
            let t = Thread { [self] in sender() }
            t.name = "notify-sender-\(n)"
            t.start()
        }
    }

    /// Stops claiming and recording. A send still in flight is abandoned: its delivery comes due again after the lease.
    public func stop() {
        cond.lock(); stopping = true; cond.broadcast(); cond.unlock()
        done.wait()
    }

    private var isStopping: Bool { cond.lock(); defer { cond.unlock() }; return stopping }

    // MARK: the loop

    func run() {
        var db: PGConnection? = nil
        var lastCheck = Date.distantPast, lastClaim = Date.distantPast
        var wake = true
        var unrecorded: [(ClaimedDelivery, TransferResult)] = []
        while !isStopping {
            do {
                if db == nil || !(db!.isOK) {
                    let c = try db ?? PGConnection(databaseURL)
                    if db != nil { try c.reconnectAndListen() } else { try c.listen(Notifications.channel) }
                    db = c
                    wake = true
                }
                let conn = db!
                unrecorded += takeResults()
                while let (d, r) = unrecorded.first {
                    try record(conn, d, r)
                    unrecorded.removeFirst()
                }
                if Date().timeIntervalSince(lastCheck) >= runningLongCheckSeconds {
                    let added = try Notifications.findRunningLong(conn)
                    if added > 0 {
                        Log.info("executions running long", [("notifications", .int(added))])
                        wake = true
                    }
                    lastCheck = Date()
                }
                if Date().timeIntervalSince(lastClaim) >= pollSeconds { wake = true }
                let free = settings.concurrency - busyCount
                if wake, free > 0 {
                    let claimed = try Notifications.claim(conn, limit: free, leaseSeconds: leaseSeconds)
                    lastClaim = Date()
                    hand(claimed)
                    wake = claimed.count == free  // maybe more are due
                }
                // While sends are in flight, come back soon to record them.
                let timeout = busyCount > 0 ? 0.05 : min(pollSeconds, runningLongCheckSeconds)
                if !(try conn.notifications(timeout: timeout)).isEmpty { wake = true }
            } catch {
                Log.warn("notification loop database problem; retrying", [("error", .string("\(error)"))])
                db = nil
                usleep(500_000)
            }
        }
    }

    private var busyCount: Int { cond.lock(); defer { cond.unlock() }; return inFlight }

    private func hand(_ claimed: [ClaimedDelivery]) {
        guard !claimed.isEmpty else { return }
        cond.lock()
        work += claimed
        inFlight += claimed.count
        cond.broadcast()
        cond.unlock()
    }

    private func takeResults() -> [(ClaimedDelivery, TransferResult)] {
        cond.lock(); defer { cond.unlock() }
        let out = results
        results = []
        return out
    }

    func record(_ db: PGConnection, _ d: ClaimedDelivery, _ r: TransferResult) throws {
        let fields: [(String, JSON)] = [("delivery_id", .int(d.id)), ("type", .string(d.type)), ("event", .string(d.event)),
                                        ("attempt", .int(d.attempt))]
        if r.ok {
            try Notifications.record(db, id: d.id, ok: true, statusCode: r.statusCode, error: nil, retryInSeconds: nil)
            Log.info("notification sent", fields + [("status_code", r.statusCode.map(JSON.int) ?? .null)])
            return
        }
        let final = r.permanent || d.attempt >= settings.maxAttempts
        let retry = final ? nil : settings.retryDelay(afterAttempt: d.attempt)
        try Notifications.record(db, id: d.id, ok: false, statusCode: r.statusCode, error: r.error ?? "failed", retryInSeconds: retry)
        Log.warn(final ? "notification failed" : "notification failed; will retry",
                 fields + [("error", .optString(r.error)), ("retry_in_seconds", retry.map(JSON.int) ?? .null)])
    }

    // MARK: senders

    func sender() {
        while true {
            cond.lock()
            while work.isEmpty, !stopping { cond.wait() }
            if stopping { cond.unlock(); return }
            let d = work.removeFirst()
            cond.unlock()
            let r = send(d)
            cond.lock()
            results.append((d, r))
            inFlight -= 1
            cond.unlock()
        }
    }

    func send(_ d: ClaimedDelivery) -> TransferResult {
        let receiver: Receiver
        do { receiver = try Receiver(stored: d.item, box: box) } catch {
            return TransferResult(ok: false, error: "\(error)", permanent: true)
        }
        let notice = Notice(event: d.event, deliveryID: d.id, jobID: d.jobID, jobName: d.jobName, execution: d.execution,
                            detail: d.detail, publicURL: settings.publicURL)
        return Sender.send(notice, to: receiver, settings: settings)
    }
}
