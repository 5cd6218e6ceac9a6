// SPDX-License-Identifier: MIT
// The application object one accept thread owns: its PG connection and the
// shared settings. `handle` turns any request into a response and never throws.

import Foundation
public import TsubameCore
public import TsubameFastCGI
public import TsubamePostgres
public import TsubameCrypto
public import TsubameNotify

/// Settings the HTTP layer needs, built from Config or directly in tests.
public struct AppSettings: Sendable {
    public var databaseURL: String
    public var cookieSecure: Bool
    public var sessionHours: Int
    public var loginMaxFailures: Int
    public var loginWindowSeconds: Int
    public var hasher: PasswordHasher
    /// SMTP and the public URL, for "send test notification".
    public var notify: NotifySettings

    public init(databaseURL: String, cookieSecure: Bool = true, sessionHours: Int = 12, loginMaxFailures: Int = 5,
                loginWindowSeconds: Int = 900, hasher: PasswordHasher = PasswordHasher(), notify: NotifySettings = NotifySettings()) {
        self.databaseURL = databaseURL; self.cookieSecure = cookieSecure; self.sessionHours = sessionHours
        self.loginMaxFailures = loginMaxFailures; self.loginWindowSeconds = loginWindowSeconds; self.hasher = hasher
        self.notify = notify
    }

    public init(config: Config) {
        self.init(databaseURL: config.databaseURL, cookieSecure: config.bool("TSUBAME_COOKIE_SECURE"),
                  sessionHours: config.int("TSUBAME_SESSION_HOURS"), loginMaxFailures: config.int("TSUBAME_LOGIN_MAX_FAILURES"),
                  loginWindowSeconds: config.int("TSUBAME_LOGIN_WINDOW_SECONDS"), notify: NotifySettings(config: config))
    }
}

public final class App: @unchecked Sendable {
    public let settings: AppSettings
    public let box: SecretBox
    private var connection: PGConnection?
    /// Extra lines for /metrics from the process (pool counters); set by the worker.
    public var metricsProvider: (() -> String)?
    /// The pool master's status as JSON (GET /pool-status); nil when this worker runs without a pool.
    public var poolStatus: (() throws -> String)?
    /// Where answered requests are counted (the worker's, shared by its threads); nil: not counted.
    public var requestMetrics: RequestMetrics?
    /// The route the request being handled matched (`Routes.names` index).
    var routeIndex = Routes.table.count
    /// Where long-polls park; without one (tests, tools) they are answered at once.
    public var hub: LiveHub?

    public init(settings: AppSettings, box: SecretBox) {
        self.settings = settings
        self.box = box
    }

    /// Makes `c` this app's connection (the CLI runs handlers inside its own transaction on it).
    func use(connection c: PGConnection) { connection = c }

    /// This thread's connection, (re)connected on demand. Throws 503 when PostgreSQL cannot be reached.
    public func database() throws -> PGConnection {
        if let c = connection, c.isOK { return c }
        do {
            if let c = connection { try c.reconnectIfNeeded(); return c }
            let c = try PGConnection(settings.databaseURL)
            connection = c
            return c
        } catch let e as PGError {
            Log.warn("database unreachable", [("error", .string(e.description))])
            throw APIError.unavailable("The database is unreachable; try again shortly.")
        }
    }

    /// Answers any request. Errors become problem+json; unexpected ones a logged 500 with a request id.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        let started = Date()
        let requestID = Crypto.hex(Crypto.randomBytes(8))
        routeIndex = Routes.table.count
        let response = guarded(requestID: requestID, path: request.path) { try route(request) }
        if let m = requestMetrics {
            if response.park == nil { m.record(route: routeIndex, status: response.status, seconds: Date().timeIntervalSince(started)) } else { m.parked() }
        }
        if Log.minimum <= .debug {
            Log.debug("request", [("request_id", .string(requestID)), ("method", .string(request.method)), ("path", .string(request.path)),
                                  ("status", .int(response.park == nil ? response.status : 0)),
                                  ("ms", .double(Date().timeIntervalSince(started) * 1000))])
        }
        return response
    }

    /// Runs `body`, turning what it throws into problem+json, and tags the answer with the request id.
    func guarded(requestID: String, path: String, _ body: () throws -> HTTPResponse) -> HTTPResponse {
        var response: HTTPResponse
        do {
            response = try body()
        } catch let e as APIError {
            response = Reply.problem(e, requestID: requestID)
        } catch let e as PGError where e.isUniqueViolation || e.isForeignKeyViolation {
            // A race another request won (the handlers check first; this is the backstop).
            response = Reply.problem(.conflict("The change conflicts with another one made at the same time; reload and retry."), requestID: requestID)
        } catch let e as PGError where e.isDiskFull {
            Log.error("the database is out of disk space", [("request_id", .string(requestID)), ("path", .string(path)),
                                                           ("error", .string(e.description))])
            response = Reply.problem(.unavailable("The database server is out of disk space, so this change was not saved; "
                                                  + "try again once an administrator has freed space."), requestID: requestID)
        } catch let e as PGError where e.connectionLost {
            Log.warn("database connection lost", [("request_id", .string(requestID)), ("error", .string(e.description))])
            response = Reply.problem(.unavailable("The database is unreachable; try again shortly."), requestID: requestID)
        } catch {
            Log.error("request failed", [("request_id", .string(requestID)), ("path", .string(path)),
                                         ("error", .string(String(describing: error)))])
            response = Reply.problem(.internal, requestID: requestID)
        }
        response.headers.append(("X-Request-Id", requestID))
        return response
    }

    func route(_ request: HTTPRequest) throws -> HTTPResponse {
        guard let (route, ids) = Routes.match(path: request.path) else {
            throw APIError(status: 404, title: "Not found", detail: "No API endpoint at \(request.path).")
        }
        routeIndex = route.index
        let method = request.method == "HEAD" ? "GET" : request.method
        guard let handler = route.handlers[method] else { throw APIError.methodNotAllowed(route.handlers.keys.sorted()) }
        var ctx = Context(request: request, app: self, ids: ids)
        if route.requiresAuth {
            ctx.principal = try Auth.authenticate(ctx)
            guard let p = ctx.principal else { throw APIError.unauthorized() }
            if p.sessionID != nil, method != "GET" {
                let sent = request.header("X-CSRF-Token") ?? ""
                guard let expected = p.csrfToken, Crypto.constantTimeEqual(Array(sent.utf8), Array(expected.utf8)) else {
                    throw APIError.forbidden("Missing or wrong X-CSRF-Token header: send the csrf_token from sign-in or /auth/me.")
                }
            }
        }
        if request.bodyTooLarge { throw APIError.tooLarge }
        return try handler(ctx)
    }
}
