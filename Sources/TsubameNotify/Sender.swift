// SPDX-License-Identifier: MIT
// Sends one notice to one receiver: the webhook, Slack or e-mail shape, over
// libcurl. Used by the executors' delivery loop and by the API's "send test
// notification"; both record what came of it.

import Foundation
public import TsubameCore
public import TsubameCrypto

/// The notification settings (README.md, "Configuration").
public struct NotifySettings: Sendable {
    /// Nil when TSUBAME_SMTP_URL is not set: e-mail deliveries then fail saying so.
    public var smtp: SMTPSettings?
    public var publicURL: String?
    public var timeouts = Timeouts()
    /// The first retry waits this long; later ones 6x, 30x, 180x.
    public var retrySeconds = 10
    public var maxAttempts = 5
    /// Deliveries one executor sends at once.
    public var concurrency = 4

    public init(smtp: SMTPSettings? = nil, publicURL: String? = nil) { self.smtp = smtp; self.publicURL = publicURL }

    public init(config: Config) {
        var smtp: SMTPSettings? = nil
        if let url = config.string("TSUBAME_SMTP_URL") {
            smtp = SMTPSettings(url: url, from: config.string("TSUBAME_SMTP_FROM") ?? "tsubame-ci@localhost",
                                username: config.string("TSUBAME_SMTP_USERNAME"), password: config.string("TSUBAME_SMTP_PASSWORD"),
                                caFile: config.string("TSUBAME_SMTP_CA_FILE"))
        }
        self.init(smtp: smtp, publicURL: config.string("TSUBAME_PUBLIC_URL"))
        retrySeconds = config.int("TSUBAME_NOTIFY_RETRY_SECONDS")
        maxAttempts = config.int("TSUBAME_NOTIFY_MAX_ATTEMPTS")
        concurrency = config.int("TSUBAME_NOTIFY_CONCURRENCY")
        let total = config.int("TSUBAME_NOTIFY_TIMEOUT_SECONDS")
        timeouts = Timeouts(connectSeconds: min(5, total), totalSeconds: total)
    }

    /// The wait after failed attempt number `attempt` (1-based): base, 6x, 30x, 180x, then 180x again.
    public func retryDelay(afterAttempt attempt: Int) -> Int {
        let factors = [1, 6, 30, 180]
        return retrySeconds * factors[min(max(attempt, 1), factors.count) - 1]
    }
}

/// Where one notice goes: the item's type, its URL or address, and the webhook secret (opened).
public struct Receiver: Sendable {
    public var type: String
    public var target: String
    public var secret: String?
    public init(type: String, target: String, secret: String? = nil) { self.type = type; self.target = target; self.secret = secret }
}

public enum Sender {
    /// Renders `notice` for the receiver's type and sends it; never throws (failures are in the result).
    public static func send(_ notice: Notice, to receiver: Receiver, settings: NotifySettings, timeouts: Timeouts? = nil) -> TransferResult {
        let t = timeouts ?? settings.timeouts
        switch receiver.type {
        case "webhook":
            let body = notice.webhookBody()
            return Transport.post(url: receiver.target, headers: notice.webhookHeaders(body: body, secret: receiver.secret), body: body, timeouts: t)
        case "slack":
            return Transport.post(url: receiver.target, headers: [("Content-Type", "application/json")], body: notice.slackBody(), timeouts: t)
        case "email":
            guard let smtp = settings.smtp else {
                return TransferResult(ok: false, error: "TSUBAME_SMTP_URL is not set: configure a mail server to send e-mail notifications",
                                      permanent: true)
            }
            return Transport.sendMail(smtp, to: receiver.target, message: notice.emailMessage(from: smtp.from, to: receiver.target), timeouts: t)
        default:
            return TransferResult(ok: false, error: "unknown notification type \(receiver.type)", permanent: true)
        }
    }
}

extension Receiver {
    /// The receiver of a notify item as stored on a job: `url` or `to`, and the webhook secret opened with `box`.
    /// Throws when the secret cannot be opened (sealed under another master key).
    public init(stored item: JSON, box: SecretBox) throws {
        let type = item["type"]?.stringValue ?? ""
        var secret: String? = nil
        if let hex = item["secret_sealed"]?.stringValue {
            guard let sealed = Crypto.fromHex(hex), let plain = try? box.open(sealed) else {
                throw SecretBoxError.badKey("the webhook secret cannot be decrypted with this master key (key rotated?)")
            }
            secret = String(decoding: plain, as: UTF8.self)
        }
        self.init(type: type, target: item["url"]?.stringValue ?? item["to"]?.stringValue ?? "", secret: secret)
    }

    /// The members a stored item gets for a webhook secret: the sealed secret (hex) and the key that sealed it.
    public static func sealSecret(_ secret: String, box: SecretBox) throws -> [(String, JSON)] {
        [("secret_sealed", .string(Crypto.hex(try box.seal(Array(secret.utf8))))), ("secret_key_id", .string(box.keyID))]
    }
}
