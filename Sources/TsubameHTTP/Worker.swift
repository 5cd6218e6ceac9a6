// SPDX-License-Identifier: MIT
// A FastCGI worker process: N accept threads, each with its own App (and so
// its own PostgreSQL connection), a reporter thread that publishes counters
// to the pool's scoreboard, and a graceful stop.

public import Foundation
public import TsubameCore
public import TsubameFastCGI
import TsubameCrypto
import TsubamePostgres

public final class Worker: @unchecked Sendable {
    public let server: FastCGIServer
    let settings: AppSettings
    let box: SecretBox
    let scoreboard: (Scoreboard, Int)?

    public init(config: Config, listenFD: Int32 = 0, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        settings = AppSettings(config: config)
        box = try SecretBox.load(path: config.string("TSUBAME_MASTER_KEY_FILE") ?? "")
        server = FastCGIServer(listenFD: listenFD, threads: config.int("TSUBAME_WORKER_THREADS"),
                               maxRequests: config.int("TSUBAME_MAX_REQUESTS"))
        if let path = environment["TSUBAME_SCOREBOARD"], let slot = Int(environment["TSUBAME_WORKER_SLOT"] ?? ""),
           let slots = Int(environment["TSUBAME_SCOREBOARD_SLOTS"] ?? ""), slot >= 0, slot < slots {
            scoreboard = (try Scoreboard(path: path, slots: slots, create: false), slot)
        } else {
            scoreboard = nil
        }
    }

    /// Refuses a database whose schema this binary does not know.
    public static func checkSchema(_ config: Config) throws {
        let db = try PGConnection(config.databaseURL)
        try Migrator.requireCurrent(db)
    }

    /// Starts accepting. Returns at once; `wait()` blocks until stopped.
    public func start() {
        let settings = settings, box = box, stats = server.stats
        server.start { _ in
            let app = App(settings: settings, box: box)
            app.metricsProvider = {
                "# TYPE tsubame_worker_requests_total counter\ntsubame_worker_requests_total{pid=\"\(getpid())\"} \(stats.served)\n"
                    + "# TYPE tsubame_worker_busy_threads gauge\ntsubame_worker_busy_threads{pid=\"\(getpid())\"} \(stats.busy)\n"
            }
            return app.handle
        }
        if let (board, slot) = scoreboard {
            let server = server
            Thread.detachNewThread {
                while true {
                    board.write(slot, .init(pid: Int64(getpid()), served: Int64(server.stats.served), busy: Int64(server.stats.busy)))
                    if server.isStopping && server.stats.busy == 0 { break }
                    usleep(100_000)
                }
            }
        }
    }

    public func stop() { server.requestStop() }
    public func wait() { server.wait() }
}
