// SPDX-License-Identifier: MIT
// The route table: every endpoint in one place.

import TsubameCore
import TsubameFastCGI

typealias Handler = @Sendable (Context) throws -> HTTPResponse

struct Route: Sendable {
    let segments: [String]
    let handlers: [String: Handler]
    let requiresAuth: Bool
    /// Its place in `Routes.table`: the route label of request metrics.
    var index = 0
}

enum Routes {
    static let table: [Route] = declared.enumerated().map { i, route in
        var r = route
        r.index = i
        return r
    }
    /// The metrics label of each route (its pattern), by index; unmatched paths count as "unmatched".
    static let names = table.map { "/" + $0.segments.joined(separator: "/") } + ["unmatched"]

    static let declared: [Route] = [
        r("/api/health", auth: false, ["GET": Health.get]),
        r("/api/openapi.json", auth: false, ["GET": Health.openAPI]),
        r("/metrics", auth: false, ["GET": Health.metrics]),
        r("/pool-status", auth: false, ["GET": Health.poolStatus]),
        r("/api/v1/auth/login", auth: false, ["POST": Auth.login]),
        r("/api/v1/auth/logout", ["POST": Auth.logout]),
        r("/api/v1/auth/me", ["GET": Auth.me]),
        r("/api/v1/tokens", ["GET": Tokens.list, "POST": Tokens.create]),
        r("/api/v1/tokens/{id}", ["DELETE": Tokens.delete]),
        r("/api/v1/users", ["GET": Users.list, "POST": Users.create]),
        r("/api/v1/users/{id}", ["GET": Users.get, "PATCH": Users.update, "DELETE": Users.delete]),
        r("/api/v1/servers", ["GET": Servers.list, "POST": Servers.create]),
        r("/api/v1/servers/{id}", ["GET": Servers.get, "PATCH": Servers.update, "DELETE": Servers.delete]),
        r("/api/v1/servers/{id}/test", ["POST": Servers.test]),
        r("/api/v1/jobs", ["GET": Jobs.list, "POST": Jobs.create]),
        r("/api/v1/jobs/{id}", ["GET": Jobs.get, "PATCH": Jobs.update, "DELETE": Jobs.delete]),
        r("/api/v1/jobs/{id}/run", ["POST": Executions.run]),
        r("/api/v1/jobs/{id}/notify-test", ["POST": Deliveries.test]),
        r("/api/v1/executions", ["GET": Executions.list]),
        r("/api/v1/executions/{id}", ["GET": Executions.get]),
        r("/api/v1/executions/{id}/cancel", ["POST": Executions.cancel]),
        r("/api/v1/executions/{id}/rerun", ["POST": Executions.rerun]),
        r("/api/v1/executions/{id}/log", ["GET": Live.log]),
        r("/api/v1/executions/{id}/log.txt", ["GET": Live.logText]),
        r("/api/v1/events", ["GET": Live.events]),
        r("/api/v1/notifications", ["GET": Deliveries.list]),
        r("/api/v1/audit", ["GET": Audit.list]),
        r("/api/v1/stats", ["GET": Stats.get]),
        r("/api/v1/schedule/preview", ["GET": Stats.preview]),
    ]

    static func r(_ pattern: String, auth: Bool = true, _ handlers: [String: Handler]) -> Route {
        Route(segments: pattern.split(separator: "/").map(String.init), handlers: handlers, requiresAuth: auth)
    }

    /// The route for a path and its parsed ids, or nil (404) — also when an id is not a valid one.
    static func match(path: String) -> (Route, [String: Int64])? {
        var p = path
        if p.count > 1, p.hasSuffix("/") { p.removeLast() }
        let parts = p.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        outer: for route in table where route.segments.count == parts.count {
            var ids: [String: Int64] = [:]
            for (seg, part) in zip(route.segments, parts) {
                if seg.hasPrefix("{") {
                    guard let id = parseID(part) else { return nil }
                    ids[String(seg.dropFirst().dropLast())] = id
                } else if seg != part {
                    continue outer
                }
            }
            return (route, ids)
        }
        return nil
    }

    /// A positive 64-bit id written plainly (no sign, no leading zero).
    static func parseID(_ s: String) -> Int64? {
        guard let first = s.utf8.first, first >= 0x31, first <= 0x39, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let n = Int64(s) else { return nil }
        return n
    }
}
