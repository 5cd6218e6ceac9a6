// SPDX-License-Identifier: MIT
// The thin layer over libssh2: the one place its return codes become Swift
// errors (`check`), host key fingerprints, secret-holding C buffers, and the
// small helpers the engine needs (clock, shell quoting, key type sniffing).

import Foundation
internal import CLibSSH2

/// A failure inside the engine: the kind the caller sees and a message for a person.
struct SSHError: Error {
    var kind: SSHFailureKind
    var message: String
    /// The libssh2 error code (0 when the error did not come from libssh2).
    var code: Int32 = 0
}

enum LibSSH2 {
    /// `libssh2_init` once per process, before the first session.
    static let initialized: Bool = libssh2_init(0) == 0

    /// libssh2's text for the last error of `session`.
    static func lastError(_ session: OpaquePointer?) -> String {
        guard let session else { return "" }
        var message: UnsafeMutablePointer<CChar>?
        var length: Int32 = 0
        _ = libssh2_session_last_error(session, &message, &length, 0)
        guard let message, length > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: message, count: Int(length)), as: UTF8.self)
    }

    /// A new non-blocking session whose socket reads add the bytes they take to
    /// `counter`: on a connection shared by several channels, one channel's call
    /// may queue packets for the others inside libssh2, where poll() cannot see them.
    static func session(counting counter: UnsafeMutablePointer<Int>) -> OpaquePointer? {
        guard let s = libssh2_session_init_ex(nil, nil, nil, UnsafeMutableRawPointer(counter)) else { return nil }
        let recv: @convention(c) (libssh2_socket_t, UnsafeMutableRawPointer?, Int, Int32, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int = {
            fd, buffer, length, flags, abstract in
            let n = Foundation.recv(fd, buffer, length, flags)
            // libssh2 wants -errno, as its own callback returns.
            guard n >= 0 else { return errno == EWOULDBLOCK ? -Int(EAGAIN) : -Int(errno) }
            if n > 0, let counter = abstract?.pointee?.assumingMemoryBound(to: Int.self) { counter.pointee += n }
            return n
        }
        _ = libssh2_session_callback_set(s, LIBSSH2_CALLBACK_RECV, unsafeBitCast(recv, to: UnsafeMutableRawPointer.self))
        libssh2_session_set_blocking(s, 0)
        return s
    }

    /// Whether a libssh2 error concerns one channel only; any other error leaves
    /// the whole session (and every channel on it) unusable.
    static func channelLevel(_ code: Int32) -> Bool {
        switch code {
        case LIBSSH2_ERROR_CHANNEL_OUTOFORDER, LIBSSH2_ERROR_CHANNEL_FAILURE, LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED,
             LIBSSH2_ERROR_CHANNEL_UNKNOWN, LIBSSH2_ERROR_CHANNEL_WINDOW_EXCEEDED, LIBSSH2_ERROR_CHANNEL_PACKET_EXCEEDED,
             LIBSSH2_ERROR_CHANNEL_CLOSED, LIBSSH2_ERROR_CHANNEL_EOF_SENT:
            return true
        default:
            return false
        }
    }

    /// The failure kind a libssh2 error code stands for, before the caller
    /// refines it with what it was doing.
    static func kind(of code: Int32) -> SSHFailureKind {
        switch code {
        case LIBSSH2_ERROR_SOCKET_SEND, LIBSSH2_ERROR_SOCKET_RECV, LIBSSH2_ERROR_SOCKET_DISCONNECT,
             LIBSSH2_ERROR_SOCKET_NONE, LIBSSH2_ERROR_BAD_SOCKET, LIBSSH2_ERROR_SOCKET_TIMEOUT:
            return .disconnected
        case LIBSSH2_ERROR_TIMEOUT:
            return .timeout
        case LIBSSH2_ERROR_AUTHENTICATION_FAILED, LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED, LIBSSH2_ERROR_FILE,
             LIBSSH2_ERROR_PASSWORD_EXPIRED, LIBSSH2_ERROR_METHOD_NONE, LIBSSH2_ERROR_KEYFILE_AUTH_FAILED:
            return .authFailed
        default:
            return .protocolError
        }
    }
}

/// The choke point for libssh2 return codes: `true` when the call completed,
/// `false` when it would block (LIBSSH2_ERROR_EAGAIN: call again once the
/// socket is ready), and an `SSHError` carrying libssh2's own text otherwise.
/// `op` names what was attempted, for the message.
@discardableResult
func check(_ rc: Int, _ op: String, _ session: OpaquePointer?) throws(SSHError) -> Bool {
    if rc >= 0 { return true }
    let code = Int32(clamping: rc)
    if code == LIBSSH2_ERROR_EAGAIN { return false }
    let text = LibSSH2.lastError(session)
    throw SSHError(kind: LibSSH2.kind(of: code), message: text.isEmpty ? "\(op) failed (libssh2 error \(code))" : "\(op) failed: \(text)",
                   code: code)
}

@discardableResult
func check(_ rc: Int32, _ op: String, _ session: OpaquePointer?) throws(SSHError) -> Bool {
    try check(Int(rc), op, session)
}

/// A NUL-terminated C copy of a string that stays at one address for as long
/// as libssh2 may re-enter a non-blocking call with it; secrets are wiped when
/// it goes.
final class CBuffer {
    let pointer: UnsafeMutablePointer<CChar>
    let count: Int
    private let secret: Bool

    init(_ text: String, secret: Bool = false) {
        let bytes = Array(text.utf8)
        count = bytes.count
        self.secret = secret
        pointer = .allocate(capacity: bytes.count + 1)
        bytes.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { UnsafeMutableRawPointer(pointer).copyMemory(from: base, byteCount: src.count) }
        }
        pointer[bytes.count] = 0
    }

    deinit {
        if secret { explicit_bzero(pointer, count + 1) }
        pointer.deallocate()
    }
}

/// Host key facts of a session: the key type as SSH names it and its
/// SHA-256 fingerprint as `ssh-keygen -lf` prints it.
struct HostKey: Equatable {
    var algorithm: String
    var fingerprint: String

    init(algorithm: String, fingerprint: String) {
        self.algorithm = algorithm
        self.fingerprint = fingerprint
    }

    /// Reads them from a session whose handshake is complete.
    init?(session: OpaquePointer) {
        var length = 0
        var type: Int32 = 0
        guard let blob = libssh2_session_hostkey(session, &length, &type), length >= 4,
              let hash = libssh2_hostkey_hash(session, LIBSSH2_HOSTKEY_HASH_SHA256) else { return nil }
        let bytes = UnsafeRawBufferPointer(start: blob, count: length)
        // The key blob starts with its type as an SSH string.
        let nameLength = Int(bytes[0]) << 24 | Int(bytes[1]) << 16 | Int(bytes[2]) << 8 | Int(bytes[3])
        if nameLength > 0, nameLength <= 64, 4 + nameLength <= length {
            algorithm = String(decoding: bytes[4..<(4 + nameLength)], as: UTF8.self)
        } else {
            switch type {
            case LIBSSH2_HOSTKEY_TYPE_RSA: algorithm = "ssh-rsa"
            case LIBSSH2_HOSTKEY_TYPE_DSS: algorithm = "ssh-dss"
            case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: algorithm = "ecdsa-sha2-nistp256"
            case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: algorithm = "ecdsa-sha2-nistp384"
            case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: algorithm = "ecdsa-sha2-nistp521"
            case LIBSSH2_HOSTKEY_TYPE_ED25519: algorithm = "ssh-ed25519"
            default: algorithm = "unknown"
            }
        }
        let digest = Data(UnsafeRawBufferPointer(start: hash, count: 32))
        fingerprint = HostKey.format(sha256: digest)
    }

    /// "SHA256:" + unpadded base64, as OpenSSH prints it.
    static func format(sha256 digest: Data) -> String {
        var text = digest.base64EncodedString()
        while text.hasSuffix("=") { text.removeLast() }
        return "SHA256:" + text
    }

    /// A pinned value in the forms people paste: with or without the
    /// "SHA256:" prefix, with or without base64 padding.
    static func normalize(_ pinned: String) -> String {
        var text = pinned.trimmingCharacters(in: .whitespacesAndNewlines)
        if text.lowercased().hasPrefix("sha256:") { text = String(text.dropFirst(7)) }
        while text.hasSuffix("=") { text.removeLast() }
        return "SHA256:" + text
    }
}

/// The kind of a private key, read from its text without decrypting it, so
/// that a refused RSA key can be explained.
enum PrivateKeyKind: Equatable {
    case rsa, ed25519, ecdsa, dsa, unknown

    init(privateKey text: String) {
        if text.contains("BEGIN RSA PRIVATE KEY") { self = .rsa; return }
        if text.contains("BEGIN EC PRIVATE KEY") { self = .ecdsa; return }
        if text.contains("BEGIN DSA PRIVATE KEY") { self = .dsa; return }
        guard let body = PrivateKeyKind.pemBody(text) else { self = .unknown; return }
        if text.contains("BEGIN OPENSSH PRIVATE KEY") {
            // openssh-key-v1\0, cipher, kdf, kdf options, key count, then the
            // public key blob (never encrypted), which starts with the type.
            let magic = Array("openssh-key-v1".utf8) + [0]
            var reader = SSHReader(body)
            guard body.starts(with: magic), reader.skip(magic.count),
                  reader.string() != nil, reader.string() != nil, reader.string() != nil, reader.uint32() != nil,
                  let blob = reader.string() else { self = .unknown; return }
            var inner = SSHReader(blob)
            let type = inner.string().map { String(decoding: $0, as: UTF8.self) } ?? ""
            switch type {
            case "ssh-rsa": self = .rsa
            case "ssh-ed25519": self = .ed25519
            case "ssh-dss": self = .dsa
            default: self = type.hasPrefix("ecdsa-") ? .ecdsa : .unknown
            }
            return
        }
        // PKCS#8 ("BEGIN PRIVATE KEY"): look for the algorithm's OID.
        let rsaOID: [UInt8] = [0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01]
        let ecOID: [UInt8] = [0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01]
        let ed25519OID: [UInt8] = [0x06, 0x03, 0x2B, 0x65, 0x70]
        if PrivateKeyKind.contains(body, rsaOID) { self = .rsa }
        else if PrivateKeyKind.contains(body, ecOID) { self = .ecdsa }
        else if PrivateKeyKind.contains(body, ed25519OID) { self = .ed25519 }
        else { self = .unknown }
    }

    private static func pemBody(_ text: String) -> [UInt8]? {
        var inside = false
        var b64 = ""
        for line in text.split(whereSeparator: \.isNewline) {
            if line.hasPrefix("-----BEGIN") { inside = true; continue }
            if line.hasPrefix("-----END") { break }
            if inside && !line.contains(":") { b64 += line.trimmingCharacters(in: .whitespaces) }
        }
        return Data(base64Encoded: b64).map(Array.init)
    }

    private static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count else { return false }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if haystack[start..<(start + needle.count)].elementsEqual(needle) { return true }
        }
        return false
    }
}

/// Reads SSH wire strings and integers.
struct SSHReader {
    let bytes: [UInt8]
    var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func skip(_ n: Int) -> Bool {
        guard offset + n <= bytes.count else { return false }
        offset += n
        return true
    }

    mutating func uint32() -> UInt32? {
        guard offset + 4 <= bytes.count else { return nil }
        defer { offset += 4 }
        return bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func string() -> [UInt8]? {
        guard let n = uint32().map(Int.init), offset + n <= bytes.count else { return nil }
        defer { offset += n }
        return Array(bytes[offset..<(offset + n)])
    }
}

/// Seconds on the monotonic clock.
func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

enum Shell {
    /// `value` as one single-quoted POSIX shell word.
    static func quote(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// `value` as one word for whatever login shell sshd hands the command to:
    /// POSIX single quotes, with `'` and `\` outside them (fish reads `\\` and
    /// `\'` as escapes even inside single quotes). csh cannot take a newline
    /// inside quotes at all: a multi-line inline script does not start there.
    static func quoteForLoginShell(_ value: String) -> String {
        var out: [UInt8] = [UInt8(ascii: "'")]
        out.reserveCapacity(value.utf8.count + 16)
        for c in value.utf8 {
            switch c {
            case UInt8(ascii: "'"): out += Array("'\\''".utf8)
            case UInt8(ascii: "\\"): out += Array("'\\\\'".utf8)
            default: out.append(c)
            }
        }
        out.append(UInt8(ascii: "'"))
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether `name` may be exported by a POSIX shell.
    static func isValidName(_ name: String) -> Bool {
        guard let first = name.utf8.first, first == UInt8(ascii: "_") || (first | 0x20 >= UInt8(ascii: "a") && first | 0x20 <= UInt8(ascii: "z")) else {
            return false
        }
        return name.utf8.allSatisfy { c in
            c == UInt8(ascii: "_") || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c | 0x20 >= UInt8(ascii: "a") && c | 0x20 <= UInt8(ascii: "z"))
        }
    }
}
