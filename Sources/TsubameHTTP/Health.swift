// SPDX-License-Identifier: MIT
// Health, the OpenAPI document and Prometheus metrics: no sign-in.

import Foundation
import TsubameCore
import TsubameFastCGI
import TsubamePostgres

enum Health {
    static func get(_ ctx: Context) throws -> HTTPResponse {
        do {
            let db = try ctx.db
            // Executors seen in the last two minutes (each heartbeats every lease/6 seconds).
            let executors = try db.query(
                "SELECT id, host, \(tsSQL("last_seen", as: "seen")) FROM executors WHERE last_seen > now() - interval '2 minutes' ORDER BY id")
            return Reply.json(200, .object([("status", "ok"), ("database", "ok"), ("executors", .array(executors.map { r in
                .object([("id", .string(r.string("id"))), ("host", .string(r.string("host"))), ("last_seen", ts(r, "seen"))])
            }))]))
        } catch {
            return Reply.json(503, .object([("status", "degraded"), ("database", "unreachable"), ("executors", .array([]))]))
        }
    }

    static let openAPIDocument: [UInt8] = PackageResources.openapi_json

    static func openAPI(_ ctx: Context) throws -> HTTPResponse {
        HTTPResponse(status: 200, headers: [("Content-Type", "application/json"), ("Cache-Control", "no-cache")], body: openAPIDocument)
    }

    /// GET /pool-status: what `tsubame-pool status --json` prints (nginx serves it to loopback only, like /metrics).
    static func poolStatus(_ ctx: Context) throws -> HTTPResponse {
        guard let status = ctx.app.poolStatus else {
            throw APIError(status: 404, title: "Not found", detail: "This worker runs without a pool master: there is no pool status.")
        }
        let text: String
        do { text = try status() } catch {
            throw APIError.unavailable("The pool master did not answer: \(error)")
        }
        return HTTPResponse(status: 200, headers: [("Content-Type", "application/json"), ("Cache-Control", "no-store")], body: Array(text.utf8))
    }

    static func metrics(_ ctx: Context) throws -> HTTPResponse {
        var text = "# HELP tsubame_up 1 while this worker answers.\n# TYPE tsubame_up gauge\ntsubame_up 1\n"
        if let extra = ctx.app.metricsProvider?() { text += extra }
        // The database part; without the database the pool's own figures still answer.
        let dbText = try? Metrics.database(try ctx.db)
        text += "# HELP tsubame_database_up 1 when PostgreSQL answered this scrape.\n# TYPE tsubame_database_up gauge\n"
            + "tsubame_database_up \(dbText == nil ? 0 : 1)\n" + (dbText ?? "")
        return HTTPResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4")], body: Array(text.utf8))
    }
}
