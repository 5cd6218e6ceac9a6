// SPDX-License-Identifier: MIT
// A small file shared by the pool master and its workers through mmap: a
// header the master writes (restarts, recycles, reloads), then per worker slot
// its pid, requests served and busy threads, then per slot its request
// counters by route and status with latency histograms (RequestStats), then
// the counters of workers that are gone (the master folds a slot in when it
// reaps its worker, so pool-wide sums never go down). Every word has exactly
// one writer at a time (a worker's reporter thread, or the master once that
// worker is dead), so plain stores suffice.

public import Foundation

public final class Scoreboard: @unchecked Sendable {
    public static let wordsPerSlot = 8
    public static let headerWords = 8
    public let slots: Int
    let base: UnsafeMutablePointer<Int64>
    let length: Int

    var slotBase: UnsafeMutablePointer<Int64> { base + Scoreboard.headerWords }
    func statsBase(_ slot: Int) -> UnsafeMutablePointer<Int64> {
        slotBase + slots * Scoreboard.wordsPerSlot + slot * RequestStats.words
    }
    /// The retired counters live after the last slot's.
    var retiredBase: UnsafeMutablePointer<Int64> { statsBase(slots) }

    /// Maps `path`, creating and sizing it when `create` is set.
    public init(path: String, slots: Int, create: Bool) throws {
        self.slots = slots
        length = (Scoreboard.headerWords + slots * Scoreboard.wordsPerSlot + (slots + 1) * RequestStats.words) * 8
        let fd = Foundation.open(path, create ? (O_RDWR | O_CREAT | O_TRUNC) : O_RDWR, 0o600)
        guard fd >= 0 else { throw ScoreboardError(message: "cannot open scoreboard \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        if create, ftruncate(fd, off_t(length)) != 0 { throw ScoreboardError(message: "cannot size scoreboard \(path)") }
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw ScoreboardError(message: "cannot map scoreboard \(path)")
        }
        base = p.bindMemory(to: Int64.self, capacity: length / 8)
    }

    deinit { munmap(base, length) }

    public struct Slot: Sendable, Equatable {
        public var pid: Int64
        public var served: Int64
        public var busy: Int64
        /// Long-polls parked (waiting without a thread).
        public var waiting: Int64
        public init(pid: Int64, served: Int64, busy: Int64, waiting: Int64 = 0) {
            self.pid = pid; self.served = served; self.busy = busy; self.waiting = waiting
        }
    }

    public func read(_ slot: Int) -> Slot {
        let p = slotBase + slot * Scoreboard.wordsPerSlot
        return Slot(pid: p[0], served: p[1], busy: p[2], waiting: p[3])
    }

    public func write(_ slot: Int, _ value: Slot) {
        let p = slotBase + slot * Scoreboard.wordsPerSlot
        p[0] = value.pid; p[1] = value.served; p[2] = value.busy; p[3] = value.waiting
    }

    /// What the master counts: worker deaths, clean recycles, reloads.
    public struct Pool: Sendable, Equatable {
        public var restarts: Int64, recycled: Int64, reloads: Int64
        public init(restarts: Int64, recycled: Int64, reloads: Int64) { self.restarts = restarts; self.recycled = recycled; self.reloads = reloads }
    }

    public func readPool() -> Pool { Pool(restarts: base[0], recycled: base[1], reloads: base[2]) }
    public func writePool(_ p: Pool) { base[0] = p.restarts; base[1] = p.recycled; base[2] = p.reloads }

    public func readStats(_ slot: Int) -> RequestStats { RequestStats(words: Array(UnsafeBufferPointer(start: statsBase(slot), count: RequestStats.words))) }
    public func writeStats(_ slot: Int, _ stats: RequestStats) {
        let p = statsBase(slot)
        for (i, w) in stats.counts.enumerated() { p[i] = w }
    }

    /// The master, once the slot's worker is dead: adds its counters to the retired ones and clears the slot.
    public func retire(_ slot: Int) {
        let from = statsBase(slot), to = retiredBase
        for i in 0..<RequestStats.words { to[i] += from[i]; from[i] = 0 }
    }

    /// The whole pool's counters: the retired ones plus every slot's.
    public func totalStats() -> RequestStats {
        var total = RequestStats(words: Array(UnsafeBufferPointer(start: retiredBase, count: RequestStats.words)))
        for slot in 0..<slots { total.add(readStats(slot)) }
        return total
    }
}

/// Requests by route and status class, with a latency histogram per route, as a flat array of counters (so the
/// scoreboard can hold it). Routes are indexes into the caller's route table (at most `routes`; the last is "other").
public struct RequestStats: Sendable, Equatable {
    public static let routes = 64
    public static let statusClasses = ["2xx", "3xx", "4xx", "5xx"]
    /// Upper bounds in seconds of the histogram buckets (a +Inf bucket follows).
    public static let bounds: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    /// Per route: a count per status class, a count per bucket (and +Inf), the sum of latencies in microseconds.
    public static let perRoute = statusClasses.count + bounds.count + 1 + 1
    public static let words = routes * perRoute

    public private(set) var counts: [Int64]

    public init() { counts = [Int64](repeating: 0, count: RequestStats.words) }
    public init(words: [Int64]) {
        counts = words.count == RequestStats.words ? words : [Int64](repeating: 0, count: RequestStats.words)
    }

    public mutating func record(route: Int, status: Int, seconds: Double) {
        let base = min(max(route, 0), RequestStats.routes - 1) * RequestStats.perRoute
        let cls = min(max(status / 100 - 2, 0), RequestStats.statusClasses.count - 1)
        counts[base + cls] += 1
        let bucket = RequestStats.bounds.firstIndex { seconds <= $0 } ?? RequestStats.bounds.count
        counts[base + RequestStats.statusClasses.count + bucket] += 1
        counts[base + RequestStats.perRoute - 1] += Int64((seconds * 1_000_000).rounded())
    }

    public mutating func add(_ other: RequestStats) {
        for i in 0..<counts.count { counts[i] += other.counts[i] }
    }

    /// Prometheus text: tsubame_http_requests_total{route,status} and the tsubame_http_request_duration_seconds
    /// histogram per route; `names[i]` labels route i. Routes never requested are left out.
    public func prometheus(routeNames names: [String]) -> String {
        var requests = "# HELP tsubame_http_requests_total API requests answered, by route and status class.\n"
            + "# TYPE tsubame_http_requests_total counter\n"
        var latency = "# HELP tsubame_http_request_duration_seconds Time to answer an API request (parked long-polls excluded).\n"
            + "# TYPE tsubame_http_request_duration_seconds histogram\n"
        for r in 0..<RequestStats.routes {
            let base = r * RequestStats.perRoute
            let total = (0..<RequestStats.statusClasses.count).reduce(Int64(0)) { $0 + counts[base + $1] }
            if total == 0 { continue }
            let name = r < names.count ? names[r] : "other"
            for (i, cls) in RequestStats.statusClasses.enumerated() where counts[base + i] > 0 {
                requests += "tsubame_http_requests_total{route=\"\(name)\",status=\"\(cls)\"} \(counts[base + i])\n"
            }
            var cumulative: Int64 = 0
            for (i, bound) in RequestStats.bounds.enumerated() {
                cumulative += counts[base + RequestStats.statusClasses.count + i]
                latency += "tsubame_http_request_duration_seconds_bucket{route=\"\(name)\",le=\"\(bound)\"} \(cumulative)\n"
            }
            cumulative += counts[base + RequestStats.statusClasses.count + RequestStats.bounds.count]
            latency += "tsubame_http_request_duration_seconds_bucket{route=\"\(name)\",le=\"+Inf\"} \(cumulative)\n"
            latency += "tsubame_http_request_duration_seconds_sum{route=\"\(name)\"} \(Double(counts[base + RequestStats.perRoute - 1]) / 1_000_000)\n"
            latency += "tsubame_http_request_duration_seconds_count{route=\"\(name)\"} \(cumulative)\n"
        }
        return requests + latency
    }
}

public struct ScoreboardError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
