// SPDX-License-Identifier: MIT
// libfcgi's thread-per-connection accept loop, owned here. Each accept thread
// has its own FCGX_Request and its own handler (and so its own PG connection).

import Foundation
internal import CFastCGI
import Synchronization

/// Counters the server keeps while it runs; read by status reporting.
public final class FastCGIStats: Sendable {
    let servedCount = Atomic<Int>(0)
    let busyCount = Atomic<Int>(0)
    let parkedCount = Atomic<Int>(0)
    public init() {}
    /// Requests parked (long-polls waiting without a thread) right now.
    public var parked: Int { parkedCount.load(ordering: .relaxed) }
    /// Requests finished so far.
    public var served: Int { servedCount.load(ordering: .relaxed) }
    /// Requests being handled right now.
    public var busy: Int { busyCount.load(ordering: .relaxed) }
}

/// A request handler owned by one accept thread.
public typealias FastCGIHandler = (HTTPRequest) -> HTTPResponse

public final class FastCGIServer: @unchecked Sendable {
    public let listenFD: Int32
    public let threads: Int
    public let maxBodyBytes: Int
    /// Stop accepting after this many requests in total (0 = never): the pool recycles the process.
    public let maxRequests: Int
    public let stats = FastCGIStats()
    private let stopping = Atomic<Bool>(false)
    private let lock = NSLock()
    private var threadIDs: [pthread_t] = []
    private let running = Atomic<Int>(0)
    /// Called after each finished request with (thread index, requests served by this server).
    public var onRequestFinished: (@Sendable (Int, Int) -> Void)?

    static let initOnce: Void = { _ = FCGX_Init() }()

    /// Opens a unix socket to listen on (for tests and tools; the pool passes fd 0 instead).
    public static func openSocket(path: String, backlog: Int32 = 128) -> Int32 {
        _ = initOnce
        return FCGX_OpenSocket(path, backlog)
    }

    /// True when fd 0 is a listening socket, as when spawned by the pool or spawn-fcgi.
    public static var stdinIsListeningSocket: Bool {
        _ = initOnce
        return FCGX_IsCGI() == 0
    }

    public init(listenFD: Int32 = 0, threads: Int, maxBodyBytes: Int = 2 * 1024 * 1024, maxRequests: Int = 0) {
        _ = FastCGIServer.initOnce
        self.listenFD = listenFD
        self.threads = threads
        self.maxBodyBytes = maxBodyBytes
        self.maxRequests = maxRequests
    }

    /// Starts the accept threads; each calls `makeHandler` once, inside itself.
    public func start(makeHandler: @escaping @Sendable (Int) -> FastCGIHandler) {
        for index in 0..<threads {
            let box = Unmanaged.passRetained(ThreadBox { [self] in self.acceptLoop(index: index, makeHandler: makeHandler) })
            var tid = pthread_t()
            running.add(1, ordering: .sequentiallyConsistent)
            let rc = pthread_create(&tid, nil, { raw in
                let b = Unmanaged<ThreadBox>.fromOpaque(raw!).takeRetainedValue()
                b.body()
                return nil
            }, box.toOpaque())
            precondition(rc == 0, "pthread_create failed")
            lock.lock(); threadIDs.append(tid); lock.unlock()
        }
    }

    /// Blocks until every accept thread has returned.
    public func wait() {
        lock.lock(); let ids = threadIDs; lock.unlock()
        for t in ids { pthread_join(t, nil) }
    }

    public var isStopping: Bool { stopping.load(ordering: .sequentiallyConsistent) }

    /// Graceful stop: no new requests; requests in flight finish. Safe from any thread, repeatable.
    public func requestStop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        FCGX_ShutdownPending()
        // libfcgi's accept can miss one signal (a race in its accept loop): knock until all threads left.
        let ids: [pthread_t] = { lock.lock(); defer { lock.unlock() }; return threadIDs }()
        Thread.detachNewThread { [self] in
            while running.load(ordering: .sequentiallyConsistent) > 0 {
                for t in ids { pthread_kill(t, SIGUSR1) }
                usleep(20_000)
            }
        }
    }

    private func acceptLoop(index: Int, makeHandler: @Sendable (Int) -> FastCGIHandler) {
        defer { running.subtract(1, ordering: .sequentiallyConsistent) }
        // A thread started from a libdispatch thread inherits its blocked signals; the SIGUSR1 that
        // interrupts accept() on stop must get through.
        var usr1 = sigset_t()
        sigemptyset(&usr1)
        sigaddset(&usr1, SIGUSR1)
        pthread_sigmask(SIG_UNBLOCK, &usr1, nil)
        let handler = makeHandler(index)
        // On the heap: a parked request keeps its struct and the loop goes on with a fresh one.
        guard var req = FastCGIServer.newRequest(listenFD) else { return }
        defer { FCGX_Free(req, 1); req.deallocate() }
        while !isStopping {
            let rc = FCGX_Accept_r(req)
            if rc < 0 { break }
            stats.busyCount.add(1, ordering: .relaxed)
            let request = read(req)
            // Everything nginx sent was read (the empty stdin record included): the connection can be closed
            // at once when answered, without libfcgi's lingering close (shutdown, then wait up to 2 s for
            // nginx to close its end), which would hold this thread or a long-poll responder per answer.
            if !request.bodyTooLarge { _ = FCGX_Detach(req) }
            let response = handler(request)
            if let park = response.park {
                guard let fresh = FastCGIServer.newRequest(listenFD) else {
                    // No memory for a new struct: answer now rather than park.
                    write(HTTPResponse(status: 503, headers: [("Content-Type", "text/plain")], body: Array("busy\n".utf8)), to: req)
                    finish(req, index: index)
                    continue
                }
                let parked = ParkedRequest(raw: req, request: request, server: self, index: index)
                req = fresh
                stats.parkedCount.add(1, ordering: .relaxed)
                stats.busyCount.subtract(1, ordering: .relaxed)
                park(parked)
                continue
            }
            write(response, to: req)
            finish(req, index: index)
        }
    }

    static func newRequest(_ listenFD: Int32) -> UnsafeMutablePointer<FCGX_Request>? {
        let req = UnsafeMutablePointer<FCGX_Request>.allocate(capacity: 1)
        guard FCGX_InitRequest(req, listenFD, 0) == 0 else { req.deallocate(); return nil }
        return req
    }

    /// Ends an answered request (accept thread or parked) and counts it.
    fileprivate func finish(_ req: UnsafeMutablePointer<FCGX_Request>, index: Int, parked: Bool = false) {
        FCGX_Finish_r(req)
        if parked { stats.parkedCount.subtract(1, ordering: .relaxed) } else { stats.busyCount.subtract(1, ordering: .relaxed) }
        let served = stats.servedCount.add(1, ordering: .relaxed).newValue
        onRequestFinished?(index, served)
        if maxRequests > 0, served >= maxRequests, !isStopping { requestStop() }
    }

    private func read(_ req: UnsafeMutablePointer<FCGX_Request>) -> HTTPRequest {
        var params: [String: String] = [:]
        if var p = req.pointee.envp {
            while let entry = p.pointee {
                let s = String(cString: entry)
                if let eq = s.firstIndex(of: "=") { params[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
                p += 1
            }
        }
        let method = params["REQUEST_METHOD"] ?? "GET"
        let uri = params["REQUEST_URI"] ?? (params["SCRIPT_NAME"] ?? "/")
        let length = Int(params["CONTENT_LENGTH"] ?? "") ?? 0
        if length > maxBodyBytes {
            return HTTPRequest(method: method, uri: uri, params: params, bodyTooLarge: true)
        }
        var body = [UInt8](repeating: 0, count: max(length, 0))
        var got = 0
        while got < length {
            let n = body.withUnsafeMutableBufferPointer { buf in
                buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: length) {
                    FCGX_GetStr($0 + got, Int32(length - got), req.pointee.in)
                }
            }
            if n <= 0 { break }
            got += Int(n)
        }
        if got < length { body.removeLast(length - got) }
        // The rest of the stdin stream, up to its end record.
        var rest = [CChar](repeating: 0, count: 4096)
        while FCGX_GetStr(&rest, Int32(rest.count), req.pointee.in) > 0 {}
        return HTTPRequest(method: method, uri: uri, params: params, body: body)
    }

    fileprivate func write(_ response: HTTPResponse, to req: UnsafeMutablePointer<FCGX_Request>) {
        var response = response
        // A length lets nginx pass the body on without chunked encoding (a stream has none).
        if response.status != 204, response.status != 304, response.stream == nil {
            response.headers.append(("Content-Length", String(response.body.count)))
        }
        let out = req.pointee.out
        func put(_ bytes: [UInt8]) {
            var offset = 0
            while offset < bytes.count {
                let n = min(1 << 20, bytes.count - offset)
                bytes.withUnsafeBufferPointer { b in
                    (b.baseAddress! + offset).withMemoryRebound(to: CChar.self, capacity: n) { _ = FCGX_PutStr($0, Int32(n), out) }
                }
                offset += n
            }
        }
        put(Array(response.head.utf8))
        if let stream = response.stream {
            do { try stream.produce { put($0) } } catch {
                // The head is gone already: all that is left is to end the body early and say so in the log.
                FileHandle.standardError.write(Data("{\"level\":\"error\",\"msg\":\"streamed response failed\",\"error\":\"\(error)\"}\n".utf8))
            }
        } else {
            put(response.body)
        }
    }
}

/// A request whose accept thread went back to accepting: it keeps its FastCGI connection (and struct)
/// until `answer` or `drop` is called, exactly once, from any thread.
public final class ParkedRequest: @unchecked Sendable {
    public let request: HTTPRequest
    private var raw: UnsafeMutablePointer<FCGX_Request>?
    private let server: FastCGIServer
    private let index: Int
    private let lock = NSLock()

    init(raw: UnsafeMutablePointer<FCGX_Request>, request: HTTPRequest, server: FastCGIServer, index: Int) {
        self.raw = raw; self.request = request; self.server = server; self.index = index
    }

    /// The connection's descriptor: it reports a hang-up when nginx gave up on the request (client gone).
    public var fd: Int32 { lock.lock(); defer { lock.unlock() }; return raw?.pointee.ipcFd ?? -1 }

    /// Sends the response and ends the request. Later calls do nothing.
    public func answer(_ response: HTTPResponse) {
        lock.lock(); defer { lock.unlock() }
        guard let req = raw else { return }
        raw = nil
        server.write(response, to: req)
        server.finish(req, index: index, parked: true)
        req.deallocate()
    }

    /// Ends the request without an answer (nobody is listening any more).
    public func drop() {
        lock.lock(); defer { lock.unlock() }
        guard let req = raw else { return }
        raw = nil
        server.finish(req, index: index, parked: true)
        req.deallocate()
    }

    deinit { drop() }
}

final class ThreadBox {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}
