// SPDX-License-Identifier: MIT
// The notification outbox in PostgreSQL: what people see of a receiver, the
// trigger that makes deliveries, claim and retry, running_long, and the API
// (delivery log, send test notification).

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameHTTP
@testable import TsubamePostgres

@Suite(.serialized, .enabled(if: TestDB.enabled, "set TSUBAME_TEST_DATABASE_URL to run the PostgreSQL-backed tests"))
struct OutboxTests {
    let db: PGConnection
    let admin: Client
    let server: Int64

    init() throws {
        let url = try TestDB.sibling("notify")
        db = try TestDB.reset(url)
        try TestDB.addUser(db, "admin", role: "admin")
        admin = Client(try TestDB.makeApp(base: url))
        admin.login("admin")
        server = admin.post("/api/v1/servers", #"{"name":"s","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"}"#)
            .json["id"]?.int64Value ?? 0
    }

    func job(_ notify: String) -> Int64 {
        let r = admin.post("/api/v1/jobs", #"{"name":"j-\#(UUID().uuidString.prefix(8))","script":"true","server_ids":[\#(server)],"notify":\#(notify)}"#)
        #expect(r.status == 201, "\(r.text)")
        return r.json["id"]?.int64Value ?? 0
    }

    @Test(arguments: [
        ("email", "ops@example.com", "ops@example.com"),
        ("webhook", "https://hooks.example.com/a/b?token=x#frag", "https://hooks.example.com/a/b?***"),
        ("webhook", "http://user:pa:ss@h.example:8080/p", "http://***@h.example:8080/p"),
        ("webhook", "https://h.example", "https://h.example"),
        ("slack", "https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/***"),
        ("slack", "https://hooks.slack.com/", "https://hooks.slack.com/"),
        ("webhook", "not a url", "(hidden)"),
    ])
    func destinationsHideTokens(type: String, target: String, shown: String) throws {
        #expect(try Notifications.destination(db, type: type, target: target) == shown)
    }

    @Test func statusChangesMakeDeliveriesThatAreClaimedRetriedAndRecorded() throws {
        let j = job(#"[{"on":["started","failed"],"type":"webhook","url":"http://127.0.0.1:9/h","secret":"0123456789"},{"on":["succeeded"],"type":"email","to":"a@b.cd"}]"#)
        let run = admin.post("/api/v1/jobs/\(j)/run")
        let e = run.json["id"]?.int64Value ?? 0
        #expect(run.status == 202)
        try db.query("UPDATE executions SET status = 'running', started_at = now() WHERE id = $1", [e])
        try db.query("UPDATE executions SET status = 'failed', finished_at = now(), exit_code = 2 WHERE id = $1", [e])
        let rows = try db.query("SELECT event, type, status, destination FROM notification_deliveries WHERE execution_id = $1 ORDER BY id", [e])
        #expect(rows.map { $0.string("event") } == ["started", "failed"])
        #expect(rows.allSatisfy { $0.string("status") == "pending" && $0.string("type") == "webhook" })

        let claimed = try Notifications.claim(db, limit: 10, leaseSeconds: 60)
        #expect(claimed.count == 2 && claimed.allSatisfy { $0.attempt == 1 && $0.jobID == j && $0.executionID == e })
        #expect(try Notifications.claim(db, limit: 10, leaseSeconds: 60).isEmpty, "claimed ones are leased")
        let failed = claimed[1]
        #expect(failed.execution?["status"] == "failed" && failed.execution?["exit_code"] == 2)
        #expect(failed.execution?["targets"]?["total"] == 1)
        #expect(failed.item["secret_sealed"]?.stringValue != nil, "the delivery keeps the sealed secret to sign with")
        try Notifications.record(db, id: claimed[0].id, ok: true, statusCode: 204, error: nil, retryInSeconds: nil)
        try Notifications.record(db, id: failed.id, ok: false, statusCode: 500, error: "HTTP 500", retryInSeconds: 0)
        let again = try Notifications.claim(db, limit: 10, leaseSeconds: 60)
        #expect(again.map(\.id) == [failed.id] && again[0].attempt == 2)
        try Notifications.record(db, id: failed.id, ok: false, statusCode: nil, error: "refused", retryInSeconds: nil)

        let log = admin.get("/api/v1/notifications?execution_id=\(e)")
        #expect(log.status == 200)
        let items = log.json["items"]?.arrayValue ?? []
        #expect(items.map { $0["status"]?.stringValue ?? "" } == ["failed", "sent"])
        #expect(items[0]["attempts"] == 2 && items[0]["last_error"] == "refused" && items[0]["next_attempt_at"] == .null)
        #expect(items[1]["response_code"] == 204 && items[1]["sent_at"]?.stringValue != nil)
        #expect(admin.get("/api/v1/notifications?status=nope").status == 400)
        #expect(admin.get("/api/v1/notifications?job_id=-1").status == 400)
    }

    @Test func runningLongFiresOncePastFactorTimesTheMedian() throws {
        let j = job(#"[{"on":["running_long"],"type":"slack","url":"https://hooks.slack.com/services/A/B/C","factor":2}]"#)
        func execution(status: String, startedAgo: Double, seconds: Double?) throws -> Int64 {
            let e = admin.post("/api/v1/jobs/\(j)/run").json["id"]?.int64Value ?? 0
            try db.query("""
                UPDATE executions SET status = $2, started_at = now() - make_interval(secs => $3),
                       finished_at = CASE WHEN $4::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => $3) + make_interval(secs => $4::float8) END
                WHERE id = $1
                """, [e, status, startedAgo, seconds])
            return e
        }
        let slow = try execution(status: "running", startedAgo: 25, seconds: nil)
        _ = try execution(status: "succeeded", startedAgo: 100, seconds: 10)
        _ = try execution(status: "succeeded", startedAgo: 90, seconds: 10)
        #expect(try Notifications.findRunningLong(db) == 0, "two runs are too few for a median")
        _ = try execution(status: "succeeded", startedAgo: 80, seconds: 12)
        _ = try execution(status: "failed", startedAgo: 70, seconds: 1)
        #expect(try Notifications.findRunningLong(db) == 1)
        #expect(try Notifications.findRunningLong(db) == 0, "once per execution and receiver")
        let row = try db.query("SELECT execution_id, destination, detail::text AS detail FROM notification_deliveries WHERE event = 'running_long'")
        #expect(row.count == 1 && row[0].int64("execution_id") == slow)
        #expect(row[0].string("destination") == "https://hooks.slack.com/***")
        let detail = try JSON.parse(row[0].string("detail"))
        #expect(detail["median_ms"] == 10000 && detail["factor"] == 2)
    }

    @Test func testNotificationsAreRecordedAndSecretsStayHidden() throws {
        let j = job(#"[{"on":["failed"],"type":"webhook","url":"http://127.0.0.1:9/a?k=v","secret":"0123456789"}]"#)
        let got = admin.get("/api/v1/jobs/\(j)")
        #expect(got.json["notify"]?.arrayValue?.first?["secret_set"] == true)
        #expect(!got.text.contains("secret_sealed") && !got.text.contains("0123456789"))
        let r = admin.post("/api/v1/jobs/\(j)/notify-test")
        #expect(r.status == 200, "\(r.text)")
        let result = r.json["results"]?.arrayValue?.first
        #expect(result?["ok"] == false && result?["destination"] == "http://127.0.0.1:9/a?***")
        #expect((result?["error"]?.stringValue ?? "").contains("connect"))
        let mail = admin.post("/api/v1/jobs/\(j)/notify-test", #"{"item":{"on":["failed"],"type":"email","to":"a@b.cd"}}"#)
        #expect(mail.json["results"]?.arrayValue?.first?["error"]?.stringValue?.hasPrefix("TSUBAME_SMTP_URL is not set") == true)
        let log = admin.get("/api/v1/notifications?job_id=\(j)&event=test").json["items"]?.arrayValue ?? []
        #expect(log.count == 2 && log.allSatisfy { $0["status"] == "failed" && $0["execution_id"] == .null })
        #expect(try db.query("SELECT count(*) AS n FROM notification_deliveries WHERE item::text LIKE '%secret%'")[0].int("n") == 0)
        let bare = job("[]")
        #expect(admin.post("/api/v1/jobs/\(bare)/notify-test").status == 409)
        #expect(admin.post("/api/v1/jobs/\(bare)/notify-test", #"{"item":{"type":"email"}}"#).status == 422)
    }
}
