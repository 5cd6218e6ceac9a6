// SPDX-License-Identifier: MIT
// Turns one output stream's bytes into text that is safe to store: secret
// values masked as *** even when a secret straddles two reads, UTF-8 never
// split between chunks, invalid UTF-8 and NUL replaced.

public struct OutputMasker: Sendable {
    let secrets: [[UInt8]]
    let holdBack: Int
    var pending: [UInt8] = []

    /// `secrets`: the values to hide (empty ones are ignored; longer ones are matched first).
    public init(secrets: [String]) {
        self.secrets = secrets.map { Array($0.utf8) }.filter { !$0.isEmpty }.sorted { $0.count > $1.count }
        holdBack = max(0, (self.secrets.first?.count ?? 1) - 1)
    }

    /// Feeds bytes; returns the text that can be stored now (maybe empty).
    public mutating func feed(_ bytes: [UInt8]) -> String {
        pending += bytes
        mask()
        var cut = pending.count - holdBack
        if cut <= 0 { return "" }
        cut = OutputMasker.utf8Boundary(pending, at: cut)
        let out = Array(pending[0..<cut])
        pending.removeFirst(cut)
        return OutputMasker.text(out)
    }

    /// Everything still held back (call at end of stream).
    public mutating func flush() -> String {
        mask()
        let out = pending
        pending = []
        return OutputMasker.text(out)
    }

    /// Bytes held back waiting for more input.
    public var pendingCount: Int { pending.count }

    mutating func mask() {
        guard !secrets.isEmpty, !pending.isEmpty else { return }
        var out: [UInt8] = []
        out.reserveCapacity(pending.count)
        var i = 0
        let n = pending.count
        outer: while i < n {
            for s in secrets where i + s.count <= n && pending[i] == s[0] {
                var match = true
                for k in 1..<s.count where pending[i + k] != s[k] { match = false; break }
                if match {
                    out += [0x2A, 0x2A, 0x2A]
                    i += s.count
                    continue outer
                }
            }
            out.append(pending[i])
            i += 1
        }
        pending = out
    }

    /// Moves `cut` back so the bytes before it do not end inside a multi-byte UTF-8 sequence.
    static func utf8Boundary(_ b: [UInt8], at cut: Int) -> Int {
        var i = cut - 1
        var back = 0
        // Find the lead byte of the last sequence before `cut` (at most 3 continuation bytes back).
        while i >= 0, b[i] & 0xC0 == 0x80, back < 3 { i -= 1; back += 1 }
        guard i >= 0 else { return cut }
        let lead = b[i]
        let need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
        return i + need > cut ? i : cut
    }

    static func text(_ bytes: [UInt8]) -> String {
        if bytes.contains(0) {
            return String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "\0", with: "\u{FFFD}")
        }
        // Valid UTF-8 (the usual case) is taken as is; otherwise invalid sequences become U+FFFD.
        return String(validating: bytes, as: UTF8.self) ?? String(decoding: bytes, as: UTF8.self)
    }
}
