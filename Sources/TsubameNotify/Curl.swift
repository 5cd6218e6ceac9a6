// SPDX-License-Identifier: MIT
// libcurl behind two calls: an HTTP POST and an SMTP send. This file owns
// every CURL handle, curl_slist, callback context and error code; nothing of
// libcurl leaves it except through Swift value types.
//
// One easy handle per transfer, no signals (CURLOPT_NOSIGNAL: safe in
// threads), connect and total timeouts, the protocols of the transfer only,
// no redirects.

import Foundation
internal import CCurl

/// What came of one transfer.
public struct TransferResult: Sendable, Equatable {
    /// The receiver accepted it (HTTP 2xx; SMTP: the message was queued).
    public var ok: Bool
    /// The last response code: the HTTP status, or the SMTP reply code (250…); nil when no answer came.
    public var statusCode: Int?
    /// Why it failed, for people (never contains the URL's path, query or credentials).
    public var error: String?
    /// True when retrying cannot help (nothing to send it with, a malformed address).
    public var permanent: Bool

    public init(ok: Bool, statusCode: Int? = nil, error: String? = nil, permanent: Bool = false) {
        self.ok = ok; self.statusCode = statusCode; self.error = error; self.permanent = permanent
    }
}

/// How long a transfer may take.
public struct Timeouts: Sendable, Equatable {
    public var connectSeconds: Int
    public var totalSeconds: Int
    public init(connectSeconds: Int = 5, totalSeconds: Int = 15) { self.connectSeconds = connectSeconds; self.totalSeconds = totalSeconds }
}

/// Where e-mail goes out.
public struct SMTPSettings: Sendable, Equatable {
    /// smtp://host[:port] (STARTTLS when offered) or smtps://host[:port] (TLS from the start).
    public var url: String
    public var from: String
    public var username: String?
    public var password: String?
    /// A PEM CA bundle to verify the server's certificate with (default: the system's).
    public var caFile: String?

    public init(url: String, from: String, username: String? = nil, password: String? = nil, caFile: String? = nil) {
        self.url = url; self.from = from; self.username = username; self.password = password; self.caFile = caFile
    }
}

public enum Transport {
    /// curl_global_init, once per process, before the first handle (Swift runs a static initializer exactly once).
    private static let initialized: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK

    /// The libcurl version, for logs.
    public static var version: String { String(cString: curl_version()) }

    /// POSTs `body` to an http(s) URL. A 2xx answer is success; anything else (3xx included: redirects are not
    /// followed) is a failure naming the status and the start of the answer.
    public static func post(url: String, headers: [(String, String)], body: [UInt8], timeouts: Timeouts = Timeouts()) -> TransferResult {
        guard let easy = Easy(timeouts: timeouts, protocols: "http,https") else {
            return TransferResult(ok: false, error: "libcurl could not start a transfer")
        }
        easy.set(CURLOPT_URL, url)
        easy.set(CURLOPT_POST, 1)
        easy.setBody(body)
        easy.setHeaders(headers.map { "\($0.0): \($0.1)" } + ["Expect:"])
        easy.set(CURLOPT_USERAGENT, "tsubame-ci")
        easy.captureResponse()
        let code = easy.perform()
        let status = easy.responseCode
        guard code == CURLE_OK else { return TransferResult(ok: false, statusCode: status, error: easy.describe(code, timeouts)) }
        guard let status, (200..<300).contains(status) else {
            let answer = easy.responseText
            var message = "HTTP \(status ?? 0)"
            if let status, (300..<400).contains(status) { message += ": redirects are not followed" }
            if !answer.isEmpty { message += ": " + answer }
            return TransferResult(ok: false, statusCode: status, error: message)
        }
        return TransferResult(ok: true, statusCode: status)
    }

    /// Sends an RFC 5322 `message` (CRLF line ends; libcurl dot-stuffs it) from `settings.from` to `to`.
    /// smtp:// upgrades to TLS when the server offers STARTTLS (and then verifies its certificate); smtps:// is TLS
    /// from the first byte.
    public static func sendMail(_ settings: SMTPSettings, to: String, message: [UInt8], timeouts: Timeouts = Timeouts()) -> TransferResult {
        guard let easy = Easy(timeouts: timeouts, protocols: "smtp,smtps") else {
            return TransferResult(ok: false, error: "libcurl could not start a transfer")
        }
        easy.set(CURLOPT_URL, settings.url)
        easy.set(CURLOPT_MAIL_FROM, "<\(settings.from)>")
        easy.setList(CURLOPT_MAIL_RCPT, ["<\(to)>"])
        easy.set(CURLOPT_USE_SSL, Int(CURLUSESSL_TRY.rawValue))
        if let u = settings.username { easy.set(CURLOPT_USERNAME, u) }
        if let p = settings.password { easy.set(CURLOPT_PASSWORD, p) }
        if let ca = settings.caFile { easy.set(CURLOPT_CAINFO, ca) }
        easy.setUpload(message)
        let code = easy.perform()
        let status = easy.responseCode
        guard code == CURLE_OK else {
            var message = easy.describe(code, timeouts)
            if let status, status >= 400 { message = "SMTP \(status): " + message }
            return TransferResult(ok: false, statusCode: status, error: message)
        }
        return TransferResult(ok: true, statusCode: status)
    }

    /// One easy handle with the settings every transfer shares, and what must live as long as it does.
    private final class Easy {
        let handle: UnsafeMutableRawPointer
        var lists: [UnsafeMutablePointer<curl_slist>] = []
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        let io = TransferIO()
        var context: Unmanaged<TransferIO>?

        init?(timeouts: Timeouts, protocols: String) {
            guard Transport.initialized, let h = curl_easy_init() else { return nil }
            handle = h
            errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
            _ = tsubame_curl_setopt_pointer(h, CURLOPT_ERRORBUFFER, errorBuffer)
            set(CURLOPT_NOSIGNAL, 1)
            set(CURLOPT_CONNECTTIMEOUT, timeouts.connectSeconds)
            set(CURLOPT_TIMEOUT, timeouts.totalSeconds)
            set(CURLOPT_PROTOCOLS_STR, protocols)
            set(CURLOPT_REDIR_PROTOCOLS_STR, protocols)
            set(CURLOPT_FOLLOWLOCATION, 0)
            // A stuck receiver: give up when less than 1 byte/s moves for the whole timeout.
            set(CURLOPT_LOW_SPEED_LIMIT, 1)
            set(CURLOPT_LOW_SPEED_TIME, timeouts.totalSeconds)
            context = Unmanaged.passRetained(io)
        }

        deinit {
            curl_easy_cleanup(handle)
            for l in lists { curl_slist_free_all(l) }
            errorBuffer.deallocate()
            context?.release()
        }

        func set(_ option: CURLoption, _ value: Int) { _ = tsubame_curl_setopt_long(handle, option, value) }
        func set(_ option: CURLoption, _ value: String) { _ = tsubame_curl_setopt_string(handle, option, value) }  // libcurl copies strings

        func setList(_ option: CURLoption, _ items: [String]) {
            var list: UnsafeMutablePointer<curl_slist>? = nil
            for item in items { list = curl_slist_append(list, item) }
            if let list { lists.append(list) }
            _ = tsubame_curl_setopt_list(handle, option, list)
        }

        func setHeaders(_ headers: [String]) { setList(CURLOPT_HTTPHEADER, headers) }

        func setBody(_ body: [UInt8]) {
            set(CURLOPT_POSTFIELDSIZE, body.count)
            // COPYPOSTFIELDS: libcurl keeps its own copy, so nothing here must outlive the call.
            body.withUnsafeBufferPointer { buf in
                _ = buf.baseAddress.map { tsubame_curl_setopt_pointer(handle, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: $0)) }
            }
            if body.isEmpty { set(CURLOPT_COPYPOSTFIELDS, "") }
        }

        func setUpload(_ data: [UInt8]) {
            io.upload = data
            set(CURLOPT_UPLOAD, 1)
            set(CURLOPT_INFILESIZE, data.count)
            _ = tsubame_curl_setopt_callback(handle, CURLOPT_READFUNCTION, readCallback)
            _ = tsubame_curl_setopt_pointer(handle, CURLOPT_READDATA, context!.toOpaque())
        }

        func captureResponse() {
            _ = tsubame_curl_setopt_callback(handle, CURLOPT_WRITEFUNCTION, writeCallback)
            _ = tsubame_curl_setopt_pointer(handle, CURLOPT_WRITEDATA, context!.toOpaque())
        }

        func perform() -> CURLcode { curl_easy_perform(handle) }

        var responseCode: Int? {
            var code: Int = 0
            guard tsubame_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK, code > 0 else { return nil }
            return code
        }

        /// The start of the answer's body, one line of printable text.
        var responseText: String {
            let text = String(decoding: io.response, as: UTF8.self)
            let flat = String(text.unicodeScalars.map { $0.properties.generalCategory == .control ? " " : Character($0) })
                .split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            return flat.count > 200 ? String(flat.prefix(200)) + "…" : flat
        }

        /// libcurl's error for people: its short text and the detail it wrote into the error buffer.
        func describe(_ code: CURLcode, _ timeouts: Timeouts) -> String {
            let detail = String(cString: errorBuffer).trimmingCharacters(in: .whitespacesAndNewlines)
            var text = String(cString: curl_easy_strerror(code))
            if code == CURLE_OPERATION_TIMEDOUT { text = "timed out (connect \(timeouts.connectSeconds) s, total \(timeouts.totalSeconds) s)" }
            if detail.isEmpty || detail == text { return text }
            // libcurl's detail usually ends with its short text already ("Failed to connect to … : Couldn't connect to server").
            return detail.contains(text) ? detail : "\(text): \(detail)"
        }
    }
}

/// Bytes going out (the SMTP message) and coming back (the start of an HTTP answer) during one transfer.
private final class TransferIO {
    var upload: [UInt8] = []
    var offset = 0
    var response: [UInt8] = []
    static let keep = 4096
}

private let writeCallback: tsubame_curl_data_callback = { buffer, size, count, context in
    let n = size * count
    guard let buffer, let context else { return n }
    let io = Unmanaged<TransferIO>.fromOpaque(context).takeUnretainedValue()
    let room = TransferIO.keep - io.response.count
    if room > 0 {
        buffer.withMemoryRebound(to: UInt8.self, capacity: n) { io.response.append(contentsOf: UnsafeBufferPointer(start: $0, count: min(room, n))) }
    }
    return n  // the rest is read and dropped: the answer only explains a failure
}

private let readCallback: tsubame_curl_data_callback = { buffer, size, count, context in
    guard let buffer, let context else { return 0 }
    let io = Unmanaged<TransferIO>.fromOpaque(context).takeUnretainedValue()
    let n = min(size * count, io.upload.count - io.offset)
    if n <= 0 { return 0 }
    io.upload.withUnsafeBufferPointer { src in
        buffer.withMemoryRebound(to: UInt8.self, capacity: n) { $0.update(from: src.baseAddress! + io.offset, count: n) }
    }
    io.offset += n
    return n
}
