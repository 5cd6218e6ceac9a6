// SPDX-License-Identifier: MIT
// `tsubame-pool`: the FastCGI pool master. Logic lives in TsubamePool.PoolMaster.
import Foundation
import TsubameCore
import TsubamePool

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data(("tsubame-pool: " + message + "\n").utf8))
    exit(code)
}

let args = Array(CommandLine.arguments.dropFirst())
if args.contains("--help") || args.contains("-h") {
    print("""
        usage: tsubame-pool [--test-config]
               tsubame-pool status [--json]

        Runs the FastCGI pool master in the foreground: binds TSUBAME_FCGI_SOCKET, starts
        TSUBAME_POOL_WORKERS workers (tsubame-worker) with the socket as their fd 0, restarts
        them when they die, recycles them after TSUBAME_MAX_REQUESTS requests.
        Signals: SIGHUP or SIGUSR2 = graceful rolling reload; SIGTERM or SIGINT = graceful stop.
          --test-config   validate the settings and exit
          status          print the running master's status (workers, requests, busy threads)
        """)
    exit(0)
}
Log.component = "pool"
let config: Config
do { config = try Config.load() } catch { fail("configuration problem:\n\(error)", code: 2) }
Log.minimum = LogLevel(name: config.string("TSUBAME_LOG_LEVEL") ?? "info") ?? .info
let socketPath = config.string("TSUBAME_FCGI_SOCKET")!
let controlPath = config.string("TSUBAME_POOL_CONTROL_SOCKET") ?? socketPath + ".ctl"

if args.first == "status" {
    do { print(try PoolMaster.query(controlPath: controlPath, command: args.contains("--json") ? "status json" : "status"), terminator: "") }
    catch { fail("\(error)", code: 1) }
    exit(0)
}
let selfPath = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
let workerPath = config.string("TSUBAME_WORKER_BINARY") ?? selfPath + "/tsubame-worker"
guard FileManager.default.isExecutableFile(atPath: workerPath) else {
    fail("TSUBAME_WORKER_BINARY: \(workerPath) is not an executable file", code: 2)
}
if args.contains("--test-config") { print("configuration is valid"); exit(0) }
if let unknown = args.first { fail("unknown argument \(unknown); see --help", code: 2) }

var settings = PoolSettings(workerPath: workerPath, environment: ProcessInfo.processInfo.environment,
                            workers: config.int("TSUBAME_POOL_WORKERS"), socketPath: socketPath, controlPath: controlPath)
settings.socketMode = config.octal("TSUBAME_FCGI_SOCKET_MODE")
settings.socketGroup = config.string("TSUBAME_FCGI_SOCKET_GROUP")
settings.user = config.string("TSUBAME_POOL_USER")
PoolMaster.blockSignals()
let master = PoolMaster(settings: settings)
do {
    try master.bindSockets()
    if let pidfile = config.string("TSUBAME_POOL_PIDFILE") {
        try "\(getpid())\n".write(toFile: pidfile, atomically: true, encoding: .utf8)
    }
    try master.dropPrivileges()
    try master.spawnAll()
} catch { fail("\(error)", code: 1) }
Log.info("pool started", [("socket", .string(socketPath)), ("workers", .int(settings.workers))])
exit(master.run())
