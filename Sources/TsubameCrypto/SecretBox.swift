// SPDX-License-Identifier: MIT
// AES-256-GCM under a master key read from a file. Sealed form: nonce(12) ||
// ciphertext || tag(16). The key id (first 8 hex digits of SHA-256 of the key)
// is stored beside each ciphertext so keys can rotate.

import Foundation
public import TsubameCore
internal import COpenSSL
internal import Glibc

public struct SecretBox: Sendable {
    let key: [UInt8]
    /// Names this key; stored next to what it sealed.
    public let keyID: String
    /// Older keys, during a key rotation: they open what they sealed; only `key` seals.
    public let previous: [SecretBox]

    public init(key: [UInt8], previous: [SecretBox] = []) throws {
        guard key.count == 32 else { throw SecretBoxError.badKey("the master key must be 32 bytes, it is \(key.count)") }
        self.key = key
        self.previous = previous
        keyID = String(Crypto.hex(Crypto.sha256(key)).prefix(8))
    }

    /// The ids of every key this box can open with (the current one first).
    public var keyIDs: [String] { [keyID] + previous.map(\.keyID) }

    /// The box the settings name: TSUBAME_MASTER_KEY_FILE seals and opens; TSUBAME_PREVIOUS_MASTER_KEY_FILES
    /// (comma-separated) only open, while `tsubame rotate-key` re-seals what they sealed.
    public static func load(config: Config) throws -> SecretBox {
        let current = try load(path: config.string("TSUBAME_MASTER_KEY_FILE") ?? "")
        let paths = (config.string("TSUBAME_PREVIOUS_MASTER_KEY_FILES") ?? "").split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return try SecretBox(key: current.key, previous: try paths.map { try load(path: $0) })
    }

    /// Reads a key file (64 hex digits, whitespace ignored). Refuses a file that others may read.
    public static func load(path: String) throws -> SecretBox {
        var st = stat()
        guard stat(path, &st) == 0 else { throw SecretBoxError.badKey("cannot read the master key file \(path): \(String(cString: strerror(errno)))") }
        if st.st_mode & 0o077 != 0 {
            throw SecretBoxError.badKey("the master key file \(path) is readable by group or others: chmod 600 \(path)")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw SecretBoxError.badKey("cannot read the master key file \(path)")
        }
        guard let key = Crypto.fromHex(text.filter { !$0.isWhitespace }) else {
            throw SecretBoxError.badKey("the master key file \(path) must hold 64 hex digits")
        }
        return try SecretBox(key: key)
    }

    /// Creates a new key file with mode 0600; refuses to overwrite.
    public static func createKeyFile(path: String) throws {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw SecretBoxError.badKey("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let text = Array((Crypto.hex(Crypto.randomBytes(32)) + "\n").utf8)
        guard write(fd, text, text.count) == text.count else { throw SecretBoxError.badKey("cannot write \(path)") }
        fchmod(fd, 0o600)
    }

    public func seal(_ plaintext: [UInt8]) throws -> [UInt8] {
        let nonce = Crypto.randomBytes(12)
        guard let ctx = EVP_CIPHER_CTX_new() else { throw CryptoError(operation: "EVP_CIPHER_CTX_new") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        var out = [UInt8](repeating: 0, count: plaintext.count + 16)
        var len: Int32 = 0, total: Int32 = 0
        try check(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, key, nonce), "EncryptInit")
        try check(out.withUnsafeMutableBufferPointer { EVP_EncryptUpdate(ctx, $0.baseAddress, &len, plaintext, Int32(plaintext.count)) }, "EncryptUpdate")
        total = len
        try check(out.withUnsafeMutableBufferPointer { EVP_EncryptFinal_ex(ctx, $0.baseAddress! + Int(total), &len) }, "EncryptFinal")
        total += len
        var tag = [UInt8](repeating: 0, count: 16)
        try check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, &tag), "GetTag")
        return nonce + out[0..<Int(total)] + tag
    }

    /// Opens with the current key, else with a previous one (GCM's tag tells which key sealed it).
    public func open(_ sealed: [UInt8]) throws -> [UInt8] {
        do {
            return try openWithKey(sealed)
        } catch SecretBoxError.corrupt where !previous.isEmpty {
            for old in previous {
                if let plain = try? old.openWithKey(sealed) { return plain }
            }
            throw SecretBoxError.corrupt
        }
    }

    func openWithKey(_ sealed: [UInt8]) throws -> [UInt8] {
        guard sealed.count >= 28 else { throw SecretBoxError.corrupt }
        let nonce = Array(sealed[0..<12]), tag = Array(sealed[(sealed.count - 16)...]), body = Array(sealed[12..<(sealed.count - 16)])
        guard let ctx = EVP_CIPHER_CTX_new() else { throw CryptoError(operation: "EVP_CIPHER_CTX_new") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        var out = [UInt8](repeating: 0, count: body.count + 16)
        var len: Int32 = 0
        try check(EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nil, key, nonce), "DecryptInit")
        try check(out.withUnsafeMutableBufferPointer { EVP_DecryptUpdate(ctx, $0.baseAddress, &len, body, Int32(body.count)) }, "DecryptUpdate")
        let total = len
        var t = tag
        try check(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, &t), "SetTag")
        guard out.withUnsafeMutableBufferPointer({ EVP_DecryptFinal_ex(ctx, $0.baseAddress! + Int(total), &len) }) == 1 else {
            ERR_clear_error()
            throw SecretBoxError.corrupt
        }
        return Array(out[0..<Int(total + len)])
    }
}

public enum SecretBoxError: Error, CustomStringConvertible, Equatable {
    case badKey(String)
    case corrupt
    public var description: String {
        switch self {
        case let .badKey(m): return m
        case .corrupt: return "sealed data failed authentication (wrong master key or corrupted)"
        }
    }
}
