// SPDX-License-Identifier: MIT
// Five-field cron expressions (minute hour day-of-month month day-of-week) and
// the @hourly/@daily/@weekly/@monthly/@yearly macros, evaluated in a time zone.
//
// DST rule (as Vixie cron and cronie): a wall-clock time skipped by a
// spring-forward gap fires at the first instant after the gap; a wall-clock
// time that occurs twice in a fall-back fires once, at its first occurrence.

public import Foundation

public struct CronSchedule: Sendable, Equatable {
    public let minutes: Set<Int>
    public let hours: Set<Int>
    public let daysOfMonth: Set<Int>
    public let months: Set<Int>
    /// 0 = Sunday … 6 = Saturday.
    public let daysOfWeek: Set<Int>
    let domRestricted: Bool
    let dowRestricted: Bool
    public let expression: String

    static let macros: [String: String] = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    ]
    static let monthNames = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    static let dayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    /// Parses; the error message says which field is wrong and why.
    public init(parsing text: String) throws(CronError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        expression = trimmed
        let expanded: String
        if trimmed.hasPrefix("@") {
            guard let m = CronSchedule.macros[trimmed.lowercased()] else {
                throw CronError("unknown macro \(trimmed); use @hourly, @daily, @weekly, @monthly or @yearly")
            }
            expanded = m
        } else {
            expanded = trimmed
        }
        let fields = expanded.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard fields.count == 5 else {
            throw CronError("expected 5 fields (minute hour day-of-month month day-of-week), got \(fields.count)")
        }
        minutes = try CronSchedule.field(fields[0], "minute", 0...59, names: [])
        hours = try CronSchedule.field(fields[1], "hour", 0...23, names: [])
        daysOfMonth = try CronSchedule.field(fields[2], "day-of-month", 1...31, names: [])
        months = try CronSchedule.field(fields[3], "month", 1...12, names: CronSchedule.monthNames, nameBase: 1)
        let dow = try CronSchedule.field(fields[4], "day-of-week", 0...7, names: CronSchedule.dayNames)
        daysOfWeek = Set(dow.map { $0 == 7 ? 0 : $0 })
        domRestricted = !fields[2].hasPrefix("*")
        dowRestricted = !fields[4].hasPrefix("*")
    }

    static func field(_ text: String, _ name: String, _ range: ClosedRange<Int>, names: [String], nameBase: Int = 0) throws(CronError) -> Set<Int> {
        var out = Set<Int>()
        func value(_ s: String) throws(CronError) -> Int {
            if let n = Int(s), range.contains(n) { return n }
            if let i = names.firstIndex(of: s.lowercased()) { return i + nameBase }
            throw CronError("\(name) field: \"\(s)\" is not a value from \(range.lowerBound) to \(range.upperBound)")
        }
        for part in text.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            guard !part.isEmpty else { throw CronError("\(name) field: empty list item") }
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard pieces.count <= 2 else { throw CronError("\(name) field: \"\(part)\" has more than one /") }
            var step = 1
            if pieces.count == 2 {
                guard let s = Int(pieces[1]), s >= 1, s <= range.upperBound + 1 else {
                    throw CronError("\(name) field: step \"\(pieces[1])\" must be a number from 1 to \(range.upperBound + 1)")
                }
                step = s
            }
            var lo: Int, hi: Int
            if pieces[0] == "*" {
                lo = range.lowerBound; hi = range.upperBound
            } else if let dash = pieces[0].firstIndex(of: "-") {
                lo = try value(String(pieces[0][..<dash]))
                hi = try value(String(pieces[0][pieces[0].index(after: dash)...]))
                guard lo <= hi else { throw CronError("\(name) field: range \"\(pieces[0])\" runs backwards") }
            } else {
                lo = try value(pieces[0])
                hi = pieces.count == 2 ? range.upperBound : lo
            }
            for v in stride(from: lo, through: hi, by: step) { out.insert(v) }
        }
        return out
    }

    func dayMatches(day: Int, weekday: Int) -> Bool {
        let dom = daysOfMonth.contains(day), dow = daysOfWeek.contains(weekday)
        if domRestricted && dowRestricted { return dom || dow }
        return dom && dow
    }

    /// How far before `after`'s wall-clock time (in minutes) candidates of its own day are still tried. A wall-clock
    /// time of the same day can only map to an instant after `after` if the day's UTC offset changes by more than the
    /// distance between the two; offsets change by at most 2 hours within a day in tzdata (Antarctica/Troll), so 3 hours
    /// is safe. Without it, `* * * * *` at 23:59 tried 1,440 times of that day, one `Calendar.date(from:)` each
    /// (about 0.2 ms a call; the scheduler evaluated it twice per due job).
    static let sameDayMarginMinutes = 180

    /// The next `count` fire times strictly after `after`, in `timeZone`. Looks at most ~8 years ahead.
    public func nextRuns(after: Date, count: Int, timeZone: TimeZone) -> [Date] {
        nextRuns(after: after, count: count, timeZone: timeZone, sameDayMargin: CronSchedule.sameDayMarginMinutes)
    }

    /// `sameDayMargin` nil tries every time of `after`'s day (the reference the tests compare with).
    func nextRuns(after: Date, count: Int, timeZone: TimeZone, sameDayMargin: Int?) -> [Date] {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = timeZone
        var results: [Date] = []
        let sortedHours = hours.sorted(), sortedMinutes = minutes.sorted()
        var day = cal.startOfDay(for: after)
        // On `after`'s own day, times well before its wall-clock time cannot come after it (see sameDayMarginMinutes).
        var earliest = Int.min
        if let margin = sameDayMargin {
            let w = cal.dateComponents([.hour, .minute], from: after)
            earliest = w.hour! * 60 + w.minute! - margin
        }
        for _ in 0..<(366 * 8) {
            let c = cal.dateComponents([.year, .month, .day, .weekday], from: day)
            if months.contains(c.month!), dayMatches(day: c.day!, weekday: c.weekday! - 1) {
                for h in sortedHours where h * 60 + 59 >= earliest {
                    for m in sortedMinutes where h * 60 + m >= earliest {
                        var dc = DateComponents(year: c.year, month: c.month, day: c.day, hour: h, minute: m)
                        dc.timeZone = timeZone
                        // A skipped wall-clock time comes back moved forward by the gap (02:30 → 03:30); a repeated one, its first occurrence.
                        guard let t = cal.date(from: dc), t > after else { continue }
                        if let last = results.last, t <= last { continue }
                        results.append(t)
                        if results.count == count { return results }
                    }
                }
            }
            guard let next = cal.date(byAdding: .day, value: 1, to: day) else { break }
            day = cal.startOfDay(for: next)
            earliest = Int.min
        }
        return results
    }
}

public struct CronError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}
