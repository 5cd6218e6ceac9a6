// SPDX-License-Identifier: MIT
// `tsubame-worker`: a FastCGI worker that accepts on fd 0 — started by
// tsubame-pool, spawn-fcgi or systemd socket activation alike.
import Foundation
import TsubameCore
import TsubameFastCGI
import TsubameHTTP

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data(("tsubame-worker: " + message + "\n").utf8))
    exit(code)
}

if CommandLine.arguments.contains("--help") || CommandLine.arguments.contains("-h") {
    print("""
        usage: tsubame-worker

        A FastCGI worker. It accepts connections on file descriptor 0, which must be a listening
        socket: run it under tsubame-pool (the usual way), spawn-fcgi or systemd socket activation.
        Settings come from the environment and TSUBAME_CONFIG_FILE (see README.md).
        """)
    exit(0)
}
Log.component = "worker"
let config: Config
do { config = try Config.load() } catch { fail("configuration problem:\n\(error)", code: 2) }
Log.minimum = LogLevel(name: config.string("TSUBAME_LOG_LEVEL") ?? "info") ?? .info
guard FastCGIServer.stdinIsListeningSocket else {
    fail("file descriptor 0 is not a listening socket: start me through tsubame-pool or spawn-fcgi", code: 2)
}
do { try Worker.checkSchema(config) } catch { fail("\(error)", code: 3) }
// Block the stop signals here so every accept thread inherits the mask; this thread waits for them.
var stopSignals = sigset_t()
sigemptyset(&stopSignals)
for s in [SIGTERM, SIGINT, SIGHUP, SIGQUIT] { sigaddset(&stopSignals, s) }
pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
let worker: Worker
do { worker = try Worker(config: config) } catch { fail("\(error)", code: 2) }
worker.start()
let waitSet = stopSignals
Thread.detachNewThread {
    var sig: Int32 = 0
    var set = waitSet
    sigwait(&set, &sig)
    Log.info("stopping gracefully", [("signal", .int(sig))])
    worker.stop()
}
worker.wait()
exit(0)
