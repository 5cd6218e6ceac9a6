// SPDX-License-Identifier: MIT
// The one error type that reaches HTTP: a status, a title, a detail for the
// user and per-field messages. Rendered as application/problem+json.

/// A field-level validation message, as in the problem's `errors` array.
public struct FieldError: Equatable, Sendable {
    public let field: String
    public let message: String
    public init(_ field: String, _ message: String) { self.field = field; self.message = message }
}

/// An error with an HTTP meaning. Anything else thrown by a handler becomes an opaque 500.
public struct APIError: Error, Equatable, Sendable {
    public let status: Int
    public let title: String
    public let detail: String
    public let errors: [FieldError]
    /// Extra response headers (e.g. Retry-After, Allow).
    public let headers: [(String, String)]

    public init(status: Int, title: String, detail: String, errors: [FieldError] = [], headers: [(String, String)] = []) {
        self.status = status; self.title = title; self.detail = detail; self.errors = errors; self.headers = headers
    }

    public static func == (a: APIError, b: APIError) -> Bool {
        a.status == b.status && a.title == b.title && a.detail == b.detail && a.errors == b.errors
    }

    public static func badRequest(_ detail: String) -> APIError { APIError(status: 400, title: "Bad request", detail: detail) }
    public static func unauthorized(_ detail: String = "Sign in first: send the session cookie or an `Authorization: Bearer` token.") -> APIError {
        APIError(status: 401, title: "Not signed in", detail: detail)
    }
    public static func forbidden(_ detail: String) -> APIError { APIError(status: 403, title: "Forbidden", detail: detail) }
    public static func notFound(_ what: String = "resource") -> APIError {
        APIError(status: 404, title: "Not found", detail: "No such \(what).")
    }
    public static func methodNotAllowed(_ allowed: [String]) -> APIError {
        APIError(status: 405, title: "Method not allowed", detail: "This path accepts \(allowed.joined(separator: ", ")).",
                 headers: [("Allow", allowed.joined(separator: ", "))])
    }
    public static func conflict(_ detail: String) -> APIError { APIError(status: 409, title: "Conflict", detail: detail) }
    public static let tooLarge = APIError(status: 413, title: "Payload too large", detail: "The request body is larger than 2 MiB.")
    public static let unsupportedMediaType = APIError(
        status: 415, title: "Unsupported media type", detail: "Send the body as Content-Type: application/json.")
    public static func validation(_ errors: [FieldError]) -> APIError {
        let detail = errors.map { "\($0.field): \($0.message)" }.joined(separator: "; ")
        return APIError(status: 422, title: "Validation failed", detail: detail, errors: errors)
    }
    public static func tooManyRequests(retryAfter: Int, detail: String) -> APIError {
        APIError(status: 429, title: "Too many requests", detail: detail, headers: [("Retry-After", String(retryAfter))])
    }
    public static func unavailable(_ detail: String) -> APIError { APIError(status: 503, title: "Service unavailable", detail: detail) }
    public static func notImplemented(_ detail: String) -> APIError { APIError(status: 501, title: "Not implemented", detail: detail) }
    public static let `internal` = APIError(status: 500, title: "Internal error", detail: "The server failed; the error was logged.")

    /// The problem+json body.
    public var json: JSON {
        var members: [(String, JSON)] = [
            ("type", "about:blank"), ("title", .string(title)), ("status", .int(status)), ("detail", .string(detail)),
        ]
        if !errors.isEmpty {
            members.append(("errors", .array(errors.map { .object([("field", .string($0.field)), ("message", .string($0.message))]) })))
        }
        return .object(members)
    }
}
