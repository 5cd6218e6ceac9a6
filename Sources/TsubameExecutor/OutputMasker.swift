// SPDX-License-Identifier: MIT
// Turns one output stream's bytes into text that is safe to store: secret
// values masked as *** even when a secret straddles two reads, UTF-8 never
// split between chunks, invalid UTF-8 and NUL replaced. It works on bytes
// from end to end: the usual output (valid UTF-8, no secret in it) passes
// through with one scan and no conversion to String.

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
    public mutating func feed(_ bytes: [UInt8]) -> String { String(decoding: feedBytes(bytes), as: UTF8.self) }

    /// Everything still held back (call at end of stream).
    public mutating func flush() -> String { String(decoding: flushBytes(), as: UTF8.self) }

    /// Feeds bytes; returns what can be stored now as UTF-8 bytes (valid, without NUL; maybe empty).
    public mutating func feedBytes(_ bytes: [UInt8]) -> [UInt8] {
        if pending.isEmpty && secrets.isEmpty {
            // Nothing held back and nothing to mask: only a UTF-8 sequence cut at the end waits for the next read.
            let cut = OutputMasker.utf8Boundary(bytes, at: bytes.count)
            if cut == bytes.count { return OutputMasker.clean(bytes) }
            pending = Array(bytes[cut...])
            return OutputMasker.clean(Array(bytes[..<cut]))
        }
        pending += bytes
        mask()
        var cut = pending.count - holdBack
        if cut <= 0 { return [] }
        cut = OutputMasker.utf8Boundary(pending, at: cut)
        let out = Array(pending[0..<cut])
        pending.removeFirst(cut)
        return OutputMasker.clean(out)
    }

    /// Everything still held back, as UTF-8 bytes (call at end of stream).
    public mutating func flushBytes() -> [UInt8] {
        mask()
        let out = pending
        pending = []
        return OutputMasker.clean(out)
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

    /// True when every byte is ASCII other than NUL (checked 8 bytes at a time).
    static func isPlainASCII(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw -> Bool in
            let n = raw.count
            var i = 0
            let high: UInt64 = 0x8080_8080_8080_8080, ones: UInt64 = 0x0101_0101_0101_0101
            while i + 8 <= n {
                let w = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                // A high bit set (non-ASCII), or a zero byte (the classic "has zero byte" test).
                if w & high != 0 || (w &- ones) & ~w & high != 0 { return false }
                i += 8
            }
            while i < n {
                let b = raw[i]
                if b == 0 || b >= 0x80 { return false }
                i += 1
            }
            return true
        }
    }

    /// The bytes as storable text: unchanged when valid UTF-8 without NUL, else with U+FFFD for each bad sequence and NUL.
    static func clean(_ bytes: [UInt8]) -> [UInt8] {
        if isPlainASCII(bytes) { return bytes }
        if !bytes.contains(0), String(validating: bytes, as: UTF8.self) != nil { return bytes }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 16)
        for scalar in String(decoding: bytes, as: UTF8.self).unicodeScalars {
            UTF8.encode(scalar == "\0" ? "\u{FFFD}" : scalar) { out.append($0) }
        }
        return out
    }

    static func text(_ bytes: [UInt8]) -> String { String(decoding: clean(bytes), as: UTF8.self) }
}
