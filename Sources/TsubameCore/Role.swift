// SPDX-License-Identifier: MIT

/// What a signed-in caller may do. Ordered: each role can do what the ones before it can.
public enum Role: String, CaseIterable, Comparable, Sendable {
    case viewer, operator_ = "operator", admin

    public static func < (a: Role, b: Role) -> Bool { a.rank < b.rank }
    var rank: Int { switch self { case .viewer: 0; case .operator_: 1; case .admin: 2 } }
}

/// The caller of a request, once authenticated.
public struct Principal: Sendable, Equatable {
    public let userID: Int64
    public let username: String
    public let role: Role
    /// Set when the caller came with a session cookie (CSRF applies); nil for bearer tokens.
    public let sessionID: Int64?
    public let csrfToken: String?
    public let tokenID: Int64?

    public init(userID: Int64, username: String, role: Role, sessionID: Int64? = nil, csrfToken: String? = nil, tokenID: Int64? = nil) {
        self.userID = userID; self.username = username; self.role = role
        self.sessionID = sessionID; self.csrfToken = csrfToken; self.tokenID = tokenID
    }
}
