// SPDX-License-Identifier: MIT
// GET /metrics (Prometheus text): the pool (workers, restarts, requests by route and status with latency
// histograms, long-poll waiters) from the scoreboard, and the queue, executions, executors and log bytes from
// PostgreSQL. Any worker answers for the whole pool.

import Foundation
import TsubameCore
import TsubamePostgres

/// One worker's request counters, shared by its threads; its reporter thread copies them to the scoreboard.
public final class RequestMetrics: @unchecked Sendable {
    private let lock = NSLock()
    private var stats = RequestStats()
    private var parkedCount: Int64 = 0

    public init() {}

    func record(route: Int, status: Int, seconds: Double) {
        lock.lock(); stats.record(route: route, status: status, seconds: seconds); lock.unlock()
    }

    func parked() { lock.lock(); parkedCount += 1; lock.unlock() }

    var snapshot: RequestStats { lock.lock(); defer { lock.unlock() }; return stats }
    var parkedTotal: Int64 { lock.lock(); defer { lock.unlock() }; return parkedCount }
}

enum Metrics {
    /// The PostgreSQL part: one round trip.
    static func database(_ db: PGConnection) throws -> String {
        let r = try db.query("""
            SELECT (SELECT count(*) FROM execution_targets WHERE status = 'queued') AS queued_targets,
                   (SELECT coalesce(extract(epoch FROM now() - min(e.created_at)), 0)::float8 FROM execution_targets t
                    JOIN executions e ON e.id = t.execution_id WHERE t.status = 'queued') AS oldest_queued_s,
                   (SELECT count(*) FROM execution_targets WHERE status = 'running') AS running_targets,
                   (SELECT count(*) FROM executions WHERE status = 'queued') AS queued_executions,
                   (SELECT count(*) FROM executions WHERE status = 'running') AS running_executions,
                   (SELECT coalesce(json_agg(json_build_object('label', label, 'value', value) ORDER BY label), '[]')
                    FROM metric_counters WHERE name = 'executions_finished')::text AS finished,
                   (SELECT coalesce(sum(value), 0) FROM metric_counters WHERE name = 'log_bytes') AS log_bytes,
                   (SELECT coalesce(json_agg(json_build_object('id', id, 'alive', last_seen > now() - interval '30 seconds',
                                                               'stats', stats) ORDER BY id), '[]')
                    FROM executors WHERE last_seen > now() - interval '1 hour')::text AS executors
            """)[0]
        var out = """
            # HELP tsubame_queue_targets Targets waiting to run (queued).
            # TYPE tsubame_queue_targets gauge
            tsubame_queue_targets \(r.int64("queued_targets"))
            # HELP tsubame_queue_oldest_seconds Age of the execution of the oldest queued target (0 when none).
            # TYPE tsubame_queue_oldest_seconds gauge
            tsubame_queue_oldest_seconds \(Double(r.string("oldest_queued_s")) ?? 0)
            # HELP tsubame_targets_running Targets running now, over all executors.
            # TYPE tsubame_targets_running gauge
            tsubame_targets_running \(r.int64("running_targets"))
            # HELP tsubame_executions Executions not finished yet, by status.
            # TYPE tsubame_executions gauge
            tsubame_executions{status="queued"} \(r.int64("queued_executions"))
            tsubame_executions{status="running"} \(r.int64("running_executions"))
            # HELP tsubame_executions_finished_total Executions finished, by final status.
            # TYPE tsubame_executions_finished_total counter

            """
        let finished = Dictionary(uniqueKeysWithValues: (r.json("finished").arrayValue ?? []).compactMap { f in
            f["label"]?.stringValue.map { ($0, f["value"]?.int64Value ?? 0) }
        })
        for status in ["succeeded", "failed", "cancelled", "timed_out"] {
            out += "tsubame_executions_finished_total{status=\"\(status)\"} \(finished[status] ?? 0)\n"
        }
        out += """
            # HELP tsubame_log_bytes_total Output bytes stored by finished executions.
            # TYPE tsubame_log_bytes_total counter
            tsubame_log_bytes_total \(r.int64("log_bytes"))

            """
        let executors = r.json("executors").arrayValue ?? []
        out += "# HELP tsubame_executor_up 1 while the executor heartbeats (seen in the last 30 s).\n# TYPE tsubame_executor_up gauge\n"
        for e in executors {
            out += "tsubame_executor_up{executor=\"\(label(e["id"]?.stringValue ?? ""))\"} \(e["alive"]?.boolValue == true ? 1 : 0)\n"
        }
        out += "# HELP tsubame_executor_targets_total Targets an executor has run since it started.\n# TYPE tsubame_executor_targets_total counter\n"
        for e in executors {
            out += "tsubame_executor_targets_total{executor=\"\(label(e["id"]?.stringValue ?? ""))\"} \(e["stats"]?["targets_run"]?.int64Value ?? 0)\n"
        }
        out += "# HELP tsubame_ssh_connect_seconds TCP connect, SSH handshake and authentication, per executor.\n"
            + "# TYPE tsubame_ssh_connect_seconds histogram\n"
        for e in executors {
            if let h = e["stats"]?["ssh_connect_seconds"].flatMap(Histogram.init(json:)) {
                out += h.prometheus("tsubame_ssh_connect_seconds", labels: "executor=\"\(label(e["id"]?.stringValue ?? ""))\"")
            }
        }
        return out
    }

    /// A label value escaped as the text format wants.
    static func label(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    /// The pool part, from the scoreboard (every worker of the pool), or from this process alone without a pool.
    static func pool(scoreboard: Scoreboard?, metrics: RequestMetrics, parkedNow: Int) -> String {
        var out = ""
        let stats: RequestStats
        if let board = scoreboard {
            let live = (0..<board.slots).map(board.read).filter { $0.pid != 0 }
            let p = board.readPool()
            out += """
                # HELP tsubame_pool_workers Worker processes alive.
                # TYPE tsubame_pool_workers gauge
                tsubame_pool_workers \(live.count)
                # HELP tsubame_pool_busy_threads Worker threads handling a request now, over the pool.
                # TYPE tsubame_pool_busy_threads gauge
                tsubame_pool_busy_threads \(live.reduce(0) { $0 + $1.busy })
                # HELP tsubame_pool_restarts_total Workers that died and were restarted.
                # TYPE tsubame_pool_restarts_total counter
                tsubame_pool_restarts_total \(p.restarts)
                # HELP tsubame_pool_recycled_total Workers replaced after TSUBAME_MAX_REQUESTS.
                # TYPE tsubame_pool_recycled_total counter
                tsubame_pool_recycled_total \(p.recycled)
                # HELP tsubame_pool_reloads_total Graceful reloads.
                # TYPE tsubame_pool_reloads_total counter
                tsubame_pool_reloads_total \(p.reloads)
                # HELP tsubame_longpoll_waiters Long-polls parked now, over the pool.
                # TYPE tsubame_longpoll_waiters gauge
                tsubame_longpoll_waiters \(live.reduce(0) { $0 + $1.waiting })

                """
            stats = board.totalStats()
        } else {
            out += "# HELP tsubame_longpoll_waiters Long-polls parked now.\n# TYPE tsubame_longpoll_waiters gauge\n"
                + "tsubame_longpoll_waiters \(parkedNow)\n"
            stats = metrics.snapshot
        }
        return out + stats.prometheus(routeNames: Routes.names)
    }
}
