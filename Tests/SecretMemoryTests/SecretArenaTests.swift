import Foundation
import XCTest
@testable import SecretMemory

final class SecretArenaTests: XCTestCase {
    func testRandomSecretsHaveTheRequestedSizeAndDiffer() throws {
        let arena = try SecretArena()
        let a = try SecretBytes.random(count: 2048, in: arena)
        let b = try SecretBytes.random(count: 2048, in: arena)
        XCTAssertEqual(a.count, 2048)
        XCTAssertFalse(a.constantTimeEquals(b))
        XCTAssertTrue(a.constantTimeEquals(a))
        let zeroes = a.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }
        XCTAssertFalse(zeroes)
    }

    func testCopyAndConstantTimeCompare() throws {
        let arena = try SecretArena()
        let bytes: [UInt8] = Array("correct horse battery staple".utf8)
        let secret = try bytes.withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
        XCTAssertEqual(secret.withUnsafeBytes { Array($0) }, bytes)
        XCTAssertTrue(bytes.withUnsafeBytes { secret.constantTimeEquals($0) })
        var other = bytes
        other[other.count - 1] ^= 1
        XCTAssertFalse(other.withUnsafeBytes { secret.constantTimeEquals($0) })
        XCTAssertFalse(Array(bytes.dropLast()).withUnsafeBytes { secret.constantTimeEquals($0) })
    }

    func testReleasedSlotIsZeroedAndReused() throws {
        let arena = try SecretArena()
        let bytes = [UInt8](repeating: 0xA5, count: 100)
        var secret: SecretBytes? = try bytes.withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
        let address = secret!.withUnsafeBytes { UnsafeRawPointer($0.baseAddress!) }
        XCTAssertEqual(arena.statistics.liveSecrets, 1)
        secret = nil
        XCTAssertEqual(arena.statistics.liveSecrets, 0)
        // The chunk stays mapped by the arena, so the old location can be inspected.
        let leftover = UnsafeRawBufferPointer(start: address, count: 128)
        XCTAssertTrue(leftover.allSatisfy { $0 == 0 }, "released secret memory must be zeroed")
        let reused = try SecretBytes.random(count: 120, in: arena)
        XCTAssertEqual(reused.withUnsafeBytes { UnsafeRawPointer($0.baseAddress!) }, address, "same size class reuses the slot")
    }

    func testThousandsOfKeysShareFewLockedChunks() throws {
        let arena = try SecretArena()
        let keys = try (0..<4000).map { _ in try SecretBytes.random(count: 2048, in: arena) }
        let stats = arena.statistics
        XCTAssertEqual(stats.liveSecrets, 4000)
        XCTAssertEqual(stats.liveBytes, 4000 * 2048)
        // Page and guard overhead would be ~3 pages per key with one sodium_malloc each (~48 MiB);
        // the arena reserves what the keys need plus at most one chunk.
        XCTAssertLessThanOrEqual(stats.reservedBytes, 4000 * 2048 + 256 * 1024)
        XCTAssertEqual(stats.lockedBytes + (stats.lockFailures > 0 ? stats.reservedBytes - stats.lockedBytes : 0), stats.reservedBytes)
        print("4000 x 2048-byte keys: reserved \(stats.reservedBytes) B, locked \(stats.lockedBytes) B, lock failures \(stats.lockFailures)")
        XCTAssertEqual(keys.count, 4000)
    }

    func testBase64MatchesFoundation() throws {
        let arena = try SecretArena()
        for size in [1, 2, 3, 16, 2048, 2049] {
            let secret = try SecretBytes.random(count: size, in: arena)
            var out = [UInt8](repeating: 0, count: SecretBytes.base64Length(size))
            let written = out.withUnsafeMutableBytes { secret.writeBase64(into: $0) }
            XCTAssertEqual(written, out.count)
            let expected = secret.withUnsafeBytes { Data($0).base64EncodedString() }
            XCTAssertEqual(String(decoding: out, as: UTF8.self), expected)
        }
    }

    func testInvalidSizesAreRejected() throws {
        let arena = try SecretArena()
        XCTAssertThrowsError(try SecretBytes.random(count: 0, in: arena)) { error in
            XCTAssertEqual(error as? SecretMemoryError, .invalidSize(0))
        }
        XCTAssertThrowsError(try SecretBytes.random(count: SecretArena.maxSecretSize + 1, in: arena))
    }

    func testKeyedFingerprintDependsOnKeyAndSecret() throws {
        let arena = try SecretArena()
        let s = try [UInt8](repeating: 7, count: 32).withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
        let t = try [UInt8](repeating: 7, count: 32).withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
        let u = try [UInt8](repeating: 8, count: 32).withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
        let key1 = blake2b(Array("a".utf8)), key2 = blake2b(Array("b".utf8))
        XCTAssertEqual(s.keyedFingerprint(key: key1), t.keyedFingerprint(key: key1))
        XCTAssertNotEqual(s.keyedFingerprint(key: key1), u.keyedFingerprint(key: key1))
        XCTAssertNotEqual(s.keyedFingerprint(key: key1), s.keyedFingerprint(key: key2))
    }
}
