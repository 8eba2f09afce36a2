import Membership
import NIOCore
import PeerWire
import Replication
import ReplicatedStore
import SecretMemory
import TestSupport
import XCTest

final class PeerFrameCodecTests: XCTestCase {
    let arena = try! SecretArena()

    private func roundTrip(_ message: PeerMessage) throws -> PeerMessage {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        try PeerFrameCodec.encode(message, into: &buffer)
        let frame = try XCTUnwrap(try PeerFrameCodec.nextFrame(from: &buffer))
        XCTAssertEqual(buffer.readableBytes, 0)
        return try PeerFrameCodec.decode(frame, arena: arena)
    }

    private func secret(_ bytes: [UInt8]) throws -> SecretBytes {
        try bytes.withUnsafeBytes { try SecretBytes.copy(of: $0, in: arena) }
    }

    func testEveryMessageRoundTrips() throws {
        let stamp = HLCTimestamp(wallMillis: 1_700_000_000_123, logical: 7)
        let hello = PeerHello(cluster: "prod", node: "node1", instance: 42, address: "127.0.0.1:7401", softwareVersion: "0.1.0", stamp: stamp)
        guard case .hello(let h) = try roundTrip(.hello(hello)) else { return XCTFail() }
        XCTAssertEqual(h, hello)

        let gossip = [GossipUpdate(node: "node2", address: "[::1]:7402", instance: 9, incarnation: 3, status: .suspect)]
        for swim: SWIMMessage in [.ping(sequence: 1, gossip: gossip), .pingRequest(sequence: 2, target: "node3", targetAddress: "h:1", gossip: []),
                                  .ack(sequence: 3, target: "node3", gossip: gossip), .nack(sequence: 4, target: "node3")] {
            guard case .swim(let decoded) = try roundTrip(.swim(swim)) else { return XCTFail() }
            XCTAssertEqual(decoded, swim)
        }
        guard case .replication(.digest(let root), let s) = try roundTrip(.replication(.digest(root: 0xDEAD_BEEF_0102_0304), stamp: stamp)) else { return XCTFail() }
        XCTAssertEqual(root, 0xDEAD_BEEF_0102_0304)
        XCTAssertEqual(s, stamp)
        guard case .replication(.bucketDigests(let digests, nil), _) = try roundTrip(.replication(.bucketDigests([1, 2, UInt64.max], sections: nil), stamp: stamp)) else { return XCTFail() }
        XCTAssertEqual(digests, [1, 2, UInt64.max])
        guard case .replication(.syncDone(let ready), _) = try roundTrip(.replication(.syncDone(ready: true), stamp: stamp)) else { return XCTFail() }
        XCTAssertTrue(ready)
        guard case .replication(.syncRequest(nil), let rs) = try roundTrip(.replication(.syncRequest(durableDigests: nil), stamp: stamp)) else { return XCTFail() }
        XCTAssertEqual(rs, stamp)
    }

    func testAStateRequestCarriesTheDurableDigestsOnlyToPeersThatDecodeThem() throws {
        let stamp = HLCTimestamp(wallMillis: 7, logical: 1)
        let digests: [UInt64] = [0, 1, UInt64.max, 42]
        guard case .replication(.syncRequest(let decoded), let s) = try roundTrip(.replication(.syncRequest(durableDigests: digests), stamp: stamp))
        else { return XCTFail() }
        XCTAssertEqual(decoded, digests)
        XCTAssertEqual(s, stamp)
        // 0.1 refuses trailing bytes after the stamp: it gets the bare request (and answers with
        // its full state), byte for byte what it always got.
        var old = ByteBufferAllocator().buffer(capacity: 64), bare = ByteBufferAllocator().buffer(capacity: 64)
        try PeerFrameCodec.encode(.replication(.syncRequest(durableDigests: digests), stamp: stamp), into: &old, for: .version0_1)
        try PeerFrameCodec.encode(.replication(.syncRequest(durableDigests: nil), stamp: stamp), into: &bare)
        XCTAssertEqual(old, bare)
        let frame = try XCTUnwrap(try PeerFrameCodec.nextFrame(from: &old))
        guard case .replication(.syncRequest(nil), _) = try PeerFrameCodec.decode(frame, arena: arena) else { return XCTFail() }
        // A hostile count is checked against the bytes that follow, and a cut digest is named.
        var hostile = ByteBufferAllocator().buffer(capacity: 64)
        try PeerFrameCodec.encode(.replication(.syncRequest(durableDigests: nil), stamp: stamp), into: &hostile)
        var body = Array(hostile.readableBytesView.dropFirst(4))
        body += [0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]
        var cut = ByteBufferAllocator().buffer(capacity: 64)
        cut.writeInteger(UInt32(body.count))
        cut.writeBytes(body)
        let hostileFrame = try XCTUnwrap(try PeerFrameCodec.nextFrame(from: &cut))
        XCTAssertThrowsError(try PeerFrameCodec.decode(hostileFrame, arena: arena)) { error in
            XCTAssertEqual(error as? PeerWireError, .truncated("durable bucket digests"))
        }
    }

    func testOnlyDialersFromVersion02OnTakeAnswersOnTheirOwnConnection() {
        // 0.1.0 closes a dialed connection on which anything arrives: it must get nothing there.
        for old in ["0.1.0", "0.1.9", "0.0.1", "", "garbage", "0", "0.x.1", "-1.5.0"] {
            XCTAssertFalse(PeerWireFeatures(peerSoftwareVersion: old).answersOnDialedConnection, old)
        }
        for new in ["0.2.0", "0.2.0-dev", "0.10.1", "1.0.0"] {
            XCTAssertTrue(PeerWireFeatures(peerSoftwareVersion: new).answersOnDialedConnection, new)
        }
    }

    /// Section digests and per-bucket section masks reach a current peer; a 0.1 peer gets the
    /// bare bucket digests and a whole-bucket repair (tag 1), byte for byte what it always got.
    func testSectionDigestsAndSectionRepairsGoOnlyToPeersThatDecodeThem() throws {
        let stamp = HLCTimestamp(wallMillis: 7, logical: 1)
        let sections = SectionDigests(keyVersions: [1, 2, 3], pskFingerprints: [4, 5, UInt16.max], durable: [0, 0, 9])
        guard case .replication(.bucketDigests(let digests, let decoded), _) =
                try roundTrip(.replication(.bucketDigests([7, 8, 9], sections: sections), stamp: stamp)) else { return XCTFail() }
        XCTAssertEqual(digests, [7, 8, 9])
        XCTAssertEqual(decoded, sections)
        var old = ByteBufferAllocator().buffer(capacity: 64), bare = ByteBufferAllocator().buffer(capacity: 64)
        try PeerFrameCodec.encode(.replication(.bucketDigests([7, 8, 9], sections: sections), stamp: stamp), into: &old, for: .version0_1)
        try PeerFrameCodec.encode(.replication(.bucketDigests([7, 8, 9], sections: nil), stamp: stamp), into: &bare)
        XCTAssertEqual(old, bare)

        let repair = DeltaPurpose.repair(buckets: [0, 5, 63], sections: [.pskFingerprints, [.keyVersions, .durable], .all])
        guard case .replication(.delta(_, let purpose), _) = try roundTrip(.replication(.delta(WireDelta(), purpose: repair), stamp: stamp))
        else { return XCTFail() }
        XCTAssertEqual(purpose, repair)
        old.clear(); bare.clear()
        try PeerFrameCodec.encode(.replication(.delta(WireDelta(), purpose: repair), stamp: stamp), into: &old, for: .version0_1)
        try PeerFrameCodec.encode(.replication(.delta(WireDelta(), purpose: .repair(buckets: [0, 5, 63], sections: [.all, .all, .all])),
                                               stamp: stamp), into: &bare)
        XCTAssertEqual(old, bare, "an old peer is asked for whole buckets")
    }

    func testDeltaCarriesSecretsIntoProtectedMemory() throws {
        let key = KeyRef(domain: "first.com", name: "token_secret")
        let version = KeyVersion(id: VersionID(created: HLCTimestamp(wallMillis: 5, logical: 1), origin: "node1"), generation: 2)
        let bytes = (0..<2048).map { UInt8($0 & 0xFF) }
        let fp = PSKFingerprint(node: "node2", key: KeyRef(domain: "first.com", name: "psk"), fingerprint: [1, 2, 3], stamp: HLCTimestamp(wallMillis: 9, logical: 0))
        let delta = WireDelta(versions: [WireKeyVersion(key: key, version: version, secret: try secret(bytes))], pskFingerprints: [fp])
        for purpose: DeltaPurpose in [.push, .repair(buckets: [0, 63], sections: [.all, .durable]), .repairReply, .sync] {
            guard case .replication(.delta(let decoded, let p), _) = try roundTrip(.replication(.delta(delta, purpose: purpose), stamp: .zero)) else { return XCTFail() }
            XCTAssertEqual(p, purpose)
            XCTAssertEqual(decoded.versions.count, 1)
            XCTAssertEqual(decoded.versions[0].key, key)
            XCTAssertEqual(decoded.versions[0].version, version)
            XCTAssertEqual(decoded.versions[0].secret.withUnsafeBytes { Array($0) }, bytes)
            XCTAssertEqual(decoded.pskFingerprints, [fp])
            XCTAssertEqual(decoded.storeDelta.keyVersions[key], [version])
        }
    }

    func testCertificateRecordsAndTombstonesRoundTrip() throws {
        let id = CertificateID(domain: "first.com", user: "alice@first.com", sha256: Array(repeating: 0xAB, count: 32))
        let content = CertificateContent(name: "phone", der: [0x30, 0x03, 0x02, 0x01, 0x01], notBeforeMillis: -5, notAfterMillis: 9_999,
                                         jids: ["alice@first.com", "alice@first.com/x"], noCertManagement: true,
                                         added: HLCTimestamp(wallMillis: 7, logical: 1), origin: "node1")
        let removal = CertificateRemoval(kind: .revoked, stamp: HLCTimestamp(wallMillis: 8, logical: 0), origin: "node2")
        let records = [CertificateRecord(id: id, content: content, removal: nil),
                       CertificateRecord(id: id, content: content, removal: removal),
                       CertificateRecord(id: id, content: nil, removal: removal)]
        guard case .replication(.delta(let decoded, _), _) = try roundTrip(.replication(.delta(WireDelta(certificates: records), purpose: .push), stamp: .zero)) else { return XCTFail() }
        XCTAssertEqual(decoded.certificates, records)
        XCTAssertEqual(decoded.storeDelta.certificates, records)
    }

    func testLargeDeltasAreChunkedUnderTheFrameLimit() throws {
        let versions = try (0..<3000).map { i in
            WireKeyVersion(key: KeyRef(domain: "d", name: "k\(i)"),
                           version: KeyVersion(id: VersionID(created: HLCTimestamp(wallMillis: UInt64(i), logical: 0), origin: "n"), generation: 0),
                           secret: try SecretBytes.random(count: 2048, in: arena))
        }
        let chunks = PeerFrameCodec.chunks(of: WireDelta(versions: versions))
        XCTAssertGreaterThan(chunks.count, 1)
        XCTAssertEqual(chunks.reduce(0) { $0 + $1.versions.count }, 3000)
        for chunk in chunks {
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            try PeerFrameCodec.encode(.replication(.delta(chunk, purpose: .sync), stamp: .zero), into: &buffer)
            XCTAssertLessThanOrEqual(buffer.readableBytes, PeerFrameCodec.maxFrameBytes)
        }
    }

    func testPartialFramesWaitForMoreBytes() throws {
        var whole = ByteBufferAllocator().buffer(capacity: 64)
        try PeerFrameCodec.encode(.replication(.digest(root: 1), stamp: .zero), into: &whole)
        for cut in 0..<whole.readableBytes {
            var part = whole.getSlice(at: 0, length: cut)!
            XCTAssertNil(try PeerFrameCodec.nextFrame(from: &part), "cut at \(cut)")
        }
    }

    func testMalformedFramesAreRejectedWithClearErrors() throws {
        func frame(_ bytes: [UInt8]) -> ByteBuffer {
            var b = ByteBufferAllocator().buffer(capacity: bytes.count + 4)
            b.writeInteger(UInt32(bytes.count)); b.writeBytes(bytes)
            return b
        }
        func decodeError(_ bytes: [UInt8]) -> PeerWireError? {
            var b = frame(bytes)
            do {
                guard let body = try PeerFrameCodec.nextFrame(from: &b) else { return nil }
                _ = try PeerFrameCodec.decode(body, arena: arena)
                return nil
            } catch { return error }
        }
        XCTAssertEqual(decodeError([2, 1]), .unsupportedVersion(2))
        XCTAssertEqual(decodeError([1, 99]), .unknownMessageType(99))
        XCTAssertEqual(decodeError([1, 3, 0, 0]), .truncated("digest"))
        // A hostile list count must not allocate: it is checked against the remaining bytes.
        XCTAssertEqual(decodeError([1, 4] + [UInt8](repeating: 0, count: 12) + [0xFF, 0xFF, 0xFF, 0xFF]), .truncated("bucket digests"))
        // Invalid UTF-8 in a string: a bad continuation, an overlong '/', an encoded surrogate, a
        // lone continuation after ASCII (strings are read in place, ASCII on a fast path).
        XCTAssertEqual(decodeError([1, 1, 0, 2, 0xC3, 0x28]), .invalidField("cluster name (not UTF-8)"))
        XCTAssertEqual(decodeError([1, 1, 0, 2, 0xC0, 0xAF]), .invalidField("cluster name (not UTF-8)"))
        XCTAssertEqual(decodeError([1, 1, 0, 3, 0xED, 0xA0, 0x80]), .invalidField("cluster name (not UTF-8)"))
        XCTAssertEqual(decodeError([1, 1, 0, 3, 0x61, 0x62, 0x80]), .invalidField("cluster name (not UTF-8)"))
        XCTAssertEqual(decodeError([1, 1, 0, 3, 0x61, 0x62]), .truncated("cluster name"))
        XCTAssertEqual(decodeError([1, 1, 0]), .truncated("cluster name length"))
        // Valid non-ASCII strings decode to the same text.
        let accented = PeerHello(cluster: "zoé", node: "nöde-ü", instance: 1, address: "[::1]:7401", softwareVersion: "0.2.0",
                                 stamp: .zero)
        guard case .hello(let decoded) = try roundTrip(.hello(accented)) else { return XCTFail("not a hello") }
        XCTAssertEqual(decoded, accented)
        // Trailing garbage after a valid message.
        var digest = ByteBufferAllocator().buffer(capacity: 32)
        try PeerFrameCodec.encode(.replication(.syncDone(ready: true), stamp: .zero), into: &digest)
        var body = Array(digest.readableBytesView.dropFirst(4))
        body.append(0)
        XCTAssertEqual(decodeError(body), .trailingBytes(1))
        // Oversized length prefix is refused before buffering the frame.
        var huge = ByteBufferAllocator().buffer(capacity: 8)
        huge.writeInteger(UInt32(PeerFrameCodec.maxFrameBytes + 1))
        XCTAssertThrowsError(try PeerFrameCodec.nextFrame(from: &huge)) { error in
            XCTAssertEqual(error as? PeerWireError, .frameTooLarge(PeerFrameCodec.maxFrameBytes + 1, limit: PeerFrameCodec.maxFrameBytes))
        }
        // Zero-length secret.
        var zero = ByteBufferAllocator().buffer(capacity: 64)
        zero.writeBytes([1, 5]); zero.writeInteger(UInt64(0)); zero.writeInteger(UInt32(0)); zero.writeInteger(UInt8(0))
        zero.writeInteger(UInt32(1)); zero.writeInteger(UInt16(1)); zero.writeBytes([UInt8(ascii: "d")]); zero.writeInteger(UInt16(1)); zero.writeBytes([UInt8(ascii: "k")])
        zero.writeInteger(UInt64(1)); zero.writeInteger(UInt32(0)); zero.writeInteger(UInt16(1)); zero.writeBytes([UInt8(ascii: "n")])
        zero.writeInteger(UInt32(0)); zero.writeInteger(UInt32(0)); zero.writeInteger(UInt32(0))
        XCTAssertEqual(decodeError(Array(zero.readableBytesView)), .invalidField("secret length 0"))
    }

    func testRandomBytesNeverCrashTheDecoder() throws {
        var generator = SplitMix64(seed: 0x5EED)
        for _ in 0..<20_000 {
            let length = Int(generator.next() % 64)
            var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            if !bytes.isEmpty { bytes[0] = 1 } // mostly the right version, to reach deeper code
            var b = ByteBufferAllocator().buffer(capacity: length + 4)
            b.writeInteger(UInt32(length)); b.writeBytes(bytes)
            if let body = try? PeerFrameCodec.nextFrame(from: &b) {
                _ = try? PeerFrameCodec.decode(body, arena: arena)
            }
        }
    }
}

final class PeerFrameStringLimitTests: XCTestCase {
    /// A string longer than a frame allows is refused by the encoder, never cut short and sent.
    func testAnOverlongStringIsRefusedNotTruncated() throws {
        let hello = PeerHello(cluster: String(repeating: "c", count: 1500), node: "node1", instance: 1, address: "127.0.0.1:1",
                              softwareVersion: "0.2.0", stamp: .zero)
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        XCTAssertThrowsError(try PeerFrameCodec.encode(.hello(hello), into: &buffer)) { error in
            XCTAssertEqual(error as? PeerWireError, .fieldTooLong(bytes: 1500, limit: 1024))
        }
        var fits = hello
        fits.cluster = String(repeating: "c", count: 1024)
        buffer.clear()
        try PeerFrameCodec.encode(.hello(fits), into: &buffer)
        guard let frame = try PeerFrameCodec.nextFrame(from: &buffer),
              case .hello(let decoded) = try PeerFrameCodec.decode(frame, arena: try SecretArena()) else { return XCTFail("no hello") }
        XCTAssertEqual(decoded.cluster.utf8.count, 1024)
    }
}

/// What anti-entropy costs on the wire at 10,000 RAM keys (2 KiB each), computed from the real
/// frames the shell sends: replicas that agree exchange one digest; a one-entry difference adds
/// the bucket digests and that bucket's entries in each direction.
final class AntiEntropyCostTests: XCTestCase {
    func testBytesPerRoundForAgreeingAndOneEntryDifferentReplicas() throws {
        let arena = try SecretArena()
        var secrets: [VersionID: SecretBytes] = [:]
        func frameBytes(_ message: PeerMessage) -> Int {
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            XCTAssertNoThrow(try PeerFrameCodec.encode(message, into: &buffer))
            return buffer.readableBytes
        }
        func wire(_ delta: StoreDelta) -> WireDelta {
            var w = WireDelta()
            for (key, versions) in delta.keyVersions {
                for v in versions { w.versions.append(WireKeyVersion(key: key, version: v, secret: secrets[v.id]!)) }
            }
            return w
        }
        var report: [String] = []
        var fullStateBytes = 0
        for buckets in [64, 1024] {
            var a = ReplicatedStore(graceMillis: 3_600_000, bucketCount: buckets)
            for i in 0..<10_000 {
                let id = VersionID(created: HLCTimestamp(wallMillis: 1_000, logical: UInt32(i)), origin: "node1")
                if secrets[id] == nil { secrets[id] = try SecretBytes.random(count: 2048, in: arena) }
                _ = a.createInitialVersion(of: KeyRef(domain: "d\(i % 100).example", name: "k\(i)"), id: id)
            }
            var b = a
            let agree = frameBytes(.replication(.digest(root: a.rootDigest()), stamp: .zero))
            XCTAssertEqual(a.rootDigest(), b.rootDigest())
            // One entry differs: a rotation B has not heard of.
            let rotated = VersionID(created: HLCTimestamp(wallMillis: 2_000, logical: 0), origin: "node2")
            secrets[rotated] = try SecretBytes.random(count: 2048, in: arena)
            _ = b.rotate(KeyRef(domain: "d7.example", name: "k7"), id: rotated)
            let differing = a.differingBuckets(mine: a.bucketDigests(), theirs: b.bucketDigests())
            XCTAssertEqual(differing.count, 1)
            let sections = a.sectionDigests().differingSections(from: b.sectionDigests(), in: differing)
            XCTAssertEqual(sections, [.keyVersions])
            let repair = PeerFrameCodec.chunks(of: wire(a.delta(forBuckets: differing, sections: sections))).reduce(0) {
                $0 + frameBytes(.replication(.delta($1, purpose: .repair(buckets: differing, sections: sections)), stamp: .zero))
            }
            let reply = PeerFrameCodec.chunks(of: wire(b.delta(forBuckets: differing, sections: sections))).reduce(0) {
                $0 + frameBytes(.replication(.delta($1, purpose: .repairReply), stamp: .zero))
            }
            let digests = frameBytes(.replication(.bucketDigests(b.bucketDigests(), sections: b.sectionDigests()), stamp: .zero))
            let oneDiff = agree + digests + repair + reply
            fullStateBytes = PeerFrameCodec.chunks(of: wire(a.fullDelta())).reduce(0) { $0 + frameBytes(.replication(.delta($1, purpose: .sync), stamp: .zero)) }
            report.append("\(buckets) buckets: agree \(agree) B, one entry differs \(oneDiff) B")
            if buckets == 1024 {
                XCTAssertLessThan(oneDiff, fullStateBytes / 100, "a one-entry repair must cost a small fraction of the state")
            }
        }
        print("anti-entropy at 10,000 keys (full state \(fullStateBytes) B): " + report.joined(separator: "; "))
    }
}
