// SPDX-License-Identifier: MIT
// OpenSSL's libcrypto behind Swift value types: random bytes, SHA-256, HMAC,
// scrypt password hashes and AES-256-GCM sealing. No OpenSSL type leaves here.

public import Foundation
internal import COpenSSL

public struct CryptoError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public var description: String {
        var msg = "\(operation) failed"
        let code = ERR_get_error()
        if code != 0 {
            var buf = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buf, buf.count)
            msg += ": " + String(cString: buf)
        }
        return msg
    }
}

/// The one choke point where an OpenSSL return code becomes a Swift error.
@inline(__always) func check(_ rc: Int32, _ operation: String) throws {
    if rc != 1 { throw CryptoError(operation: operation) }
}

public enum Crypto {
    /// Cryptographically secure random bytes.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let rc = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
        precondition(rc == 1, "RAND_bytes failed: the system has no entropy source")
        return out
    }

    /// A 256-bit random token, base64url without padding (43 characters).
    public static func randomToken() -> String { base64url(randomBytes(32)) }

    public static func sha256<C: Collection>(_ data: C) -> [UInt8] where C.Element == UInt8 {
        var out = [UInt8](repeating: 0, count: 32)
        let input = Array(data)
        _ = input.withUnsafeBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { SHA256Shim.digest(inp.baseAddress, inp.count, $0.baseAddress) }
        }
        return out
    }

    public static func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 32
        _ = key.withUnsafeBufferPointer { k in
            message.withUnsafeBufferPointer { m in
                out.withUnsafeMutableBufferPointer { o in
                    HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), m.baseAddress, m.count, o.baseAddress, &len)
                }
            }
        }
        return out
    }

    /// Compares without an early exit, so timing reveals nothing about where two secrets differ.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return a.withUnsafeBufferPointer { x in b.withUnsafeBufferPointer { y in CRYPTO_memcmp(x.baseAddress, y.baseAddress, a.count) == 0 } }
    }

    public static func base64url(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static let hexDigits = Array("0123456789abcdef".utf8)
    public static func hex(_ bytes: [UInt8]) -> String {
        var out = [UInt8](repeating: 0, count: bytes.count * 2)
        for (i, b) in bytes.enumerated() { out[2 * i] = hexDigits[Int(b >> 4)]; out[2 * i + 1] = hexDigits[Int(b & 15)] }
        return String(decoding: out, as: UTF8.self)
    }

    public static func fromHex(_ s: String) -> [UInt8]? {
        let chars = Array(s.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let b = UInt8(String(decoding: chars[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
            out.append(b)
            i += 2
        }
        return out
    }
}

/// SHA-256 through the EVP one-shot digest.
enum SHA256Shim {
    static func digest(_ input: UnsafePointer<UInt8>?, _ count: Int, _ out: UnsafeMutablePointer<UInt8>?) -> Int32 {
        var len: UInt32 = 32
        return EVP_Digest(input, count, out, &len, EVP_sha256(), nil)
    }
}
