import Dispatch
import KeyCrypto
import SecretMemory
import Synchronization
import XCTest

final class KeyCryptoTests: XCTestCase {
    let arena = try! SecretArena()

    func secret(_ bytes: [UInt8]) throws -> SecretBytes {
        try bytes.withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
    }

    func bytes(hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var chars = Array(hex.utf8)[...]
        while chars.count >= 2 {
            out.append(UInt8(String(decoding: chars.prefix(2), as: UTF8.self), radix: 16)!)
            chars = chars.dropFirst(2)
        }
        return out
    }

    /// RFC 4231 section 4, test cases 1 to 7, for the three digests the key store offers
    /// (case 5 defines only the first 128 bits of each MAC).
    func testRFC4231Vectors() throws {
        struct Case {
            let key: [UInt8], data: [UInt8], sha256: String, sha384: String, sha512: String
            var truncatedTo: Int? = nil
        }
        let block131 = [UInt8](repeating: 0xaa, count: 131)
        let cases = [
            Case(key: [UInt8](repeating: 0x0b, count: 20), data: Array("Hi There".utf8),
                 sha256: "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
                 sha384: "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
                 sha512: "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
            Case(key: Array("Jefe".utf8), data: Array("what do ya want for nothing?".utf8),
                 sha256: "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
                 sha384: "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
                 sha512: "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
            Case(key: [UInt8](repeating: 0xaa, count: 20), data: [UInt8](repeating: 0xdd, count: 50),
                 sha256: "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
                 sha384: "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27",
                 sha512: "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb"),
            Case(key: Array(1...25), data: [UInt8](repeating: 0xcd, count: 50),
                 sha256: "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
                 sha384: "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb",
                 sha512: "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3dba91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd"),
            Case(key: [UInt8](repeating: 0x0c, count: 20), data: Array("Test With Truncation".utf8),
                 sha256: "a3b6167473100ee06e0c796c2955552b", sha384: "3abf34c3503b2a23a46efc619baef897",
                 sha512: "415fad6271580a531d4179bc891d87a6", truncatedTo: 16),
            Case(key: block131, data: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
                 sha256: "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
                 sha384: "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
                 sha512: "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"),
            Case(key: block131, data: Array(("This is a test using a larger than block-size key and a larger than block-size data. "
                                             + "The key needs to be hashed before being used by the HMAC algorithm.").utf8),
                 sha256: "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
                 sha384: "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5a678cc31e799176d3860e6110c46523e",
                 sha512: "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58"),
        ]
        for (number, c) in cases.enumerated() {
            let key = try secret(c.key)
            for (algorithm, expected) in [(HMACAlgorithm.sha256, c.sha256), (.sha384, c.sha384), (.sha512, c.sha512)] {
                let mac = try KeyCrypto.hmac(algorithm: algorithm, key: key, input: c.data)
                XCTAssertEqual(mac.count, algorithm.macByteCount)
                let compared = c.truncatedTo.map { Array(mac.prefix($0)) } ?? mac
                XCTAssertEqual(compared, bytes(hex: expected), "RFC 4231 case \(number + 1), \(algorithm)")
                if c.truncatedTo == nil {
                    XCTAssertEqual(try KeyCrypto.verify(algorithm: algorithm, keys: [key], input: c.data, mac: bytes(hex: expected)), 0)
                }
            }
        }
    }

    func testVerifyAcceptsAnyActiveKeyAndReportsWhichOne() throws {
        let keys = try (0..<4).map { i in try secret([UInt8](repeating: UInt8(i + 1), count: 64)) }
        let input = Array("access\u{0}alice@localhost\u{0}63900000000".utf8)
        for algorithm in HMACAlgorithm.allCases {
            for (index, key) in keys.enumerated() {
                let mac = try KeyCrypto.hmac(algorithm: algorithm, key: key, input: input)
                XCTAssertEqual(try KeyCrypto.verify(algorithm: algorithm, keys: keys, input: input, mac: mac), index)
                XCTAssertNil(try KeyCrypto.verify(algorithm: algorithm, keys: keys.filter { $0 !== key }, input: input, mac: mac))
                // Every bit matters.
                for bit in [0, 7, mac.count * 8 - 1] {
                    var flipped = mac
                    flipped[bit / 8] ^= UInt8(1 << (bit % 8))
                    XCTAssertNil(try KeyCrypto.verify(algorithm: algorithm, keys: keys, input: input, mac: flipped))
                }
                XCTAssertNil(try KeyCrypto.verify(algorithm: algorithm, keys: keys, input: input + [0], mac: mac))
            }
            let mac = try KeyCrypto.hmac(algorithm: algorithm, key: keys[0], input: input)
            XCTAssertNil(try KeyCrypto.verify(algorithm: algorithm, keys: [], input: input, mac: mac))
            XCTAssertNil(try KeyCrypto.verify(algorithm: algorithm, keys: keys, input: input, mac: Array(mac.dropLast())))
            XCTAssertNil(try KeyCrypto.verify(algorithm: algorithm, keys: keys, input: input, mac: []))
            // The same key twice: the first position is reported.
            XCTAssertEqual(try KeyCrypto.verify(algorithm: algorithm, keys: [keys[1], keys[0], keys[0]], input: input, mac: mac), 1)
        }
        // Algorithms are not interchangeable even where a MAC is a prefix-length match.
        let mac256 = try KeyCrypto.hmac(algorithm: .sha256, key: keys[0], input: input)
        XCTAssertNil(try KeyCrypto.verify(algorithm: .sha384, keys: keys, input: input, mac: mac256))
    }

    func testEmptyAndLargeInputsAndConcurrentUse() throws {
        let key = try secret(Array("key".utf8))
        // HMAC-SHA256("key", "") from RFC 2104's construction, as computed by every HMAC library.
        XCTAssertEqual(try KeyCrypto.hmac(algorithm: .sha256, key: key, input: []),
                       bytes(hex: "5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0"))
        let large = [UInt8](repeating: 0x61, count: 1 << 20)
        let reference = try KeyCrypto.hmac(algorithm: .sha512, key: key, input: large)
        let matches = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 32) { _ in
            if (try? KeyCrypto.hmac(algorithm: .sha512, key: key, input: large)) == reference {
                matches.withLock { $0 += 1 }
            }
        }
        XCTAssertEqual(matches.withLock { $0 }, 32, "the shared EVP_MAC is usable from many threads")
    }
}
