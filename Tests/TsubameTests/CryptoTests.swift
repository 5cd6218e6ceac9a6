// SPDX-License-Identifier: MIT
import Foundation
import Testing
@testable import TsubameCrypto

@Suite struct CryptoTests {
    @Test func sha256AndHMACKnownAnswers() {
        #expect(Crypto.hex(Crypto.sha256(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        // RFC 4231 test case 2.
        #expect(Crypto.hex(Crypto.hmacSHA256(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)))
            == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test func randomTokensAreDistinctAndURLSafe() {
        let a = Crypto.randomToken(), b = Crypto.randomToken()
        #expect(a != b)
        #expect(a.count == 43)
        #expect(!a.contains("+") && !a.contains("/") && !a.contains("="))
        #expect(Crypto.fromHex("zz") == nil)
        #expect(Crypto.fromHex("abc") == nil)
        #expect(Crypto.fromHex("00ff") == [0, 255])
        #expect(Crypto.constantTimeEqual([1, 2], [1, 2]))
        #expect(!Crypto.constantTimeEqual([1, 2], [1, 3]))
        #expect(!Crypto.constantTimeEqual([1], [1, 2]))
    }

    @Test func scryptHashesVerify() throws {
        let h = PasswordHasher(logN: 10)
        let hash = try h.hash("correct horse")
        #expect(hash.hasPrefix("scrypt$10$8$1$"))
        #expect(h.verify("correct horse", against: hash))
        #expect(!h.verify("wrong horse", against: hash))
        #expect(!h.verify("x", against: "scrypt$99$8$1$AA==$AA=="))
        #expect(!h.verify("x", against: "plain"))
        #expect(try h.hash("same") != h.hash("same"))
    }

    @Test func secretBoxSealsAndDetectsTampering() throws {
        let box = try SecretBox(key: Crypto.randomBytes(32))
        let sealed = try box.seal(Array("hunter2".utf8))
        #expect(try box.open(sealed) == Array("hunter2".utf8))
        var bad = sealed
        bad[14] ^= 1
        #expect(throws: SecretBoxError.corrupt) { try box.open(bad) }
        #expect(throws: SecretBoxError.corrupt) { try box.open([1, 2, 3]) }
        let other = try SecretBox(key: Crypto.randomBytes(32))
        #expect(throws: SecretBoxError.corrupt) { try other.open(sealed) }
        #expect(box.keyID.count == 8)
        #expect(throws: SecretBoxError.self) { try SecretBox(key: [1, 2]) }
        #expect(try box.open(try box.seal([])) == [])
    }

    @Test func keyFilesAreCreatedPrivateAndChecked() throws {
        let dir = NSTemporaryDirectory() + "tsb-key-\(UUID())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/master.key"
        try SecretBox.createKeyFile(path: path)
        let attrs = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        #expect(throws: SecretBoxError.self) { try SecretBox.createKeyFile(path: path) }
        let box = try SecretBox.load(path: path)
        #expect(try box.open(try box.seal([7])) == [7])
        chmod(path, 0o644)
        #expect(throws: SecretBoxError.self) { try SecretBox.load(path: path) }
        #expect(throws: SecretBoxError.self) { try SecretBox.load(path: dir + "/missing") }
        let bad = dir + "/bad.key"
        try "not hex".write(toFile: bad, atomically: true, encoding: .utf8)
        chmod(bad, 0o600)
        #expect(throws: SecretBoxError.self) { try SecretBox.load(path: bad) }
        #expect(SecretBoxError.corrupt.description.contains("authentication"))
    }
}
