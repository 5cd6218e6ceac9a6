// SPDX-License-Identifier: MIT
// The executor's orchestration against a real PostgreSQL, with a scripted
// stand-in for SSH (the SSH engine has its own tests against real sshd).

import Foundation
import Testing
@testable import TsubameCore
@testable import TsubameCrypto
@testable import TsubameExecutor
@testable import TsubameHTTP
@testable import TsubamePostgres
@testable import TsubameSSH

/// Plays a scripted run for each submitted target, from its own thread.
final class FakeRunner: TargetRunner, @unchecked Sendable {
    var onEvent: (@Sendable (SSHEvent) -> Void)?
    let lock = NSLock()
    var submitted: [SSHTarget] = []
    var cancelled: Set<Int64> = []
    /// What each target does: output pieces then an outcome; `hang` waits for cancel.
    var script: @Sendable (SSHTarget) -> (output: [(SSHStream, String)], outcome: SSHOutcome, hang: Bool) = { _ in ([], .exited(0), false) }

    func submit(_ target: SSHTarget) {
        lock.lock(); submitted.append(target); lock.unlock()
        let plan = script(target)
        Thread.detachNewThread { [self] in
            onEvent?(.hostKey(id: target.id, algorithm: "ssh-ed25519", fingerprint: "SHA256:fake", firstUse: target.pinnedFingerprint == nil))
            onEvent?(.started(id: target.id, connectMs: 1))
            for (stream, text) in plan.output { onEvent?(.output(id: target.id, stream: stream, bytes: Array(text.utf8))) }
            if plan.hang {
                for _ in 0..<500 where !isCancelled(target.id) { usleep(10_000) }
                onEvent?(.finished(id: target.id, outcome: .cancelled, durationMs: 5))
            } else {
                onEvent?(.finished(id: target.id, outcome: plan.outcome, durationMs: 5))
            }
        }
    }
    func cancel(id: Int64) { lock.lock(); cancelled.insert(id); lock.unlock() }
    func isCancelled(_ id: Int64) -> Bool { lock.lock(); defer { lock.unlock() }; return cancelled.contains(id) }
}

@Suite(.serialized, .enabled(if: TestDB.enabled, "set TSUBAME_TEST_DATABASE_URL to run the PostgreSQL-backed tests"))
struct ExecutorTests {
    let db: PGConnection
    let app: App
    let admin: Client
    let url: String

    init() throws {
        url = try TestDB.sibling("exec")
        db = try TestDB.reset(url)
        try TestDB.addUser(db, "admin", role: "admin")
        app = try TestDB.makeApp(base: url)
        admin = Client(app)
        admin.login("admin")
    }

    func start(_ runner: FakeRunner, lease: Int = 30, outputCapBytes: Int? = nil, scheduleTickSeconds: Double? = nil) -> Executor {
        var s = ExecutorSettings(id: "test-exec-\(UUID().uuidString.prefix(6))", databaseURL: url)
        if let scheduleTickSeconds { s.scheduleTickSeconds = scheduleTickSeconds }
        s.pollSeconds = 0.1
        s.heartbeatSeconds = 0.2
        s.leaseSeconds = lease
        s.flushInterval = 0.01
        if let outputCapBytes { s.outputCapBytes = outputCapBytes }
        let e = Executor(settings: s, box: app.box)
        runner.onEvent = { e.handle($0) }
        e.start(runner: runner)
        return e
    }

    func waitFinished(_ id: Int64, timeout: Double = 10) -> JSON {
        let deadline = Date().addingTimeInterval(timeout)
        var last: JSON = .null
        while Date() < deadline {
            last = admin.get("/api/v1/executions/\(id)").json
            if let s = last["status"]?.stringValue, !["queued", "running"].contains(s) { return last }
            usleep(20_000)
        }
        return last
    }

    func job(_ body: String) -> Int64 {
        let s = admin.post("/api/v1/servers", #"{"name":"srv-\#(UUID().uuidString.prefix(6))","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"}"#)
        let sid = s.json["id"]?.int64Value ?? 0
        let r = admin.post("/api/v1/jobs", body.replacingOccurrences(of: "SERVER", with: String(sid)))
        #expect(r.status == 201, "\(r.text)")
        return r.json["id"]?.int64Value ?? 0
    }

    @Test func runsTargetsMasksSecretsAndRecordsResults() throws {
        let runner = FakeRunner()
        runner.script = { _ in ([(.stdout, "token=hun"), (.stdout, "ter2 ok\n"), (.stderr, "warn é\n")], .exited(0), false) }
        let e = start(runner)
        defer { e.stop() }
        let jobID = job(#"{"name":"masked","script":"echo","server_ids":[SERVER],"env":{"A":"1"},"secret_env":{"TOKEN":"hunter2"}}"#)
        let run = admin.post("/api/v1/jobs/\(jobID)/run")
        let id = run.json["id"]?.int64Value ?? 0
        let done = waitFinished(id)
        #expect(done["status"] == "succeeded")
        #expect(done["exit_code"] == 0)
        let health = Client(app).get("/api/health").json
        #expect(health["executors"]?.arrayValue?.contains { $0["id"]?.stringValue == e.settings.id } == true)
        let submitted = runner.submitted.first
        #expect(submitted?.environment.contains { $0 == ("TOKEN", "hunter2") } == true)
        #expect(submitted?.environment.contains { $0 == ("A", "1") } == true)
        if case let .password(pw)? = submitted?.auth { #expect(pw == "pw") } else { Issue.record("expected password auth") }
        let text = admin.get("/api/v1/executions/\(id)/log.txt").text
        let chunks0 = admin.get("/api/v1/executions/\(id)/log").json["chunks"]?.arrayValue ?? []
        func stream(_ name: String) -> String { chunks0.filter { $0["stream"]?.stringValue == name }.compactMap { $0["data"]?.stringValue }.joined() }
        #expect(stream("stdout") == "token=*** ok\n")
        #expect(stream("stderr") == "warn é\n")
        #expect(!text.contains("hunter2") && !text.contains("hun\n"))
        #expect(text.contains("trusted on first use") && text.contains("exit code 0"))
        #expect(admin.get("/api/v1/servers/\(submitted?.id ?? 0)").status >= 200)
        let chunks = admin.get("/api/v1/executions/\(id)/log").json["chunks"]?.arrayValue ?? []
        let seqs = chunks.compactMap { $0["seq"]?.int64Value }
        #expect(seqs == Array(1...Int64(seqs.count)))
        #expect(Set(chunks.compactMap { $0["stream"]?.stringValue }) == ["stdout", "stderr", "system"])
        // The heartbeat tells /metrics what this executor did: one target, one SSH connect of 1 ms; the finished run and
        // its bytes are counted by the database.
        try e.heartbeat(db)
        let metrics = Client(app).get("/metrics").text
        #expect(metrics.contains("tsubame_executor_targets_total{executor=\"\(e.settings.id)\"} 1"), "\(metrics)")
        #expect(metrics.contains("tsubame_ssh_connect_seconds_bucket{executor=\"\(e.settings.id)\",le=\"0.005\"} 1"))
        #expect(metrics.contains("tsubame_executor_up{executor=\"\(e.settings.id)\"} 1"))
        #expect(metrics.contains(#"tsubame_executions_finished_total{status="succeeded"} 1"#))
        #expect(!metrics.contains("tsubame_log_bytes_total 0\n"))
    }

    @Test func theExecutorFiresADueScheduleAndRunsIt() throws {
        let runner = FakeRunner()
        let e = start(runner)
        defer { e.stop() }
        let jobID = job(#"{"name":"every-minute","script":"true","server_ids":[SERVER],"schedule":"* * * * *"}"#)
        // Due now (as if its minute had just come): the executor's next tick fires it.
        try db.query("UPDATE jobs SET next_run_at = date_trunc('second', now()) WHERE id = $1", [jobID])
        let deadline = Date().addingTimeInterval(5)
        var runs: [PGRow] = []
        while runs.isEmpty && Date() < deadline {
            runs = try db.query("SELECT id FROM executions WHERE job_id = $1 AND trigger = 'schedule' AND schedule_slot IS NOT NULL", [jobID])
            usleep(50_000)
        }
        // (One more may come if a minute boundary passes meanwhile: a new slot.)
        #expect(runs.count >= 1)
        #expect(waitFinished(runs.first?.int64("id") ?? 0)["status"] == "succeeded")
        let next = try db.query("""
            SELECT j.next_run_at > e.schedule_slot AS later FROM jobs j JOIN executions e ON e.job_id = j.id WHERE e.id = $1
            """, [runs.first?.int64("id") ?? 0])
        #expect(next.first?.bool("later") == true)
    }

    @Test func theExecutorWakesForTheNextSlotRatherThanAfterItsTickInterval() throws {
        let runner = FakeRunner()
        let jobID = job(#"{"name":"soon","script":"true","server_ids":[SERVER],"schedule":"* * * * *"}"#)
        // A slot 1.5 s ahead (the tick fires next_run_at as it stands); the executor ticks only every 30 s otherwise.
        try db.query("UPDATE jobs SET next_run_at = date_trunc('milliseconds', now()) + interval '1.5 seconds' WHERE id = $1", [jobID])
        let e = start(runner, scheduleTickSeconds: 30)
        defer { e.stop() }
        let deadline = Date().addingTimeInterval(6)
        var lag: [PGRow] = []
        while lag.isEmpty && Date() < deadline {
            lag = try db.query("""
                SELECT extract(epoch FROM created_at - schedule_slot) AS s FROM executions WHERE job_id = $1 AND trigger = 'schedule'
                """, [jobID])
            usleep(20_000)
        }
        let seconds = lag.first.flatMap { Double($0.string("s")) }
        #expect(seconds != nil && seconds! >= 0 && seconds! < 1, "created \(seconds.map { String($0) } ?? "never") s after its slot")
    }

    @Test func failuresRetryThenFail() throws {
        let runner = FakeRunner()
        runner.script = { _ in ([(.stderr, "boom\n")], .exited(3), false) }
        let e = start(runner)
        defer { e.stop() }
        let jobID = job(#"{"name":"flaky","script":"false","server_ids":[SERVER],"retries":1}"#)
        let id = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        let done = waitFinished(id, timeout: 15)
        #expect(done["status"] == "failed")
        #expect(done["exit_code"] == 3)
        #expect(done["targets"]?.arrayValue?.first?["attempt"] == 2)
        #expect(runner.submitted.count == 2)
        #expect(admin.get("/api/v1/executions/\(id)/log.txt").text.contains("retrying (attempt 2 of 2)"))
    }

    @Test func cancelStopsARunningTarget() throws {
        let runner = FakeRunner()
        runner.script = { _ in ([(.stdout, "started\n")], .exited(0), true) }
        let e = start(runner)
        defer { e.stop() }
        let jobID = job(#"{"name":"long","script":"sleep 100","server_ids":[SERVER]}"#)
        let id = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        for _ in 0..<200 where runner.submitted.isEmpty { usleep(10_000) }
        usleep(100_000)
        let t0 = Date()
        #expect(admin.post("/api/v1/executions/\(id)/cancel").status == 202)
        let done = waitFinished(id)
        #expect(done["status"] == "cancelled")
        #expect(Date().timeIntervalSince(t0) < 2)
        #expect(admin.get("/api/v1/executions/\(id)/log.txt").text.contains("cancelled after"))
    }

    /// Output of `count` reads of `size` bytes each: numbered lines, a secret cut in two by every read boundary.
    static func bigOutput(count: Int, size: Int, secret: String) -> [(SSHStream, String)] {
        var text = ""
        var n = 0
        while text.utf8.count < count * size {
            text += String(format: "line %07d 0123456789abcdef é %@\n", n, n % 97 == 0 ? secret : "-")
            n += 1
        }
        let bytes = Array(text.utf8.prefix(count * size))
        // Cut on UTF-8 boundaries only in the String conversion: FakeRunner sends each piece's bytes as they are.
        var out: [(SSHStream, String)] = []
        var i = 0
        while i < bytes.count {
            var j = min(i + size, bytes.count)
            while j < bytes.count, bytes[j] & 0xC0 == 0x80 { j += 1 }
            out.append((.stdout, String(decoding: bytes[i..<j], as: UTF8.self)))
            i = j
        }
        return out
    }

    @Test func largeOutputIsStoredCompletelyMaskedInBoundedChunks() throws {
        let runner = FakeRunner()
        let plan = ExecutorTests.bigOutput(count: 200, size: 16 << 10, secret: "hunter2")  // 3.2 MB
        let expected = plan.map(\.1).joined().replacingOccurrences(of: "hunter2", with: "***")
        runner.script = { _ in (plan, .exited(0), false) }
        let e = start(runner)
        defer { e.stop() }
        let jobID = job(#"{"name":"big","script":"cat big","server_ids":[SERVER],"secret_env":{"TOKEN":"hunter2"}}"#)
        let id = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        let done = waitFinished(id, timeout: 30)
        #expect(done["status"] == "succeeded")
        #expect(done["output_truncated"] == false)
        let rows = try db.query("""
            SELECT coalesce(string_agg(data, '' ORDER BY seq), '') AS text, count(*) AS n, max(octet_length(data)) AS biggest,
                   (SELECT output_bytes FROM executions WHERE id = $1) AS output_bytes,
                   (SELECT last_seq FROM executions WHERE id = $1) AS last_seq,
                   (SELECT count(*) FROM log_chunks WHERE execution_id = $1) AS all_chunks,
                   (SELECT max(seq) FROM log_chunks WHERE execution_id = $1) AS max_seq
            FROM log_chunks WHERE execution_id = $1 AND stream = 'stdout'
            """, [id])
        let r = try #require(rows.first)
        #expect(r.string("text") == expected)
        #expect(r.int("output_bytes") == expected.utf8.count)
        // Chunks of about 64 KiB (consecutive reads merged, never far past it), seq 1...n without a gap.
        #expect(r.int("biggest") <= 64 << 10 + 16 << 10 + 8)
        #expect(r.int("n") >= expected.utf8.count / (80 << 10))
        #expect(r.int("all_chunks") == r.int("last_seq") && r.int("max_seq") == r.int("last_seq"))
        #expect(!admin.get("/api/v1/executions/\(id)/log.txt").text.contains("hunter2"))
    }

    @Test func outputCapKeepsTheFirstBytesAndSaysSo() throws {
        let runner = FakeRunner()
        let plan = ExecutorTests.bigOutput(count: 48, size: 64 << 10, secret: "x")  // 3 MiB
        runner.script = { _ in (plan + [(.stderr, "late\n")], .exited(0), false) }
        let e = start(runner, outputCapBytes: 1 << 20)
        defer { e.stop() }
        let jobID = job(#"{"name":"capped","script":"cat big","server_ids":[SERVER]}"#)
        let id = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        let done = waitFinished(id, timeout: 30)
        #expect(done["status"] == "succeeded")
        #expect(done["output_truncated"] == true)
        let kept = try db.query("""
            SELECT coalesce(sum(octet_length(data)), 0) AS bytes FROM log_chunks WHERE execution_id = $1 AND stream <> 'system'
            """, [id])[0].int("bytes")
        // Exactly the cap's worth, less at most a UTF-8 sequence cut off at the end.
        #expect(kept <= 1 << 20 && kept >= (1 << 20) - 3)
        #expect(plan.map(\.1).joined().utf8.starts(with: try db.query("""
            SELECT string_agg(data, '' ORDER BY seq) AS t FROM log_chunks WHERE execution_id = $1 AND stream = 'stdout'
            """, [id])[0].string("t").utf8))
        let lines = try db.query("SELECT data FROM log_chunks WHERE execution_id = $1 AND stream = 'system' AND data LIKE 'output limit%'", [id])
        #expect(lines.map { $0.string("data") } == ["output limit of 1 MiB reached: further output of this execution is dropped (the job keeps running)\n"])
        #expect(admin.get("/api/v1/executions/\(id)/log.txt").text.contains("exit code 0"))
    }

    @Test func appendLogFencesEachPieceAndKeepsSeqWithoutGaps() throws {
        let jobID = job(#"{"name":"fence","script":"true","server_ids":[SERVER]}"#)
        let id = try #require(try Queue.enqueue(db, jobID: jobID, trigger: "api", userID: nil, username: nil, envOverrides: nil))
        let claimed = try Queue.claim(db, executor: "fence-a", limit: 10, leaseSeconds: 30)
        let t = try #require(claimed.first { $0.executionID == id })
        let tricky = "q\"uote \\back {brace},comma NULL é😀\n"
        func piece(_ text: String, _ target: Int64?, _ stream: String = "stdout") -> LogPiece {
            LogPiece(serverID: t.serverID, stream: stream, data: text, targetID: target)
        }
        // Another executor: only the unfenced piece is kept.
        #expect(try Queue.appendLog(db, executionID: id, executor: "fence-b", pieces: [piece("a", t.id), piece("sys\n", nil, "system"), piece("b", t.id)]))
        // Nothing kept: false, and no seq used.
        #expect(try !Queue.appendLog(db, executionID: id, executor: "fence-b", pieces: [piece("c", t.id)]))
        #expect(try !Queue.appendLog(db, executionID: id, executor: nil, pieces: [piece("c", t.id)]))
        // The holder: kept, except a piece of a target it does not hold.
        #expect(try Queue.appendLog(db, executionID: id, executor: "fence-a", pieces: [piece("", t.id), piece(tricky, t.id, "stderr"), piece("zz", 999_999_999), piece("d", t.id)]))
        let rows = try db.query("SELECT seq, stream, data FROM log_chunks WHERE execution_id = $1 ORDER BY seq", [id])
        #expect(rows.map { $0.int64("seq") } == [1, 2, 3, 4])
        #expect(rows.map { $0.string("data") } == ["sys\n", "", tricky, "d"])
        let e = try db.query("SELECT last_seq, output_bytes, output_truncated FROM executions WHERE id = $1", [id])[0]
        #expect(e.int64("last_seq") == 4 && e.int("output_bytes") == tricky.utf8.count + 1 && !e.bool("output_truncated"))
        #expect(try Queue.appendLog(db, executionID: id, executor: "fence-a", pieces: [piece("e", t.id)], truncated: true))
        #expect(try db.query("SELECT output_truncated FROM executions WHERE id = $1", [id])[0].bool("output_truncated"))
    }

    @Test func twoExecutorsFinishingTheLastTwoTargetsAtOnceFinalizeTheExecution() throws {
        let one = admin.post("/api/v1/servers", #"{"name":"race-1","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"}"#)
        let two = admin.post("/api/v1/servers", #"{"name":"race-2","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"}"#)
        let ids = [one, two].compactMap { $0.json["id"]?.int64Value }
        let jobID = admin.post("/api/v1/jobs", #"{"name":"race","script":"true","server_ids":[\#(ids[0]),\#(ids[1])]}"#).json["id"]?.int64Value ?? 0
        let id = try #require(try Queue.enqueue(db, jobID: jobID, trigger: "api", userID: nil, username: nil, envOverrides: nil))
        let a = try Queue.claim(db, executor: "race-a", limit: 1, leaseSeconds: 30)
        let b = try Queue.claim(db, executor: "race-b", limit: 1, leaseSeconds: 30)
        #expect(a.count == 1 && b.count == 1)
        // race-a finishes its target and has not committed yet when race-b finishes the other one.
        let other = try PGConnection(url)
        try other.execute("BEGIN")
        try other.query("UPDATE execution_targets SET status = 'succeeded', exit_code = 0, finished_at = now() WHERE id = $1", [a[0].id])
        try Queue.finalizeIfDone(other, executionID: id)
        let finished = DispatchSemaphore(value: 0)
        let url = self.url
        let target = b[0].id
        Thread.detachNewThread {
            if let conn = try? PGConnection(url) {
                _ = try? Queue.finishTarget(conn, targetID: target, executor: "race-b", status: "succeeded", exitCode: 0, error: nil,
                                            retryDelaySeconds: nil)
            }
            finished.signal()
        }
        usleep(300_000)
        try other.execute("COMMIT")
        #expect(finished.wait(timeout: .now() + 10) == .success)
        let e = try db.query("SELECT status, exit_code FROM executions WHERE id = $1", [id])[0]
        #expect(e.string("status") == "succeeded" && e.int("exit_code") == 0)
    }

    /// Makes inserts into log_chunks fail the way a full disk does (SQLSTATE 53100) while `test_disk_full.is_full`.
    func simulateDiskFull() throws {
        try db.execute("""
            CREATE TABLE IF NOT EXISTS test_disk_full (is_full boolean NOT NULL);
            TRUNCATE test_disk_full; INSERT INTO test_disk_full VALUES (false);
            CREATE OR REPLACE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF (SELECT is_full FROM test_disk_full) THEN
                    RAISE EXCEPTION 'could not extend file "pg_tblspc/1/2/3": No space left on device'
                        USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
                END IF;
                RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS test_disk_full ON log_chunks;
            CREATE TRIGGER test_disk_full BEFORE INSERT ON log_chunks FOR EACH ROW EXECUTE FUNCTION test_disk_full();
            """)
    }

    func dropDiskFull() {
        _ = try? db.execute("DROP TRIGGER IF EXISTS test_disk_full ON log_chunks; DROP FUNCTION IF EXISTS test_disk_full(); DROP TABLE IF EXISTS test_disk_full")
    }

    func setDiskFull(_ full: Bool) throws { try db.query("UPDATE test_disk_full SET is_full = $1", [full]) }

    @Test func aFullDiskFailsTheTargetWithAClearErrorAndKeepsWhatWasStored() throws {
        try simulateDiskFull()
        defer { dropDiskFull() }
        let runner = FakeRunner()
        runner.script = { _ in ([(.stdout, "stored before\n")], .exited(0), true) }
        let e = start(runner)
        defer { e.stop() }
        let jobID = job(#"{"name":"disk-full","script":"yes","server_ids":[SERVER]}"#)
        let id = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        func stored() throws -> [String] {
            try db.query("SELECT data FROM log_chunks WHERE execution_id = $1 ORDER BY seq", [id]).map { $0.string("data") }
        }
        for _ in 0..<500 where (try? stored().contains("stored before\n")) != true { usleep(10_000) }
        #expect(try stored().contains("stored before\n"))
        let target = try #require(runner.submitted.first)
        try setDiskFull(true)
        // More output, which cannot be stored: the target is stopped (the fake runner then says cancelled) and fails.
        e.handle(.output(id: target.id, stream: .stdout, bytes: Array("lost\n".utf8)))
        let done = waitFinished(id)
        #expect(done["status"] == "failed")
        let t = try #require(done["targets"]?.arrayValue?.first)
        #expect(t["status"] == "failed")
        let error = t["error"]?.stringValue ?? ""
        #expect(error.hasPrefix("output could not be stored: the database server is out of disk space (could not extend file"), "\(error)")
        #expect(error.hasSuffix("No space left on device); the target was stopped and its output from then on is lost"), "\(error)")
        #expect(runner.isCancelled(target.id))
        // What was stored before stays, with seq 1..n; nothing of the lost output.
        let before = try stored()
        #expect(before.contains("stored before\n") && !before.contains("lost\n"))
        let seqs = try db.query("SELECT seq FROM log_chunks WHERE execution_id = $1 ORDER BY seq", [id]).map { $0.int64("seq") }
        #expect(seqs == Array(1...Int64(seqs.count)))
        #expect(try db.query("SELECT last_seq FROM executions WHERE id = $1", [id])[0].int64("last_seq") == Int64(seqs.count))

        // The executor goes on: with room again, the next run stores everything and succeeds.
        try setDiskFull(false)
        runner.script = { _ in ([(.stdout, "room again\n")], .exited(0), false) }
        let next = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        #expect(waitFinished(next)["status"] == "succeeded")
        #expect(admin.get("/api/v1/executions/\(next)/log.txt").text.contains("room again\n"))
        #expect(e.activeCount == 0)
    }

    @Test func aFullDiskDoesNotBlockCancelReapOrTheAPI() throws {
        try simulateDiskFull()
        defer { dropDiskFull() }
        let jobID = job(#"{"name":"full-cancel","script":"true","server_ids":[SERVER]}"#)
        let queued = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        let lost = try #require(try Queue.enqueue(db, jobID: jobID, trigger: "api", userID: nil, username: nil, envOverrides: nil))
        try db.query("""
            UPDATE execution_targets SET status = 'running', executor_id = 'gone', attempt = 1, started_at = now(),
                   lease_expires_at = now() - interval '1 second' WHERE execution_id = $1
            """, [lost])
        try db.query("UPDATE executions SET status = 'running' WHERE id = $1", [lost])
        try setDiskFull(true)
        // Cancel of a queued run: done, without its "cancelled before it started" line.
        #expect(admin.post("/api/v1/executions/\(queued)/cancel").status == 202)
        #expect(admin.get("/api/v1/executions/\(queued)").json["status"] == "cancelled")
        // The reaper fails a lost executor's target all the same.
        #expect(try Queue.reap(db) == 1)
        let reaped = admin.get("/api/v1/executions/\(lost)").json
        #expect(reaped["status"] == "failed")
        #expect(reaped["targets"]?.arrayValue?.first?["error"]?.stringValue?.contains("(gone) stopped heartbeating") == true)
        #expect(try db.query("SELECT count(*) AS n FROM log_chunks WHERE execution_id IN ($1, $2)", [queued, lost])[0].int("n") == 0)
        // A change the database has no room for is a clear 503, not a 500.
        try db.execute("CREATE TRIGGER test_disk_full_servers BEFORE INSERT ON servers FOR EACH ROW EXECUTE FUNCTION test_disk_full()")
        defer { _ = try? db.execute("DROP TRIGGER IF EXISTS test_disk_full_servers ON servers") }
        let r = admin.post("/api/v1/servers", #"{"name":"no-room","host":"127.0.0.1","username":"u","auth_method":"password","password":"pw"}"#)
        #expect(r.status == 503)
        #expect(r.json["detail"]?.stringValue?.contains("out of disk space") == true)
        // With room again, the lines are written as before.
        try setDiskFull(false)
        let again = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        #expect(admin.post("/api/v1/executions/\(again)/cancel").status == 202)
        #expect(admin.get("/api/v1/executions/\(again)/log.txt").text.contains("cancelled before it started"))
    }

    @Test func aResultWrittenAgainAfterADatabaseErrorHasOneLastLine() throws {
        // The first attempt to record the result fails after the last line was stored: the retry must not store it again.
        try db.execute("""
            DROP SEQUENCE IF EXISTS test_fail_once; CREATE SEQUENCE test_fail_once;
            CREATE OR REPLACE FUNCTION test_fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                -- A sequence: its count survives the rollback of the failed transaction.
                IF NEW.status = 'succeeded' AND OLD.status = 'running' AND nextval('test_fail_once') = 1 THEN
                    RAISE EXCEPTION 'try again' USING ERRCODE = 'serialization_failure';
                END IF;
                RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS test_fail_once ON execution_targets;
            CREATE TRIGGER test_fail_once BEFORE UPDATE ON execution_targets FOR EACH ROW EXECUTE FUNCTION test_fail_once();
            """)
        defer {
            _ = try? db.execute("DROP TRIGGER IF EXISTS test_fail_once ON execution_targets; DROP FUNCTION IF EXISTS test_fail_once(); DROP SEQUENCE IF EXISTS test_fail_once")
        }
        let runner = FakeRunner()
        runner.script = { _ in ([(.stdout, "once\n")], .exited(0), false) }
        let e = start(runner)
        defer { e.stop() }
        let jobID = job(#"{"name":"fail-once","script":"true","server_ids":[SERVER]}"#)
        let id = admin.post("/api/v1/jobs/\(jobID)/run").json["id"]?.int64Value ?? 0
        #expect(waitFinished(id)["status"] == "succeeded")
        #expect(try db.query("SELECT last_value FROM test_fail_once")[0].int("last_value") >= 2)  // it did fail once
        let lines = try db.query("SELECT data FROM log_chunks WHERE execution_id = $1 AND stream = 'system' ORDER BY seq", [id])
            .map { $0.string("data") }
        #expect(lines.filter { $0.hasPrefix("exit code 0") }.count == 1, "\(lines)")
        #expect(lines.filter { $0.hasPrefix("connected to") }.count == 1, "\(lines)")
    }

    @Test func aTransactionLeftOpenByACutOffExecutorDoesNotStopTheReaper() throws {
        #expect(Executor.sessionSettings(leaseSeconds: 30).map(\.value) == ["10000ms"])
        #expect(Executor.sessionSettings(leaseSeconds: 3).map(\.value) == ["1000ms"])
        let jobID = job(#"{"name":"cut-off","script":"true","server_ids":[SERVER]}"#)
        let id = try #require(try Queue.enqueue(db, jobID: jobID, trigger: "api", userID: nil, username: nil, envOverrides: nil))
        #expect(try Queue.claim(db, executor: "cut-off", limit: 1, leaseSeconds: 1).count == 1)
        // The cut-off executor was finishing the target: it holds the execution's row lock, and then goes quiet.
        let cutOff = try PGConnection(url, settings: Executor.sessionSettings(leaseSeconds: 3))
        #expect(try cutOff.query("SHOW idle_in_transaction_session_timeout").first?.string("idle_in_transaction_session_timeout") == "1s")
        let backend = try cutOff.query("SELECT pg_backend_pid() AS pid")[0].int("pid")
        try cutOff.execute("BEGIN")
        try cutOff.query("SELECT 1 FROM executions WHERE id = $1 FOR UPDATE", [id])
        usleep(1_100_000)  // its lease has expired
        try db.execute("SET statement_timeout = '20s'")  // a regression fails here instead of hanging
        defer { _ = try? db.execute("RESET statement_timeout") }
        let t0 = Date()
        #expect(try Queue.reap(db) == 1)
        #expect(Date().timeIntervalSince(t0) < 10)
        #expect(try db.query("SELECT status FROM executions WHERE id = $1", [id])[0].string("status") == "failed")
        // The server ended the silent session (its transaction rolled back).
        #expect(try db.query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1", [backend])[0].int("n") == 0)
    }

    @Test func aTargetWhoseResultIsBeingRecordedIsNotTakenForALostLease() throws {
        let jobID = job(#"{"name":"finishing","script":"true","server_ids":[SERVER]}"#)
        for _ in 0..<2 { _ = try Queue.enqueue(db, jobID: jobID, trigger: "api", userID: nil, username: nil, envOverrides: nil) }
        let e = Executor(settings: ExecutorSettings(id: "hb-\(UUID().uuidString.prefix(6))", databaseURL: url), box: app.box)
        let runner = FakeRunner()
        e.runner = runner
        let claimed = try Queue.claim(db, executor: e.settings.id, limit: 2, leaseSeconds: 30)
        #expect(claimed.count == 2)
        let (finishing, taken) = (ActiveTarget(claim: claimed[0], secrets: [], retries: 0), ActiveTarget(claim: claimed[1], secrets: [], retries: 0))
        e.active = [finishing.claim.id: finishing, taken.claim.id: taken]
        // The writer has decided the first one's result and recorded it; the heartbeat still counts it as held.
        finishing.result = ("succeeded", 0, nil, nil)
        #expect(try Queue.finishTarget(db, targetID: finishing.claim.id, executor: e.settings.id, status: "succeeded", exitCode: 0,
                                       error: nil, retryDelaySeconds: nil))
        // The second one was reaped meanwhile (its lease had run out): that is a lost lease.
        try db.query("UPDATE execution_targets SET status = 'failed', finished_at = now() WHERE id = $1", [taken.claim.id])
        try e.heartbeat(db)
        #expect(!finishing.lost && !runner.isCancelled(finishing.claim.id))
        #expect(taken.lost && runner.isCancelled(taken.claim.id))
    }

    @Test func outcomesAreDescribed() {
        let claim = ClaimedTarget(id: 1, executionID: 1, serverID: 1, serverName: "s", attempt: 1, host: "h", port: 22, username: "u",
                                  authMethod: "password", credentials: nil, hostKeyFingerprint: nil, script: "", env: .object([]),
                                  secretEnv: nil, timeoutSeconds: 5, retries: 0)
        let t = ActiveTarget(claim: claim, secrets: [], retries: 0)
        #expect(Executor.describe(.exited(0), durationMs: 10, target: t).0 == "succeeded")
        #expect(Executor.describe(.exited(2), durationMs: 10, target: t).1 == 2)
        #expect(Executor.describe(.signaled("KILL"), durationMs: 10, target: t).0 == "failed")
        #expect(Executor.describe(.timedOut, durationMs: 10, target: t).0 == "timed_out")
        #expect(Executor.describe(.cancelled, durationMs: 10, target: t).0 == "cancelled")
        #expect(Executor.describe(.failed(.authFailed, "nope"), durationMs: 10, target: t).2 == "nope")
        t.lost = true
        #expect(Executor.describe(.cancelled, durationMs: 10, target: t).0 == "failed")
    }
}

@Suite struct OutputMaskerTests {
    @Test func masksAcrossChunkBoundaries() {
        var m = OutputMasker(secrets: ["s3cr3t", "", "ab"])
        var out = m.feed(Array("x s3c".utf8))
        out += m.feed(Array("r3t y ab".utf8))
        out += m.flush()
        #expect(out == "x *** y ***")
    }

    @Test func neverSplitsUTF8AndReplacesNUL() {
        var m = OutputMasker(secrets: [])
        let bytes = Array("é€😀".utf8)
        var out = ""
        for b in bytes { out += m.feed([b]) }
        out += m.flush()
        #expect(out == "é€😀")
        var n = OutputMasker(secrets: [])
        #expect(n.feed([0x61, 0x00, 0x62]) == "a\u{FFFD}b")
        var bad = OutputMasker(secrets: [])
        #expect(bad.feed([0xFF, 0x41]) == "\u{FFFD}A")
        #expect(bad.pendingCount == 0)
    }

    @Test func bytesPassThroughUnlessTheyNeedCleaning() {
        var m = OutputMasker(secrets: [])
        let ascii = Array(String(repeating: "0123456789abcdef", count: 100).utf8)
        #expect(m.feedBytes(ascii) == ascii)
        // NUL and invalid bytes inside long runs (past the 8-byte fast path) are replaced, the rest kept.
        let a = [UInt8](repeating: 0x61, count: 21), b = [UInt8](repeating: 0x62, count: 13)
        #expect(m.feedBytes(a + [0x00] + b) == a + [0xEF, 0xBF, 0xBD] + b)
        #expect(m.feedBytes(a + [0xC3, 0x28] + b) == a + [0xEF, 0xBF, 0xBD, 0x28] + b)
        let valid = Array("ünïcödé ok".utf8)
        #expect(m.feedBytes(a + valid) == a + valid)
        // A sequence cut at the end of a read waits for the rest.
        #expect(m.feedBytes(a + [0xE2, 0x82]) == a)
        #expect(m.pendingCount == 2)
        #expect(m.feedBytes([0xAC] + b) == [0xE2, 0x82, 0xAC] + b)
        #expect(m.flushBytes().isEmpty)
        // A cut sequence that never completes becomes U+FFFD at the end.
        #expect(m.feedBytes([0xF0, 0x9F]).isEmpty)
        #expect(m.flushBytes() == [0xEF, 0xBF, 0xBD])
        // With secrets, bytes held back for a secret that may straddle reads come out on flush.
        var s = OutputMasker(secrets: ["topsecret"])
        #expect(s.feedBytes(Array("xx topsec".utf8)) == Array("x".utf8))
        #expect(s.feedBytes(Array("ret and topse".utf8)) == Array("x *** a".utf8))
        #expect(s.flushBytes() == Array("nd topse".utf8))
    }
}
