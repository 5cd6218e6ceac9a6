// SPDX-License-Identifier: MIT
// `tsubame-executor`: claims queued targets from PostgreSQL and runs them over SSH.
import Foundation
import TsubameCore
import TsubameCrypto
import TsubameExecutor
import TsubameNotify
import TsubamePostgres
import TsubameSSH

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data(("tsubame-executor: " + message + "\n").utf8))
    exit(code)
}

if CommandLine.arguments.contains("--help") || CommandLine.arguments.contains("-h") {
    print("""
        usage: tsubame-executor [--test-config]

        Runs queued jobs over SSH. Several executors, on one machine or many, share one database
        safely: each claims targets with FOR UPDATE SKIP LOCKED and holds them under a lease it
        renews; a target whose executor vanished is failed after TSUBAME_LEASE_SECONDS.
        Executors also send the notifications of jobs (webhook, Slack, e-mail), with retries.
        Signals: SIGTERM or SIGINT = stop (running targets are cancelled and recorded).
        Settings come from the environment and TSUBAME_CONFIG_FILE (see README.md).
        """)
    exit(0)
}
Log.component = "executor"
let config: Config
do { config = try Config.load() } catch { fail("configuration problem:\n\(error)", code: 2) }
Log.minimum = LogLevel(name: config.string("TSUBAME_LOG_LEVEL") ?? "info") ?? .info
let box: SecretBox
do { box = try SecretBox.load(config: config) } catch { fail("\(error)", code: 2) }
do { try Migrator.requireCurrent(try PGConnection(config.databaseURL)) } catch { fail("\(error)", code: 3) }
if CommandLine.arguments.contains("--test-config") { print("configuration is valid"); exit(0) }
if let pidfile = config.string("TSUBAME_EXECUTOR_PIDFILE") {
    try? "\(getpid())\n".write(toFile: pidfile, atomically: true, encoding: .utf8)
}
var stopSignals = sigset_t()
sigemptyset(&stopSignals)
for s in [SIGTERM, SIGINT, SIGQUIT] { sigaddset(&stopSignals, s) }
pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
signal(SIGPIPE, SIG_IGN)

let settings = ExecutorSettings(config: config)
let executor = Executor(settings: settings, box: box)
let runner = SSHRunner(idleSessionSeconds: settings.idleSessionSeconds, channelsPerConnection: settings.channelsPerConnection) {
    executor.handle($0)
}
runner.start()
executor.start(runner: runner)
// Notifications: their own threads and connection, so a slow receiver never holds up a run.
let notifier = Notifier(databaseURL: config.databaseURL, settings: NotifySettings(config: config), box: box)
notifier.start()
Log.info("executor started", [("id", .string(settings.id)), ("capacity", .int(settings.capacity)), ("libcurl", .string(Transport.version))])
var sig: Int32 = 0
sigwait(&stopSignals, &sig)
Log.info("stopping", [("signal", .int(sig))])
notifier.stop()
executor.stop()
runner.stop()
exit(0)
