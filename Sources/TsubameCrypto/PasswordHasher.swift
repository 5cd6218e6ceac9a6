// SPDX-License-Identifier: MIT
// scrypt (N=2^15, r=8, p=1) through EVP_PBE_scrypt. Each hash takes ~32 MiB and
// ~100 ms, so a process hashes at most `maxConcurrent` passwords at once.

public import Foundation
internal import COpenSSL

public struct PasswordHasher: Sendable {
    public let logN: Int
    public let r: Int
    public let p: Int
    static let gate = DispatchSemaphore(value: 2)

    /// Production parameters by default; tests may pass a smaller logN.
    public init(logN: Int = 15, r: Int = 8, p: Int = 1) { self.logN = logN; self.r = r; self.p = p }

    /// `scrypt$logN$r$p$salt$hash`, salt and hash base64.
    public func hash(_ password: String) throws -> String {
        let salt = Crypto.randomBytes(16)
        let dk = try derive(password, salt: salt, logN: logN, r: r, p: p)
        return "scrypt$\(logN)$\(r)$\(p)$\(Data(salt).base64EncodedString())$\(Data(dk).base64EncodedString())"
    }

    /// True when `password` matches `encoded`. A malformed hash never matches.
    public func verify(_ password: String, against encoded: String) -> Bool {
        let parts = encoded.split(separator: "$", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 6, parts[0] == "scrypt", let n = Int(parts[1]), let r = Int(parts[2]), let p = Int(parts[3]),
              (1...20).contains(n), (1...32).contains(r), (1...16).contains(p),
              let salt = Data(base64Encoded: parts[4]), let expected = Data(base64Encoded: parts[5]),
              let dk = try? derive(password, salt: Array(salt), logN: n, r: r, p: p)
        else { return false }
        return Crypto.constantTimeEqual(dk, Array(expected))
    }

    /// A hash of nothing in particular, verified against when a user does not exist so timing matches.
    public static let decoy: String = (try? PasswordHasher().hash(Crypto.randomToken())) ?? "scrypt$15$8$1$AA==$AA=="

    func derive(_ password: String, salt: [UInt8], logN: Int, r: Int, p: Int) throws -> [UInt8] {
        PasswordHasher.gate.wait()
        defer { PasswordHasher.gate.signal() }
        var out = [UInt8](repeating: 0, count: 32)
        let pw = Array(password.utf8)
        let rc = pw.withUnsafeBufferPointer { pwp in
            salt.withUnsafeBufferPointer { sp in
                out.withUnsafeMutableBufferPointer { op in
                    pwp.withMemoryRebound(to: CChar.self) { pwc in
                        // maxmem must cover 128*N*r*p bytes plus slack, else OpenSSL refuses (measured).
                        EVP_PBE_scrypt(pwc.baseAddress, pw.count, sp.baseAddress, salt.count, UInt64(1) << UInt64(logN),
                                       UInt64(r), UInt64(p), 64 * 1024 * 1024, op.baseAddress, 32)
                    }
                }
            }
        }
        try check(rc, "scrypt")
        return out
    }
}
