// SPDX-License-Identifier: MIT
import Foundation
import Testing
@testable import TsubameCore

@Suite struct JSONTests {
    @Test func parsesAndEncodesRoundTrip() throws {
        let text = #"{"a":[1,-2.5e3,true,false,null],"b":"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00","c":{}}"#
        let v = try JSON.parse(text)
        #expect(v["a"]?.arrayValue?.count == 5)
        #expect(v["b"]?.stringValue == "x\"\\/\u{8}\u{c}\n\r\té😀")
        let again = try JSON.parse(v.text)
        #expect(again == v)
        #expect(JSON.object([("s", .string("<&>\u{1}"))]).text == #"{"s":"\u003c\u0026\u003e\u0001"}"#)
    }

    @Test(arguments: ["", " ", "{", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "01", "1.", "-", "1e", "tru", "\"abc", "\"\\x\"",
                      "\"\\ud800\"", "\"\\udc00\"", "\"\\u12\"", "{\"a\":1,\"a\":2}", "[1] 2", "\"a\u{1}\"", "{1:2}", "[1 2]", "nul", "@"])
    func rejectsMalformed(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSON.parse(text) }
    }

    @Test func rejectsInvalidUTF8AndDeepNesting() {
        #expect(throws: JSONParseError.self) { try JSON.parse([0x22, 0xFF, 0x22]) }
        #expect(throws: JSONParseError.self) { try JSON.parse(String(repeating: "[", count: 10_000)) }
        #expect((try? JSON.parse(String(repeating: "[", count: 50) + String(repeating: "]", count: 50))) != nil)
    }

    @Test func integersStayExact() throws {
        #expect(try JSON.parse("9223372036854775807").int64Value == Int64.max)
        #expect(try JSON.parse("1e2").int64Value == 100)
        #expect(try JSON.parse("1.5").int64Value == nil)
        #expect(try JSON.parse("1e400").int64Value == nil)
        #expect(try JSON.parse("\"1\"").int64Value == nil)
        #expect(JSON.double(2.0).text == "2")
        #expect(JSON.double(.nan) == .null)
        #expect(JSON.double(0.25).text == "0.25")
    }

    @Test func accessorsAndLiterals() {
        let v: JSON = ["n": 1, "s": "x", "b": true, "z": nil, "a": [1, 2]]
        #expect(v["s"]?.stringValue == "x")
        #expect(v["b"]?.boolValue == true)
        #expect(v["z"]?.isNull == true)
        #expect(v["a"]?.arrayValue?.count == 2)
        #expect(v["missing"] == nil)
        #expect(JSON.string("x")["k"] == nil)
        #expect(v.objectValue?.count == 5)
        #expect(["null", "boolean", "number", "string", "array", "object"] == [JSON.null, .bool(true), .int(1), .string(""), .array([]), .object([])].map(\.typeName))
        #expect(JSON.optString(nil) == .null)
        #expect(JSON.array([1]) != JSON.array([2]))
        #expect(JSON.object([("a", 1)]) != JSON.object([("b", 1)]))
    }

    @Test func rfc3339ParsingChecksEveryField() {
        #expect(Timestamp.parse("2025-11-30T01:14:53.123Z")?.timeIntervalSince1970 == 1_764_465_293.123)
        #expect(Timestamp.parse("2025-11-30T10:14:53+09:00")?.timeIntervalSince1970 == 1_764_465_293)
        #expect(Timestamp.parse("2024-02-29T00:00:00-00:30")?.timeIntervalSince1970 == 1_709_166_600)
        #expect(Timestamp.parse("0001-01-01T00:00:00Z")?.timeIntervalSince1970 == -62_135_596_800)
        for bad in ["2026-02-30T00:00:00Z", "2025-02-29T00:00:00Z", "2026-11-29T23:14:53+99:00", "-2026-11-29T23:14:53Z",
                    "0000-01-01T00:00:00Z", "2026-11-29T24:00:00Z", "2026-11-29T23:60:00Z", "2026-11-29T23:14:53+0900",
                    "2026-11-29 23:14:53Z", "2026-11-29T23:14:53", "2026-11-29T23:14:53.Z", "2026-13-01T00:00:00Z", "yesterday"] {
            #expect(Timestamp.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func timestampsAreRFC3339UTC() {
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1_764_465_293.123)) == "2025-11-30T01:14:53.123Z")
    }
}

@Suite struct CronTests {
    let utc = TimeZone(identifier: "UTC")!
    func date(_ s: String) -> Date { ISO8601DateFormatter().date(from: s)! }

    @Test func everyFiveMinutes() throws {
        let c = try CronSchedule(parsing: "*/5 * * * *")
        let runs = c.nextRuns(after: date("2026-01-01T00:02:00Z"), count: 3, timeZone: utc)
        #expect(runs == [date("2026-01-01T00:05:00Z"), date("2026-01-01T00:10:00Z"), date("2026-01-01T00:15:00Z")])
    }

    @Test func macrosNamesRangesAndLists() throws {
        #expect(try CronSchedule(parsing: "@daily").nextRuns(after: Date(), count: 3, timeZone: utc) == CronSchedule(parsing: "0 0 * * *").nextRuns(after: Date(), count: 3, timeZone: utc))
        let c = try CronSchedule(parsing: "30 9-17/4 * JAN,jul MON-FRI")
        #expect(c.hours == [9, 13, 17])
        #expect(c.months == [1, 7])
        #expect(c.daysOfWeek == [1, 2, 3, 4, 5])
        #expect(try CronSchedule(parsing: "0 0 * * 7").daysOfWeek == [0])
        #expect(try CronSchedule(parsing: "5/15 * * * *").minutes == [5, 20, 35, 50])
        let weekly = try CronSchedule(parsing: "@weekly").nextRuns(after: date("2026-11-30T12:00:00Z"), count: 1, timeZone: utc)
        #expect(weekly == [date("2026-12-06T00:00:00Z")])
    }

    @Test func domOrDowWhenBothRestricted() throws {
        // The 13th or any Friday.
        let c = try CronSchedule(parsing: "0 0 13 * 5")
        let runs = c.nextRuns(after: date("2026-11-01T00:00:00Z"), count: 3, timeZone: utc)
        #expect(runs == [date("2026-11-06T00:00:00Z"), date("2026-11-13T00:00:00Z"), date("2026-11-20T00:00:00Z")])
    }

    @Test func leapDayIsFound() throws {
        let runs = try CronSchedule(parsing: "0 12 29 2 *").nextRuns(after: date("2026-03-01T00:00:00Z"), count: 1, timeZone: utc)
        #expect(runs == [date("2028-02-29T12:00:00Z")])
        #expect(try CronSchedule(parsing: "0 0 31 2 *").nextRuns(after: Date(), count: 1, timeZone: utc).isEmpty)
    }

    @Test func timeZoneAndSpringForwardGap() throws {
        let berlin = TimeZone(identifier: "Europe/Berlin")!
        let daily = try CronSchedule(parsing: "0 9 * * *")
        #expect(daily.nextRuns(after: date("2026-07-01T00:00:00Z"), count: 1, timeZone: berlin) == [date("2026-07-01T07:00:00Z")])
        // 02:30 does not exist on 2026-03-29 in Berlin: it fires right after the gap, once.
        let gap = try CronSchedule(parsing: "30 2 * * *").nextRuns(after: date("2026-03-28T12:00:00Z"), count: 2, timeZone: berlin)
        #expect(gap.count == 2)
        #expect(gap[0] == date("2026-03-29T01:30:00Z"))
        #expect(gap[1] == date("2026-03-30T00:30:00Z"))
    }

    /// nextRuns skips the times of `after`'s day well before it (CronSchedule.sameDayMarginMinutes); it must give what
    /// trying every time of the day gives, around every offset change of the year, in zones with 1 h, 2 h and 30 min
    /// shifts, a change at midnight and one of a whole day.
    @Test func theSameDayShortcutChangesNoAnswer() throws {
        let zones = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Antarctica/Troll", "America/Santiago",
                     "Asia/Kolkata", "Pacific/Apia", "America/Havana"]
        let expressions = ["* * * * *", "30 2 * * *", "0 * * * *", "*/7 1-4 * * *", "59 23 * * *", "0 0 * * *", "15,45 0-3 * * 0"]
        var checked = 0
        for name in zones {
            let tz = try #require(TimeZone(identifier: name))
            // Around each offset change in 2026 (and 2011 for Apia, which skipped 30 December that year).
            var changes: [Date] = []
            for start in [date("2026-01-01T00:00:00Z"), date("2011-12-01T00:00:00Z")] {
                var t = start
                while let c = tz.nextDaylightSavingTimeTransition(after: t), c < start.addingTimeInterval(366 * 86400) {
                    changes.append(c)
                    t = c
                }
            }
            if changes.isEmpty { changes = [date("2026-06-01T00:00:00Z")] }
            for change in changes {
                for step in stride(from: -30 * 3600.0, through: 30 * 3600.0, by: 53 * 60.0) {
                    let after = change.addingTimeInterval(step)
                    for e in expressions {
                        let c = try CronSchedule(parsing: e)
                        let fast = c.nextRuns(after: after, count: 2, timeZone: tz)
                        let all = c.nextRuns(after: after, count: 2, timeZone: tz, sameDayMargin: nil)
                        #expect(fast == all, "\(e) in \(name) after \(after)")
                        checked += 1
                    }
                }
            }
        }
        #expect(checked > 5000)
    }

    @Test(arguments: ["", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8",
                      "*/0 * * * *", "5-1 * * * *", "a * * * *", "@never", "1,,2 * * * *", "1/2/3 * * * *"])
    func rejectsBadExpressions(_ e: String) {
        #expect(throws: CronError.self) { try CronSchedule(parsing: e) }
    }
}

@Suite struct ConfigTests {
    @Test func defaultsAndEnvironment() throws {
        let c = try Config.load(environment: ["TSUBAME_POOL_WORKERS": "4", "TSUBAME_COOKIE_SECURE": "no"])
        #expect(c.int("TSUBAME_POOL_WORKERS") == 4)
        #expect(c.int("TSUBAME_WORKER_THREADS") == 8)
        #expect(c.bool("TSUBAME_COOKIE_SECURE") == false)
        #expect(c.octal("TSUBAME_FCGI_SOCKET_MODE") == 0o660)
        #expect(c.string("TSUBAME_FCGI_SOCKET_GROUP") == nil)
        #expect(c.dump().contains("TSUBAME_DATABASE_URL=(redacted)"))
        #expect(c.dump(revealSecrets: true).contains("TSUBAME_DATABASE_URL=postgresql:///tsubame"))
    }

    @Test func errorsNameTheSetting() {
        do {
            _ = try Config.load(environment: ["TSUBAME_POOL_WORKERS": "0", "TSUBAME_COOKIE_SECURE": "maybe", "TSUBAME_FCGI_SOCKET_MODE": "999",
                                              "TSUBAME_LOG_LEVEL": "loud", "TSUBAME_FCGI_SOCKET": ""])
            Issue.record("expected an error")
        } catch let e as ConfigError {
            let text = e.description
            for name in ["TSUBAME_POOL_WORKERS", "TSUBAME_COOKIE_SECURE", "TSUBAME_FCGI_SOCKET_MODE", "TSUBAME_LOG_LEVEL", "TSUBAME_FCGI_SOCKET:"] {
                #expect(text.contains(name))
            }
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test func fileAndSecretFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tsb-config-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("tsubame.env").path
        try "# comment\nTSUBAME_WORKER_THREADS=3\nTSUBAME_LOG_LEVEL=\"debug\"\n\n".write(toFile: file, atomically: true, encoding: .utf8)
        let secret = dir.appendingPathComponent("db").path
        try "postgresql://x@y/z\n".write(toFile: secret, atomically: true, encoding: .utf8)
        let c = try Config.load(environment: ["TSUBAME_CONFIG_FILE": file, "TSUBAME_DATABASE_URL_FILE": secret, "TSUBAME_WORKER_THREADS": "5"])
        #expect(c.int("TSUBAME_WORKER_THREADS") == 5)
        #expect(c.string("TSUBAME_LOG_LEVEL") == "debug")
        #expect(c.databaseURL == "postgresql://x@y/z")
        try "garbage line\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(throws: ConfigError.self) { try Config.load(environment: ["TSUBAME_CONFIG_FILE": file]) }
        #expect(throws: ConfigError.self) { try Config.load(environment: ["TSUBAME_CONFIG_FILE": dir.path + "/missing"]) }
        #expect(throws: ConfigError.self) { try Config.load(environment: ["TSUBAME_DATABASE_URL_FILE": dir.path + "/missing"]) }
    }

    @Test func rolesAreOrdered() {
        #expect(Role.viewer < Role.operator_)
        #expect(Role.operator_ < Role.admin)
        #expect(Role(rawValue: "operator") == .operator_)
    }

    @Test func logLevelsAndProblems() {
        #expect(LogLevel(name: "warn") == .warn)
        #expect(LogLevel(name: "nope") == nil)
        Log.minimum = .error
        Log.debug("hidden"); Log.info("hidden"); Log.warn("hidden")
        Log.minimum = .info
        let e = APIError.validation([FieldError("a", "bad")])
        #expect(e.json["errors"]?.arrayValue?.count == 1)
        #expect(APIError.tooManyRequests(retryAfter: 3, detail: "x").headers.first?.1 == "3")
        #expect(APIError.methodNotAllowed(["GET"]).headers.first?.0 == "Allow")
        #expect(APIError.internal.status == 500)
        #expect(APIError.notImplemented("x").status == 501)
    }
}

@Suite struct MetricsTests {
    @Test func requestStatsCountByRouteStatusAndLatency() {
        var s = RequestStats()
        s.record(route: 0, status: 200, seconds: 0.0004)
        s.record(route: 0, status: 204, seconds: 0.02)
        s.record(route: 0, status: 404, seconds: 30)
        s.record(route: 2, status: 503, seconds: 0.001)
        s.record(route: 999, status: 101, seconds: 0.5)  // clamped: the last route, the first class
        var t = RequestStats()
        t.add(s)
        t.add(s)
        let text = t.prometheus(routeNames: ["/a", "/b", "/c"])
        #expect(text.contains(#"tsubame_http_requests_total{route="/a",status="2xx"} 4"#))
        #expect(text.contains(#"tsubame_http_requests_total{route="/a",status="4xx"} 2"#))
        #expect(text.contains(#"tsubame_http_requests_total{route="/c",status="5xx"} 2"#))
        #expect(text.contains(#"tsubame_http_requests_total{route="other",status="2xx"} 2"#))
        #expect(!text.contains(#"route="/b""#))
        #expect(text.contains(#"tsubame_http_request_duration_seconds_bucket{route="/a",le="0.001"} 2"#))
        #expect(text.contains(#"tsubame_http_request_duration_seconds_bucket{route="/a",le="0.025"} 4"#))
        #expect(text.contains(#"tsubame_http_request_duration_seconds_bucket{route="/a",le="10.0"} 4"#))
        #expect(text.contains(#"tsubame_http_request_duration_seconds_bucket{route="/a",le="+Inf"} 6"#))
        #expect(text.contains(#"tsubame_http_request_duration_seconds_count{route="/a"} 6"#))
        #expect(text.contains(#"tsubame_http_request_duration_seconds_sum{route="/a"} 60.0408"#))
        #expect(RequestStats(words: [1, 2]) == RequestStats())
    }

    @Test func histogramsTravelAsJSON() throws {
        var h = Histogram()
        for v in [0.001, 0.02, 0.02, 3, 60] { h.observe(v) }
        #expect(h.count == 5)
        let back = Histogram(json: try JSON.parse(h.json.encoded()))
        #expect(back == h)
        #expect(Histogram(json: .object([("bounds", .array([.int(1)])), ("counts", .array([.int(1)])), ("sum", .int(0))])) == nil)
        #expect(Histogram(json: .null) == nil)
        let text = h.prometheus("x_seconds", labels: #"executor="e""#)
        #expect(text.contains(#"x_seconds_bucket{executor="e",le="0.005"} 1"#))
        #expect(text.contains(#"x_seconds_bucket{executor="e",le="0.025"} 3"#))
        #expect(text.contains(#"x_seconds_bucket{executor="e",le="+Inf"} 5"#))
        #expect(text.contains(#"x_seconds_count{executor="e"} 5"#))
        #expect(Histogram().prometheus("y", labels: "").contains(#"y_bucket{le="+Inf"} 0"#))
    }

    @Test func theScoreboardKeepsTheCountsOfRetiredWorkers() throws {
        let path = NSTemporaryDirectory() + "board-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let master = try Scoreboard(path: path, slots: 2, create: true)
        let worker = try Scoreboard(path: path, slots: 2, create: false)
        var s = RequestStats()
        s.record(route: 1, status: 200, seconds: 0.01)
        worker.writeStats(0, s)
        worker.writeStats(1, s)
        worker.write(0, .init(pid: 42, served: 7, busy: 1, waiting: 3))
        #expect(master.read(0) == .init(pid: 42, served: 7, busy: 1, waiting: 3))
        #expect(master.totalStats().counts[RequestStats.perRoute] == 2)
        master.retire(0)  // the worker in slot 0 died: its counts stay in the total
        #expect(master.readStats(0) == RequestStats())
        #expect(master.totalStats().counts[RequestStats.perRoute] == 2)
        worker.writeStats(0, s)  // its successor counts from zero
        #expect(worker.totalStats().counts[RequestStats.perRoute] == 3)
        master.writePool(.init(restarts: 1, recycled: 2, reloads: 3))
        #expect(worker.readPool() == .init(restarts: 1, recycled: 2, reloads: 3))
    }
}
