// SPDX-License-Identifier: MIT
// The FastCGI transport and the worker over a real unix socket, and the pool
// master's process management with stand-in workers.

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameCrypto
@testable import TsubameFastCGI
@testable import TsubameHTTP
@testable import TsubamePool
@testable import TsubamePostgres

/// A minimal FastCGI client (responder role), enough to drive the server as nginx would.
enum FCGIClient {
    static func record(_ type: UInt8, _ content: [UInt8]) -> [UInt8] {
        [1, type, 0, 1, UInt8(content.count >> 8), UInt8(content.count & 0xFF), 0, 0] + content
    }
    static func length(_ n: Int) -> [UInt8] {
        n < 128 ? [UInt8(n)] : [UInt8((n >> 24) | 0x80), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)]
    }

    /// Sends one request; returns the raw CGI response (head + body).
    static func request(socket path: String, params: [String: String], body: [UInt8] = []) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else { throw PoolError("connect failed") }
        var out = record(1, [0, 1, 0, 0, 0, 0, 0, 0])
        var p: [UInt8] = []
        for (k, v) in params { p += length(k.utf8.count) + length(v.utf8.count) + Array(k.utf8) + Array(v.utf8) }
        out += record(4, p) + record(4, [])
        var offset = 0
        while offset < body.count {
            let n = min(65535, body.count - offset)
            out += record(5, Array(body[offset..<offset + n]))
            offset += n
        }
        out += record(5, [])
        _ = out.withUnsafeBufferPointer { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var input: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            input += buf[0..<n]
        }
        var stdout: [UInt8] = []
        var i = 0
        while i + 8 <= input.count {
            let type = input[i + 1], len = Int(input[i + 4]) << 8 | Int(input[i + 5]), pad = Int(input[i + 6])
            if type == 6 { stdout += input[(i + 8)..<(i + 8 + len)] }
            i += 8 + len + pad
        }
        return String(decoding: stdout, as: UTF8.self)
    }
}

@Suite(.serialized, .enabled(if: TestDB.enabled, "set TSUBAME_TEST_DATABASE_URL to run the PostgreSQL-backed tests"))
struct WorkerTests {
    @Test func workerAnswersOverFastCGIAndStopsGracefully() throws {
        try Migrator.migrate(try PGConnection(TestDB.url!))
        let dir = NSTemporaryDirectory() + "tsb-w-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SecretBox.createKeyFile(path: dir + "/key")
        let sock = dir + "/s"
        let fd = FastCGIServer.openSocket(path: sock)
        #expect(fd > 0)
        _ = try Scoreboard(path: dir + "/board", slots: 2, create: true)
        let config = try Config.load(environment: ["TSUBAME_DATABASE_URL": TestDB.url!, "TSUBAME_MASTER_KEY_FILE": dir + "/key",
                                                   "TSUBAME_WORKER_THREADS": "2", "TSUBAME_MAX_REQUESTS": "5"])
        try Worker.checkSchema(config)
        let worker = try Worker(config: config, listenFD: fd, environment: ["TSUBAME_SCOREBOARD": dir + "/board",
                                                                            "TSUBAME_SCOREBOARD_SLOTS": "2", "TSUBAME_WORKER_SLOT": "1"])
        worker.start()
        let health = try FCGIClient.request(socket: sock, params: ["REQUEST_METHOD": "GET", "REQUEST_URI": "/api/health"])
        #expect(health.hasPrefix("Status: 200 OK\r\n"))
        #expect(health.contains(#"{"status":"ok""#))
        let body = Array(#"{"username":"nobody","password":"whatever-pw"}"#.utf8)
        let login = try FCGIClient.request(socket: sock, params: ["REQUEST_METHOD": "POST", "REQUEST_URI": "/api/v1/auth/login",
                                                                  "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": String(body.count),
                                                                  "REMOTE_ADDR": "10.2.3.4"], body: body)
        #expect(login.hasPrefix("Status: 401"))
        let big = try FCGIClient.request(socket: sock, params: ["REQUEST_METHOD": "POST", "REQUEST_URI": "/api/v1/auth/login",
                                                                "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": String(3 << 20)])
        #expect(big.hasPrefix("Status: 413"))
        let metrics = try FCGIClient.request(socket: sock, params: ["REQUEST_METHOD": "GET", "REQUEST_URI": "/metrics"])
        #expect(metrics.contains("tsubame_pool_workers 1") && metrics.contains("tsubame_pool_restarts_total 0"))
        usleep(250_000)
        let board = try Scoreboard(path: dir + "/board", slots: 2, create: false)
        #expect(board.read(1).served >= 3)
        // The worker's request counters reach the scoreboard: the 401 and the 413 of the sign-in route.
        let counted = board.totalStats().prometheus(routeNames: Routes.names)
        #expect(counted.contains(#"tsubame_http_requests_total{route="/api/v1/auth/login",status="4xx"} 2"#), "\(counted)")
        #expect(board.read(1).pid == Int64(getpid()))
        // The fifth request reaches max_requests: the server stops by itself, as a recycled worker does.
        _ = try FCGIClient.request(socket: sock, params: ["REQUEST_METHOD": "GET", "REQUEST_URI": "/api/openapi.json"])
        worker.wait()
        #expect(worker.server.isStopping)
        #expect(worker.server.stats.served == 5)
        close(fd)
    }
}

@Suite(.serialized) struct PoolTests {
    func settings(_ dir: String, worker: String, args: [String]) -> PoolSettings {
        var s = PoolSettings(workerPath: worker, environment: ["PATH": "/usr/bin:/bin"], workers: 2, socketPath: dir + "/fcgi.sock",
                             controlPath: dir + "/fcgi.sock.ctl")
        s.workerArguments = args
        s.stopTimeout = 2
        return s
    }

    func tempDir() throws -> String {
        let dir = NSTemporaryDirectory() + "tsb-p-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func waitUntil(_ master: PoolMaster, _ cond: () -> Bool) {
        for _ in 0..<100 where !cond() { master.reap(); usleep(30_000) }
    }

    @Test func spawnsRespawnsReloadsAndStops() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let master = PoolMaster(settings: settings(dir, worker: "/bin/sleep", args: ["30"]))
        try master.prepare()
        try master.spawnAll()
        #expect(master.workers.count == 2)
        #expect(FileManager.default.fileExists(atPath: dir + "/fcgi.sock"))
        // A crashed worker is replaced (after a short backoff, since it died young).
        let victim = master.workers.keys.first!
        kill(victim, SIGKILL)
        waitUntil(master) { master.restarts == 1 && master.workers.count == 2 }
        #expect(master.restarts == 1)
        #expect(master.workers.count == 2 && master.workers[victim] == nil)
        // Reload: two new workers, the old ones retire.
        let before = Set(master.workers.keys)
        try master.reload()
        #expect(master.workers.count == 4)
        waitUntil(master) { master.workers.count == 2 }
        #expect(Set(master.workers.keys).isDisjoint(with: before))
        #expect(master.reloads == 1 && master.restarts == 1)
        // Status, over the control socket.
        let answer = QueryBox()
        let t = Thread { answer.set(try? PoolMaster.query(controlPath: dir + "/fcgi.sock.ctl", command: "status json")) }
        t.start()
        for _ in 0..<100 where answer.get() == nil { master.serveControl(); usleep(10_000) }
        let status = try JSON.parse(answer.get() ?? "")
        #expect(status["workers_running"] == 2)
        #expect(status["workers"]?.arrayValue?.count == 2)
        #expect(PoolMaster.statusText(status).contains("PID"))
        master.stop()
        #expect(master.workers.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: dir + "/fcgi.sock"))
        #expect(throws: PoolError.self) { try PoolMaster.query(controlPath: dir + "/fcgi.sock.ctl", command: "status") }
    }

    @Test func workersThatExitCleanlyAreRecycled() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let master = PoolMaster(settings: settings(dir, worker: "/bin/true", args: []))
        try master.prepare()
        try master.spawnAll()
        waitUntil(master) { master.recycled >= 2 }
        #expect(master.recycled >= 2)
        #expect(master.restarts == 0)
        master.stop()
    }

    @Test func badSettingsAreReported() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let master = PoolMaster(settings: settings(dir, worker: dir + "/missing", args: []))
        try master.bindSockets()
        #expect(throws: PoolError.self) { try master.spawn() }
        var s = settings(dir, worker: "/bin/true", args: [])
        s.socketGroup = "no-such-group-here"
        #expect(throws: PoolError.self) { try PoolMaster(settings: s).dropPrivileges() }
        s.socketPath = "/nonexistent-dir/x.sock"
        #expect(throws: PoolError.self) { try PoolMaster(settings: s).bindSockets() }
        s.socketPath = dir + "/" + String(repeating: "x", count: 200)
        #expect(throws: PoolError.self) { try PoolMaster(settings: s).bindSockets() }
        #expect(PoolError("x").description == "x")
        master.stop()
    }
}

final class QueryBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: String?
    func set(_ v: String?) { lock.lock(); value = v; lock.unlock() }
    func get() -> String? { lock.lock(); defer { lock.unlock() }; return value }
}
