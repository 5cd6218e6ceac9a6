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
            _ = try db.query("SELECT 1 AS ok")
            return Reply.json(200, .object([("status", "ok"), ("database", "ok"), ("executors", .array([]))]))
        } catch {
            return Reply.json(503, .object([("status", "degraded"), ("database", "unreachable"), ("executors", .array([]))]))
        }
    }

    static let openAPIDocument: [UInt8] = PackageResources.openapi_json

    static func openAPI(_ ctx: Context) throws -> HTTPResponse {
        HTTPResponse(status: 200, headers: [("Content-Type", "application/json"), ("Cache-Control", "no-cache")], body: openAPIDocument)
    }

    static func metrics(_ ctx: Context) throws -> HTTPResponse {
        var text = "# HELP tsubame_up 1 while this worker answers.\n# TYPE tsubame_up gauge\ntsubame_up 1\n"
        if let extra = ctx.app.metricsProvider?() { text += extra }
        return HTTPResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4")], body: Array(text.utf8))
    }
}
