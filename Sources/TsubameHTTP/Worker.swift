// SPDX-License-Identifier: MIT
// A FastCGI worker process: N accept threads, each with its own App (and so
// its own PostgreSQL connection), a reporter thread that publishes counters
// to the pool's scoreboard, and a graceful stop.

public import Foundation
public import TsubameCore
public import TsubameFastCGI
import TsubameCrypto
import TsubamePool
import TsubamePostgres

public final class Worker: @unchecked Sendable {
    public let server: FastCGIServer
    let settings: AppSettings
    let box: SecretBox
    let scoreboard: (Scoreboard, Int)?
    /// Parked long-polls of this process.
    public let hub: LiveHub
    let responders: Int
    /// This process's request counters (the reporter thread copies them to the scoreboard for /metrics).
    let requestMetrics = RequestMetrics()
    /// The pool master's control socket (for /pool-status).
    let controlPath: String

    public init(config: Config, listenFD: Int32 = 0, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        settings = AppSettings(config: config)
        controlPath = config.string("TSUBAME_POOL_CONTROL_SOCKET") ?? ((config.string("TSUBAME_FCGI_SOCKET") ?? "") + ".ctl")
        box = try SecretBox.load(config: config)
        server = FastCGIServer(listenFD: listenFD, threads: config.int("TSUBAME_WORKER_THREADS"),
                               maxRequests: config.int("TSUBAME_MAX_REQUESTS"))
        hub = LiveHub(settings: settings, box: box, maxWaiters: config.int("TSUBAME_LONGPOLL_MAX_WAITERS"))
        responders = config.int("TSUBAME_LONGPOLL_RESPONDERS")
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
        Worker.raiseFileLimit()
        // A client that went away must not kill the process when its answer is written.
        signal(SIGPIPE, SIG_IGN)
        let settings = settings, box = box, stats = server.stats, hub = hub, scoreboard = scoreboard, requestMetrics = requestMetrics,
            controlPath = controlPath
        hub.start(responders: responders)
        server.start { _ in
            let app = App(settings: settings, box: box)
            app.hub = hub
            app.requestMetrics = requestMetrics
            if scoreboard != nil {
                app.poolStatus = { try PoolMaster.query(controlPath: controlPath, command: "status json") }
            }
            app.metricsProvider = { [scoreboard] in
                Metrics.pool(scoreboard: scoreboard?.0, metrics: requestMetrics, parkedNow: stats.parked)
            }
            return app.handle
        }
        if let (board, slot) = scoreboard {
            let server = server, requestMetrics = requestMetrics
            Thread.detachNewThread {
                while true {
                    board.write(slot, .init(pid: Int64(getpid()), served: Int64(server.stats.served), busy: Int64(server.stats.busy),
                                           waiting: Int64(server.stats.parked)))
                    board.writeStats(slot, requestMetrics.snapshot)
                    if server.isStopping && server.stats.busy == 0 && server.stats.parked == 0 { break }
                    usleep(100_000)
                }
            }
        }
    }

    /// Graceful stop: no new requests; parked long-polls are answered with what exists.
    public func stop() {
        server.requestStop()
        hub.shutdown()
    }

    /// Blocks until the accept threads ended and every parked request was answered.
    public func wait() {
        server.wait()
        hub.close()
    }

    /// Each parked long-poll holds a descriptor: use all the hard limit allows.
    static func raiseFileLimit() {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }
}
