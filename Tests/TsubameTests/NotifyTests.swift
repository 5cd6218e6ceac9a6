// SPDX-License-Identifier: MIT
// Notifications: what they say (webhook body and signature, Slack text, e-mail
// message), the settings, and libcurl's failures on local closed ports.

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameCrypto
@testable import TsubameNotify

let finishedExecution: JSON = [
    "id": 41, "status": "failed", "trigger": "schedule", "created_at": "2026-01-02T03:04:05.000Z",
    "started_at": "2026-01-02T03:04:06.000Z", "finished_at": "2026-01-02T03:04:18.500Z", "duration_ms": 12500,
    "exit_code": 3, "targets": ["total": 3, "succeeded": 2, "failed": 1, "timed_out": 0, "cancelled": 0, "running": 0, "queued": 0],
]

@Suite struct NoticeTests {
    func notice(_ event: String, execution: JSON? = finishedExecution, detail: JSON? = nil, publicURL: String? = "https://ci.example.com/") -> Notice {
        Notice(event: event, deliveryID: 7, jobID: 5, jobName: "backup <db> & co", execution: execution, detail: detail, publicURL: publicURL)
    }

    @Test func signatureIsHexHMACSHA256OfTheBody() {
        // RFC 4231-style known value (HMAC-SHA256 of the classic pangram under "key").
        #expect(Notice.signature(secret: "key", body: Array("The quick brown fox jumps over the lazy dog".utf8))
                == "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")
        let n = notice("failed")
        let body = n.webhookBody()
        let headers = n.webhookHeaders(body: body, secret: "s3cret-value")
        #expect(headers.first { $0.0 == "X-Tsubame-Signature" }?.1 == Notice.signature(secret: "s3cret-value", body: body))
        #expect(headers.first { $0.0 == "X-Tsubame-Event" }?.1 == "execution.finished")
        #expect(headers.first { $0.0 == "X-Tsubame-Delivery" }?.1 == "7")
        #expect(!n.webhookHeaders(body: body, secret: nil).contains { $0.0 == "X-Tsubame-Signature" })
        #expect(!n.webhookHeaders(body: body, secret: "").contains { $0.0 == "X-Tsubame-Signature" })
    }

    @Test func webhookBodyNamesTheEventJobAndExecution() throws {
        let body = try JSON.parse(notice("failed").webhookBody())
        #expect(body.objectValue?.map(\.0) == ["event", "delivery_id", "job", "execution", "url"])
        #expect(body["event"] == "execution.finished" && body["delivery_id"] == 7)
        #expect(body["job"] == ["id": 5, "name": "backup <db> & co"])
        #expect(body["execution"] == finishedExecution)
        #expect(body["url"] == "https://ci.example.com/#/executions/41")
        #expect(notice("started").webhookEvent == "execution.started")
        #expect(notice("timed_out").webhookEvent == "execution.finished")
        let long = try JSON.parse(notice("running_long", detail: ["median_ms": 1000, "factor": 3]).webhookBody())
        #expect(long["event"] == "execution.running_long" && long["running_long"] == ["median_ms": 1000, "factor": 3])
        let test = try JSON.parse(notice("test", execution: nil, publicURL: nil).webhookBody())
        #expect(test["event"] == "test" && test["execution"] == .null && test["url"] == nil)
        #expect(notice("test", execution: nil).link == "https://ci.example.com/#/jobs/5")
    }

    @Test func slackTextIsOneEscapedLine() throws {
        let failed = notice("failed").slackText()
        #expect(failed == ":x: *backup &lt;db&gt; &amp; co* failed <https://ci.example.com/#/executions/41|#41> · after 12.5 s · exit code 3 · 2 of 3 servers succeeded")
        #expect(try JSON.parse(notice("failed").slackBody()) == ["text": .string(failed)])
        #expect(notice("succeeded", execution: ["id": 2, "duration_ms": 850, "exit_code": 0, "targets": ["total": 1, "succeeded": 1]],
                       publicURL: nil).slackText() == ":white_check_mark: *backup &lt;db&gt; &amp; co* succeeded #2 · after 850 ms · 1 server")
        #expect(notice("started", execution: ["id": 2, "trigger": "manual"], publicURL: nil).slackText()
                == ":arrow_forward: *backup &lt;db&gt; &amp; co* started #2 · manual")
        #expect(notice("timed_out").slackText().hasPrefix(":alarm_clock: *backup &lt;db&gt; &amp; co* timed out"))
        #expect(notice("cancelled").slackText().hasPrefix(":no_entry_sign:"))
        #expect(notice("running_long", execution: ["id": 3, "duration_ms": 35000], detail: ["median_ms": 10200, "factor": 3], publicURL: nil)
                .slackText() == ":hourglass_flowing_sand: *backup &lt;db&gt; &amp; co* is running long #3 · running for 35.0 s, more than 3× its median of 10.2 s")
        #expect(notice("test", execution: nil).slackText().contains("Test notification from tsubame-ci for job *backup &lt;db&gt; &amp; co*"))
    }

    @Test func durationsReadLikeTheUI() {
        #expect(Notice.duration(850) == "850 ms")
        #expect(Notice.duration(1234) == "1.23 s")
        #expect(Notice.duration(12_500) == "12.5 s")
        #expect(Notice.duration(245_000) == "4 min 05 s")
        #expect(Notice.duration(3_720_000) == "1 h 02 min")
    }

    @Test func emailHasHeadersAndPlainText() throws {
        let n = Notice(event: "failed", deliveryID: 9, jobID: 5, jobName: "nightly", execution: finishedExecution, publicURL: "https://ci/")
        let date = Date(timeIntervalSince1970: 1_767_323_045)  // 2026-01-02 03:04:05 UTC, a Friday
        let text = String(decoding: n.emailMessage(from: "ci@example.com", to: "ops@example.com", date: date), as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        let headers = parts[0].components(separatedBy: "\r\n")
        #expect(headers.contains("From: tsubame-ci <ci@example.com>") && headers.contains("To: <ops@example.com>"))
        #expect(headers.contains("Subject: [tsubame-ci] nightly failed (#41)"))
        #expect(headers.contains("Date: Fri, 02 Jan 2026 03:04:05 +0000"))
        #expect(headers.contains { $0.hasPrefix("Message-ID: <tsubame.9.") && $0.hasSuffix("@example.com>") })
        #expect(headers.contains("Content-Type: text/plain; charset=utf-8") && headers.contains("X-Tsubame-Event: execution.finished"))
        let body = parts.dropFirst().joined(separator: "\r\n\r\n")
        for line in ["Job:       nightly (#5)", "Execution: #41 (schedule)", "Status:    failed", "Duration:  12.5 s", "Exit code: 3",
                     "Servers:   2 of 3 servers succeeded", "https://ci/#/executions/41", "-- "] {
            #expect(body.contains(line + "\r\n"), "\(line)")
        }
        #expect(!text.contains("\n") || !text.replacingOccurrences(of: "\r\n", with: "").contains("\n"), "every line ends with CRLF")
        let test = Notice(event: "test", deliveryID: 1, jobID: 5, jobName: "nightly", execution: nil)
        #expect(test.emailSubject == "[tsubame-ci] Test notification for nightly")
        #expect(test.emailText.contains("test notification"))
        #expect(Notice(event: "running_long", deliveryID: 1, jobID: 5, jobName: "n", execution: ["id": 4, "duration_ms": 9000],
                       detail: ["median_ms": 2000, "factor": 3]).emailText.contains("Note:      running for 9.00 s, more than 3× its median of 2.00 s"))
        #expect(Notice(event: "started", deliveryID: 1, jobID: 5, jobName: "n", execution: ["id": 4]).emailSubject == "[tsubame-ci] n started (#4)")
        #expect(Notice(event: "running_long", deliveryID: 1, jobID: 5, jobName: "n", execution: ["id": 4]).emailSubject
                == "[tsubame-ci] n is running long (#4)")
    }

    @Test func headersAreASCIIEncodedWordsAndNeverBreakLines() {
        #expect(Notice.encodeHeader("plain subject") == "plain subject")
        #expect(Notice.encodeHeader("a\r\nBcc: x@y") == "a  Bcc: x@y")
        let encoded = Notice.encodeHeader("[tsubame-ci] バックアップ failed (#1) " + String(repeating: "é", count: 40))
        #expect(encoded.unicodeScalars.allSatisfy { $0.isASCII })
        let words = encoded.components(separatedBy: "\r\n ")
        #expect(words.count > 1 && words.allSatisfy { $0.hasPrefix("=?UTF-8?B?") && $0.hasSuffix("?=") && $0.count <= 75 })
        let decoded = words.map { w -> String in
            let b64 = String(w.dropFirst(10).dropLast(2))
            return String(decoding: Data(base64Encoded: b64) ?? Data(), as: UTF8.self)
        }.joined()
        #expect(decoded == "[tsubame-ci] バックアップ failed (#1) " + String(repeating: "é", count: 40))
    }
}

@Suite struct NotifySettingsTests {
    @Test func settingsComeFromTheConfiguration() throws {
        let c = try Config.load(environment: ["TSUBAME_SMTP_URL": "smtps://mail.example.com:465", "TSUBAME_SMTP_FROM": "ci@example.com",
                                              "TSUBAME_SMTP_USERNAME": "u", "TSUBAME_SMTP_PASSWORD": "pw", "TSUBAME_SMTP_CA_FILE": "/ca.pem",
                                              "TSUBAME_PUBLIC_URL": "https://ci.example.com", "TSUBAME_NOTIFY_RETRY_SECONDS": "2",
                                              "TSUBAME_NOTIFY_MAX_ATTEMPTS": "3", "TSUBAME_NOTIFY_TIMEOUT_SECONDS": "4"])
        let s = NotifySettings(config: c)
        #expect(s.smtp == SMTPSettings(url: "smtps://mail.example.com:465", from: "ci@example.com", username: "u", password: "pw", caFile: "/ca.pem"))
        #expect(s.publicURL == "https://ci.example.com" && s.maxAttempts == 3 && s.concurrency == 4)
        #expect(s.timeouts == Timeouts(connectSeconds: 4, totalSeconds: 4))
        #expect([1, 2, 3, 4, 5].map(s.retryDelay(afterAttempt:)) == [2, 12, 60, 360, 360])
        #expect(!c.dump().contains("pw"))
        let plain = NotifySettings(config: try Config.load(environment: [:]))
        #expect(plain.smtp == nil && plain.publicURL == nil && plain.retrySeconds == 10 && plain.maxAttempts == 5)
        #expect(plain.timeouts == Timeouts(connectSeconds: 5, totalSeconds: 15))
        #expect([1, 2, 3, 4].map(plain.retryDelay(afterAttempt:)) == [10, 60, 300, 1800])
    }

    @Test(arguments: [("TSUBAME_SMTP_URL", "mail.example.com"), ("TSUBAME_SMTP_URL", "http://mail"), ("TSUBAME_SMTP_URL", "smtp://"),
                      ("TSUBAME_PUBLIC_URL", "ci.example.com"), ("TSUBAME_PUBLIC_URL", "https://ci example")])
    func badURLsAreConfigErrors(name: String, value: String) {
        #expect(throws: ConfigError.self) { try Config.load(environment: [name: value]) }
    }

    @Test func storedSecretsOpenOnlyWithTheirKey() throws {
        let box = try SecretBox(key: Array(repeating: 1, count: 32))
        let sealed = try Receiver.sealSecret("webhook-secret", box: box)
        let item = JSON.object([("type", "webhook"), ("url", "https://h/x")] + sealed)
        let r = try Receiver(stored: item, box: box)
        #expect(r.type == "webhook" && r.target == "https://h/x" && r.secret == "webhook-secret")
        #expect(!item.text.contains("webhook-secret"))
        #expect(throws: SecretBoxError.self) { try Receiver(stored: item, box: try SecretBox(key: Array(repeating: 2, count: 32))) }
        let mail = try Receiver(stored: ["type": "email", "to": "a@b.c"], box: box)
        #expect(mail.target == "a@b.c" && mail.secret == nil)
    }
}

/// libcurl against ports nobody listens on (loopback only): failures come back as results, never as crashes.
@Suite struct TransportTests {
    func closedPort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    @Test func refusedAndRefusedProtocolsFailWithAReason() {
        let port = closedPort()
        let r = Transport.post(url: "http://127.0.0.1:\(port)/hook", headers: [("X-A", "1")], body: Array("{}".utf8),
                               timeouts: Timeouts(connectSeconds: 2, totalSeconds: 2))
        #expect(!r.ok && r.statusCode == nil && (r.error ?? "").contains("connect"), "\(r)")
        let ftp = Transport.post(url: "ftp://127.0.0.1:\(port)/x", headers: [], body: [])
        #expect(!ftp.ok && (ftp.error ?? "").lowercased().contains("protocol"), "\(ftp)")
        let mail = Transport.sendMail(SMTPSettings(url: "smtp://127.0.0.1:\(port)", from: "a@b.c"), to: "d@e.f", message: Array("x\r\n".utf8),
                                      timeouts: Timeouts(connectSeconds: 2, totalSeconds: 2))
        #expect(!mail.ok && (mail.error ?? "").contains("connect"), "\(mail)")
        #expect(Transport.version.hasPrefix("libcurl/"))
    }

    @Test func emailWithoutAMailServerFailsForGood() {
        let r = Sender.send(Notice(event: "test", deliveryID: 1, jobID: 1, jobName: "j", execution: nil),
                            to: Receiver(type: "email", target: "a@b.c"), settings: NotifySettings())
        #expect(!r.ok && r.permanent && (r.error ?? "").hasPrefix("TSUBAME_SMTP_URL is not set"))
        let odd = Sender.send(Notice(event: "test", deliveryID: 1, jobID: 1, jobName: "j", execution: nil),
                              to: Receiver(type: "pager", target: "x"), settings: NotifySettings())
        #expect(!odd.ok && odd.permanent)
    }
}
