// SPDX-License-Identifier: MIT
// Transport value types: what a FastCGI request carries and what is written back.

/// One HTTP request as nginx passed it over FastCGI.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The path without the query, percent-encoding left as sent.
    public var path: String
    /// The raw query string (no leading '?').
    public var query: String
    /// FastCGI parameters: HTTP_* headers, CONTENT_TYPE, REMOTE_ADDR, …
    public var params: [String: String]
    public var body: [UInt8]
    /// True when the body was larger than the limit and was not read.
    public var bodyTooLarge: Bool

    public init(method: String, uri: String, params: [String: String] = [:], body: [UInt8] = [], bodyTooLarge: Bool = false) {
        self.method = method
        if let q = uri.firstIndex(of: "?") {
            path = String(uri[..<q]); query = String(uri[uri.index(after: q)...])
        } else {
            path = uri; query = ""
        }
        self.params = params
        self.body = body
        self.bodyTooLarge = bodyTooLarge
    }

    /// A request header by its HTTP name (e.g. "X-CSRF-Token").
    public func header(_ name: String) -> String? {
        let key = name.uppercased().replacingOccurrences(of: "-", with: "_")
        if key == "CONTENT_TYPE" || key == "CONTENT_LENGTH" { return params[key] }
        return params["HTTP_" + key]
    }

    public var remoteAddress: String { params["REMOTE_ADDR"] ?? "" }
}

/// What the handler answers.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]
    /// A body produced while it is sent (instead of `body`), for responses too large to hold in memory.
    public var stream: BodyStream?
    /// Set instead of an answer: the request is parked (it keeps its connection but frees the accept
    /// thread) and handed to this closure, which answers it later from any thread.
    public var park: (@Sendable (ParkedRequest) -> Void)?

    public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status; self.headers = headers; self.body = body
    }

    /// A response whose answer comes later (see `park`).
    public static func parked(_ park: @escaping @Sendable (ParkedRequest) -> Void) -> HTTPResponse {
        var r = HTTPResponse(status: 0)
        r.park = park
        return r
    }

    /// The CGI response head: Status line, headers, blank line.
    public var head: String {
        var s = "Status: \(status) \(HTTPResponse.reason(status))\r\n"
        for (k, v) in headers {
            // A header value never carries a line break: that would split the response.
            s += k + ": " + v.replacingOccurrences(of: "\r", with: "").replacingOccurrences(of: "\n", with: "") + "\r\n"
        }
        return s + "\r\n"
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 201: "Created"
        case 202: "Accepted"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 409: "Conflict"
        case 413: "Payload Too Large"
        case 415: "Unsupported Media Type"
        case 422: "Unprocessable Content"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }
}

/// A body written piece by piece: `produce` calls `emit` for each piece, on the thread that answers.
public struct BodyStream: @unchecked Sendable {
    public let produce: (_ emit: ([UInt8]) -> Void) throws -> Void
    public init(_ produce: @escaping (_ emit: ([UInt8]) -> Void) throws -> Void) { self.produce = produce }
}
