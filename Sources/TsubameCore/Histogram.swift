// SPDX-License-Identifier: MIT
// A fixed-bucket histogram of seconds that travels as JSON (the executor stores its own in the executors table at
// each heartbeat, and /metrics prints it) and renders as a Prometheus histogram.

public struct Histogram: Sendable, Equatable {
    public static let defaultBounds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    public let bounds: [Double]
    /// Per bucket (not cumulative), the last one for values above every bound.
    public private(set) var counts: [Int64]
    public private(set) var sum: Double = 0

    public init(bounds: [Double] = Histogram.defaultBounds) {
        self.bounds = bounds
        counts = [Int64](repeating: 0, count: bounds.count + 1)
    }

    public var count: Int64 { counts.reduce(0, +) }

    public mutating func observe(_ seconds: Double) {
        counts[bounds.firstIndex { seconds <= $0 } ?? bounds.count] += 1
        sum += seconds
    }

    public var json: JSON {
        .object([("bounds", .array(bounds.map(JSON.double))), ("counts", .array(counts.map(JSON.int))), ("sum", .double(sum))])
    }

    /// Reads `json`; nil unless it is well-formed.
    public init?(json: JSON) {
        guard let b = json["bounds"]?.arrayValue?.compactMap(\.doubleValue), let c = json["counts"]?.arrayValue?.compactMap(\.int64Value),
              c.count == b.count + 1, let s = json["sum"]?.doubleValue else { return nil }
        bounds = b; counts = c; sum = s
    }

    /// The `_bucket`, `_sum` and `_count` lines of metric `name` with `labels` (e.g. `executor="a"`).
    public func prometheus(_ name: String, labels: String) -> String {
        var out = ""
        var cumulative: Int64 = 0
        let sep = labels.isEmpty ? "" : ","
        for (i, bound) in bounds.enumerated() {
            cumulative += counts[i]
            out += "\(name)_bucket{\(labels)\(sep)le=\"\(bound)\"} \(cumulative)\n"
        }
        cumulative += counts[bounds.count]
        out += "\(name)_bucket{\(labels)\(sep)le=\"+Inf\"} \(cumulative)\n"
        out += "\(name)_sum{\(labels)} \(sum)\n\(name)_count{\(labels)} \(cumulative)\n"
        return out
    }
}
