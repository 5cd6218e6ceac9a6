// SPDX-License-Identifier: MIT
// What a notification says, for each kind of receiver: the webhook's JSON
// body and its signature, Slack's one-liner, the e-mail message. Pure
// functions of the delivery; no I/O here (README.md, "Notifications").

public import Foundation
public import TsubameCore
import TsubameCrypto

/// One notification to render and send.
public struct Notice: Sendable {
    /// started, succeeded, failed, cancelled, timed_out, running_long or test.
    public var event: String
    /// The delivery's id (the same on every retry: receivers may use it to drop duplicates).
    public var deliveryID: Int64
    public var jobID: Int64?
    public var jobName: String
    /// The execution summary (id, status, trigger, created_at, started_at, finished_at, duration_ms, exit_code,
    /// targets {total, by status}); nil for a test.
    public var execution: JSON?
    /// For running_long: {median_ms, factor}.
    public var detail: JSON?
    /// TSUBAME_PUBLIC_URL, for links to the execution.
    public var publicURL: String?

    public init(event: String, deliveryID: Int64, jobID: Int64?, jobName: String, execution: JSON?, detail: JSON? = nil,
                publicURL: String? = nil) {
        self.event = event; self.deliveryID = deliveryID; self.jobID = jobID; self.jobName = jobName
        self.execution = execution; self.detail = detail; self.publicURL = publicURL
    }

    /// The webhook's event name: execution.started, execution.finished, execution.running_long or test.
    public var webhookEvent: String {
        switch event {
        case "started": return "execution.started"
        case "running_long": return "execution.running_long"
        case "test": return "test"
        default: return "execution.finished"
        }
    }

    var executionID: Int64? { execution?["id"]?.int64Value }

    /// A link to the execution (or the job, for a test) in the web UI, when TSUBAME_PUBLIC_URL is set.
    public var link: String? {
        guard var base = publicURL, !base.isEmpty else { return nil }
        while base.hasSuffix("/") { base.removeLast() }
        if let e = executionID { return "\(base)/#/executions/\(e)" }
        if let j = jobID { return "\(base)/#/jobs/\(j)" }
        return base + "/"
    }

    // MARK: webhook

    /// The webhook body: {event, delivery_id, job {id, name}, execution {…} | null, url?, running_long?}.
    public func webhookBody() -> [UInt8] {
        var members: [(String, JSON)] = [
            ("event", .string(webhookEvent)), ("delivery_id", .int(deliveryID)),
            ("job", .object([("id", jobID.map(JSON.int) ?? .null), ("name", .string(jobName))])),
            ("execution", execution ?? .null),
        ]
        if event == "running_long", let d = detail { members.append(("running_long", d)) }
        if let l = link { members.append(("url", .string(l))) }
        return JSON.object(members).encoded()
    }

    /// `sha256=` and the hex HMAC-SHA256 of the exact body bytes under the item's secret.
    public static func signature(secret: String, body: [UInt8]) -> String {
        "sha256=" + Crypto.hex(Crypto.hmacSHA256(key: Array(secret.utf8), message: body))
    }

    /// Headers of a webhook POST (the signature only with a secret).
    public func webhookHeaders(body: [UInt8], secret: String?) -> [(String, String)] {
        var h: [(String, String)] = [("Content-Type", "application/json"), ("X-Tsubame-Event", webhookEvent),
                                     ("X-Tsubame-Delivery", String(deliveryID))]
        if let secret, !secret.isEmpty { h.append(("X-Tsubame-Signature", Notice.signature(secret: secret, body: body))) }
        return h
    }

    // MARK: Slack

    /// Slack's incoming-webhook body: {"text": one mrkdwn line}.
    public func slackBody() -> [UInt8] { JSON.object([("text", .string(slackText()))]).encoded() }

    /// Escapes what Slack's mrkdwn treats as markup in user-controlled text.
    static func slackEscape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    public func slackText() -> String {
        let job = "*\(Notice.slackEscape(jobName))*"
        if event == "test" {
            var text = ":bell: Test notification from tsubame-ci for job \(job): this receiver works."
            if let l = link { text += " <\(l)|Open the job>" }
            return text
        }
        let ref = executionID.map { id in link.map { "<\($0)|#\(id)>" } ?? "#\(id)" } ?? ""
        var parts: [String] = []
        switch event {
        case "started":
            parts.append(":arrow_forward: \(job) started \(ref)".trimmingCharacters(in: .whitespaces))
            if let t = execution?["trigger"]?.stringValue { parts.append(t) }
        case "running_long":
            parts.append(":hourglass_flowing_sand: \(job) is running long \(ref)".trimmingCharacters(in: .whitespaces))
            parts.append(longSummary)
        default:
            parts.append("\(Notice.emoji(event)) \(job) \(Notice.statusWords(event)) \(ref)".trimmingCharacters(in: .whitespaces))
            if let ms = execution?["duration_ms"]?.int64Value { parts.append("after \(Notice.duration(ms))") }
            if let code = execution?["exit_code"]?.int64Value, code != 0 { parts.append("exit code \(code)") }
            if let s = serversSummary { parts.append(s) }
        }
        return parts.filter { !$0.isEmpty }.joined(separator: " · ")
    }

    static func emoji(_ status: String) -> String {
        switch status {
        case "succeeded": return ":white_check_mark:"
        case "failed": return ":x:"
        case "timed_out": return ":alarm_clock:"
        case "cancelled": return ":no_entry_sign:"
        default: return ":information_source:"
        }
    }

    static func statusWords(_ status: String) -> String { status == "timed_out" ? "timed out" : status }

    /// "2 of 3 servers succeeded" (or nil without targets).
    var serversSummary: String? {
        guard let t = execution?["targets"], let total = t["total"]?.int64Value, total > 0 else { return nil }
        let ok = t["succeeded"]?.int64Value ?? 0
        if total == 1 { return ok == 1 ? "1 server" : "its server did not succeed" }
        return ok == total ? "\(total) servers" : "\(ok) of \(total) servers succeeded"
    }

    /// "running for 35 s, 3× its median of 10.2 s".
    var longSummary: String {
        var s = ""
        if let ms = execution?["duration_ms"]?.int64Value { s = "running for \(Notice.duration(ms))" }
        if let median = detail?["median_ms"]?.int64Value {
            let factor = detail?["factor"].flatMap { v -> String? in if case let .number(n) = v { return n }; return nil } ?? "3"
            s += (s.isEmpty ? "" : ", ") + "more than \(factor)× its median of \(Notice.duration(median))"
        }
        return s
    }

    /// 850 ms, 12.3 s, 4 min 05 s, 1 h 02 min (as the web UI shows durations).
    public static func duration(_ ms: Int64) -> String {
        if ms < 1000 { return "\(ms) ms" }
        let s = Double(ms) / 1000
        if s < 60 { return String(format: s < 10 ? "%.2f s" : "%.1f s", s) }
        let m = Int(s / 60)
        if m < 60 { return String(format: "%d min %02d s", m, Int(s) % 60) }
        return String(format: "%d h %02d min", m / 60, m % 60)
    }

    // MARK: e-mail

    public var emailSubject: String {
        let id = executionID.map { " (#\($0))" } ?? ""
        switch event {
        case "test": return "[tsubame-ci] Test notification for \(jobName)"
        case "started": return "[tsubame-ci] \(jobName) started\(id)"
        case "running_long": return "[tsubame-ci] \(jobName) is running long\(id)"
        default: return "[tsubame-ci] \(jobName) \(Notice.statusWords(event))\(id)"
        }
    }

    public var emailText: String {
        var lines: [String] = []
        if event == "test" {
            lines.append("This is a test notification from tsubame-ci for the job \(jobName)\(jobID.map { " (#\($0))" } ?? "").")
            lines.append("If you read this, e-mail notifications of this job reach you.")
        } else {
            let e = execution ?? .null
            func line(_ label: String, _ value: String?) { if let v = value, !v.isEmpty { lines.append(label.padding(toLength: 11, withPad: " ", startingAt: 0) + v) } }
            line("Job:", jobName + (jobID.map { " (#\($0))" } ?? ""))
            line("Execution:", executionID.map { "#\($0)" + (e["trigger"]?.stringValue.map { " (\($0))" } ?? "") })
            line("Status:", e["status"]?.stringValue.map(Notice.statusWords))
            if event == "running_long" { line("Note:", longSummary) }
            line("Started:", e["started_at"]?.stringValue)
            line("Finished:", e["finished_at"]?.stringValue)
            line("Duration:", e["duration_ms"]?.int64Value.map(Notice.duration))
            line("Exit code:", e["exit_code"]?.int64Value.map(String.init))
            line("Servers:", serversSummary)
        }
        if let l = link { lines.append(""); lines.append(l) }
        lines.append("")
        lines.append("-- ")
        lines.append("tsubame-ci")
        return lines.joined(separator: "\r\n") + "\r\n"
    }

    /// The whole message: headers (From, To, Subject, Date, Message-ID, MIME) and the UTF-8 text body, CRLF line ends.
    public func emailMessage(from: String, to: String, date: Date = Date()) -> [UInt8] {
        let domain = from.split(separator: "@").last.map(String.init) ?? "localhost"
        let headers = [
            "From: tsubame-ci <\(from)>",
            "To: <\(to)>",
            "Subject: \(Notice.encodeHeader(emailSubject))",
            "Date: \(Notice.rfc5322Date(date))",
            "Message-ID: <tsubame.\(deliveryID).\(Crypto.hex(Crypto.randomBytes(6)))@\(domain)>",
            "X-Tsubame-Event: \(webhookEvent)",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
        ]
        return Array((headers.joined(separator: "\r\n") + "\r\n\r\n" + emailText).utf8)
    }

    /// A header value as it may go on the wire: ASCII as it is, anything else as RFC 2047 UTF-8 base64 words
    /// (each under 75 characters, split on character boundaries). Line breaks never survive.
    public static func encodeHeader(_ value: String) -> String {
        let flat = value.replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\n", with: " ")
        if flat.unicodeScalars.allSatisfy({ $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F }) { return flat }
        var words: [String] = []
        var chunk: [UInt8] = []
        for ch in flat {
            let bytes = Array(String(ch).utf8)
            if chunk.count + bytes.count > 45 {
                words.append("=?UTF-8?B?" + Data(chunk).base64EncodedString() + "?=")
                chunk = []
            }
            chunk += bytes
        }
        if !chunk.isEmpty { words.append("=?UTF-8?B?" + Data(chunk).base64EncodedString() + "?=") }
        return words.joined(separator: "\r\n ")
    }

    /// "Tue, 02 Jun 2026 15:04:05 +0000".
    public static func rfc5322Date(_ date: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss '+0000'"
        return f.string(from: date)
    }
}
