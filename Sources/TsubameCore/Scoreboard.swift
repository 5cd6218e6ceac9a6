// SPDX-License-Identifier: MIT
// A small file shared by the pool master and its workers through mmap: each
// worker slot holds its pid, requests served and busy threads. Every word has
// exactly one writer (the worker's reporter thread), so plain stores suffice.

public import Foundation

public final class Scoreboard: @unchecked Sendable {
    public static let wordsPerSlot = 8
    public let slots: Int
    let base: UnsafeMutablePointer<Int64>
    let length: Int

    /// Maps `path`, creating and sizing it when `create` is set.
    public init(path: String, slots: Int, create: Bool) throws {
        self.slots = slots
        length = slots * Scoreboard.wordsPerSlot * 8
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
        let p = base + slot * Scoreboard.wordsPerSlot
        return Slot(pid: p[0], served: p[1], busy: p[2], waiting: p[3])
    }

    public func write(_ slot: Int, _ value: Slot) {
        let p = base + slot * Scoreboard.wordsPerSlot
        p[0] = value.pid; p[1] = value.served; p[2] = value.busy; p[3] = value.waiting
    }
}

public struct ScoreboardError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
