// SPDX-License-Identifier: MIT
// What other threads hand to the event loop (targets, cancels, resolved
// addresses, stop), behind a lock, with a wake pipe that breaks its poll().

import Foundation

/// A resolved socket address (a copy of a `sockaddr_in`/`sockaddr_in6`).
struct Address: Sendable {
    var family: Int32
    var bytes: [UInt8]

    var description: String {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let rc = bytes.withUnsafeBytes { raw in
            getnameinfo(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count), &host, socklen_t(host.count),
                        nil, 0, NI_NUMERICHOST)
        }
        guard rc == 0 else { return "?" }
        return String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

final class Inbox: @unchecked Sendable {
    private let lock = NSLock()
    private var targets: [(SSHTarget, String?)] = []
    private var cancels: [Int64] = []
    private var resolved: [(Int, Result<[Address], SSHError>)] = []
    private var stopping = false
    private var closed = false
    private var activeCount = 0
    private var counters = SSHRunnerStats()
    /// Tells a target submitted after the loop ended that it was not run.
    var onRejected: (@Sendable (SSHEvent) -> Void)?
    let wakeRead: Int32
    private let wakeWrite: Int32

    init() {
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) != 0 {
            fatalError("pipe failed: \(String(cString: strerror(errno)))")
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        Foundation.close(wakeRead)
        Foundation.close(wakeWrite)
    }

    func wake() {
        var byte: UInt8 = 1
        // A full pipe (EAGAIN) means a wake-up is already pending.
        _ = write(wakeWrite, &byte, 1)
    }

    func drainWake() {
        var buf = [UInt8](repeating: 0, count: 256)
        while read(wakeRead, &buf, buf.count) > 0 {}
    }

    func submit(_ target: SSHTarget, rawCommand: String? = nil) {
        lock.lock()
        if closed {
            lock.unlock()
            onRejected?(.finished(id: target.id, outcome: .cancelled, durationMs: 0))
            return
        }
        targets.append((target, rawCommand))
        activeCount += 1
        lock.unlock()
        wake()
    }

    func cancel(_ id: Int64) {
        lock.lock()
        cancels.append(id)
        lock.unlock()
        wake()
    }

    func stop() {
        lock.lock()
        stopping = true
        lock.unlock()
        wake()
    }

    func post(_ serial: Int, _ result: Result<[Address], SSHError>) {
        lock.lock()
        resolved.append((serial, result))
        lock.unlock()
        wake()
    }

    /// Everything queued since the last call.
    func take() -> (targets: [(SSHTarget, String?)], cancels: [Int64], resolved: [(Int, Result<[Address], SSHError>)], stopping: Bool) {
        lock.lock()
        defer {
            targets.removeAll()
            cancels.removeAll()
            resolved.removeAll()
            lock.unlock()
        }
        return (targets, cancels, resolved, stopping)
    }

    /// The loop has ended: later submissions are rejected; returns those that came too late.
    func close() -> [SSHTarget] {
        lock.lock()
        defer { lock.unlock() }
        closed = true
        let late = targets.map(\.0)
        targets.removeAll()
        return late
    }

    /// One target finished (called just before its `.finished` event).
    func finished() {
        lock.lock()
        activeCount -= 1
        lock.unlock()
    }

    var active: Int {
        lock.lock()
        defer { lock.unlock() }
        return activeCount
    }

    func count(connect: Bool = false, reuse: Bool = false, shared: Bool = false, idle: Int? = nil) {
        lock.lock()
        if connect { counters.connects += 1 }
        if reuse { counters.reuses += 1 }
        if shared { counters.shared += 1 }
        if let idle { counters.idleSessions = idle }
        lock.unlock()
    }

    var stats: SSHRunnerStats {
        lock.lock()
        defer { lock.unlock() }
        return counters
    }
}

/// Name resolution on a few short-lived helper threads: getaddrinfo blocks,
/// the event loop must not. Numeric addresses never come here.
final class Resolver: @unchecked Sendable {
    private let lock = NSLock()
    private var queue: [(Int, String, Int)] = []
    private var threads = 0
    private let maxThreads = 4
    private let inbox: Inbox

    init(inbox: Inbox) { self.inbox = inbox }

    func resolve(serial: Int, host: String, port: Int) {
        lock.lock()
        queue.append((serial, host, port))
        let spawn = threads < maxThreads
        if spawn { threads += 1 }
        lock.unlock()
        if spawn {
            Thread.detachNewThread { [self] in work() }
        }
    }

    private func work() {
        while true {
            lock.lock()
            if queue.isEmpty {
                threads -= 1
                lock.unlock()
                return
            }
            let (serial, host, port) = queue.removeFirst()
            lock.unlock()
            inbox.post(serial, Resolver.lookup(host: host, port: port, numericOnly: false))
        }
    }

    /// getaddrinfo; with `numericOnly`, nil for a name (it needs a lookup).
    static func lookup(host: String, port: Int, numericOnly: Bool) -> Result<[Address], SSHError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV | (numericOnly ? AI_NUMERICHOST : 0)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        defer { if let list { freeaddrinfo(list) } }
        guard rc == 0 else {
            if numericOnly && rc == EAI_NONAME { return .success([]) }
            let why: String
            switch rc {
            case EAI_NONAME: why = "no such host name (check the spelling, or the DNS records)"
            case EAI_AGAIN: why = "temporary DNS failure (the name server did not answer)"
            case EAI_SYSTEM: why = String(cString: strerror(errno))
            default: why = String(cString: gai_strerror(rc))
            }
            return .failure(SSHError(kind: .dns, message: "cannot resolve \(host):\(port): \(why)"))
        }
        var out: [Address] = []
        var p = list
        while let ai = p {
            if let addr = ai.pointee.ai_addr, ai.pointee.ai_family == AF_INET || ai.pointee.ai_family == AF_INET6 {
                out.append(Address(family: ai.pointee.ai_family,
                                   bytes: Array(UnsafeRawBufferPointer(start: addr, count: Int(ai.pointee.ai_addrlen)))))
            }
            p = ai.pointee.ai_next
        }
        if out.isEmpty && !numericOnly {
            return .failure(SSHError(kind: .dns, message: "cannot resolve \(host):\(port): the name has no IPv4 or IPv6 address"))
        }
        return .success(out)
    }
}
