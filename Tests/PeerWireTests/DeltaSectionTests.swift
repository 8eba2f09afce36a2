import NIOCore
import PeerWire
import Replication
import ReplicatedStore
import SecretMemory
import XCTest

/// Token sequence floors on the wire, compacted certificate records, and what a 0.1.0 peer gets.
final class DeltaSectionTests: XCTestCase {
    let arena = try! SecretArena()
    let id = CertificateID(domain: "first.com", user: "alice@first.com", sha256: Array(repeating: 0xAB, count: 32))
    let revocation = CertificateRemoval(kind: .revoked, stamp: HLCTimestamp(wallMillis: 8, logical: 1), origin: "node2")

    func compacted() -> CertificateRecord {
        let content = CertificateContent(name: "phone", der: [], notBeforeMillis: -5, notAfterMillis: 9_999,
                                         jids: ["alice@first.com"], noCertManagement: false,
                                         added: HLCTimestamp(wallMillis: 7, logical: 0), origin: "node1")
        return CertificateRecord(id: id, content: content, removal: revocation)
    }

    func floors(_ count: Int) -> [TokenSequenceFloor] {
        (0..<count).map {
            TokenSequenceFloor(domain: "first.com", user: "user\($0)@first.com", floor: UInt64($0) + 2,
                               stamp: HLCTimestamp(wallMillis: UInt64($0), logical: 3), origin: "node\($0 % 3)")
        }
    }

    func frameBody(_ message: PeerMessage, for features: PeerWireFeatures = .current) throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        try PeerFrameCodec.encode(message, into: &buffer, for: features)
        let body = try XCTUnwrap(try PeerFrameCodec.nextFrame(from: &buffer))
        XCTAssertEqual(buffer.readableBytes, 0)
        return body
    }

    func decodedDelta(_ body: ByteBuffer) throws -> WireDelta {
        guard case .replication(.delta(let delta, _), _) = try PeerFrameCodec.decode(body, arena: arena) else {
            XCTFail("not a delta"); return WireDelta()
        }
        return delta
    }

    func decodeError(_ body: [UInt8]) -> PeerWireError? {
        var b = ByteBufferAllocator().buffer(capacity: body.count)
        b.writeBytes(body)
        do { _ = try PeerFrameCodec.decode(b, arena: arena); return nil } catch { return error }
    }

    func testFloorsAndCompactedRecordsRoundTripBetweenCurrentPeers() throws {
        let delta = WireDelta(certificates: [compacted()], tokenSequenceFloors: floors(3) + [
            TokenSequenceFloor(domain: "d", user: "u", floor: UInt64.max, stamp: HLCTimestamp(wallMillis: UInt64.max, logical: UInt32.max),
                               origin: "ü-node")])
        for purpose: DeltaPurpose in [.push, .repair(buckets: [1], sections: [.all]), .repairReply, .sync] {
            let decoded = try decodedDelta(try frameBody(.replication(.delta(delta, purpose: purpose), stamp: .zero)))
            XCTAssertEqual(decoded.certificates, delta.certificates)
            XCTAssertEqual(decoded.tokenSequenceFloors, delta.tokenSequenceFloors)
            XCTAssertEqual(decoded.storeDelta.tokenSequenceFloors, delta.tokenSequenceFloors)
            XCTAssertFalse(decoded.isEmpty)
        }
        XCTAssertFalse(WireDelta(tokenSequenceFloors: floors(1)).isEmpty)
    }

    /// What a 0.1.0 node receives: no floor section, and a revoked record without its DER as a
    /// bare tombstone. Pinned byte for byte against the 0.1.0 layout, whose decoder refuses a
    /// certificate of length 0 and any byte after the certificate list.
    func testAVersion010PeerGetsExactlyThe010Format() throws {
        let stamp = HLCTimestamp(wallMillis: 0x0102_0304_0506_0708, logical: 9)
        let delta = WireDelta(certificates: [compacted()], tokenSequenceFloors: floors(2))
        let body = try frameBody(.replication(.delta(delta, purpose: .push), stamp: stamp), for: PeerWireFeatures(peerSoftwareVersion: "0.1.0"))

        var expected = ByteBufferAllocator().buffer(capacity: 128)
        func string(_ s: String) { expected.writeInteger(UInt16(s.utf8.count)); expected.writeBytes(Array(s.utf8)) }
        expected.writeBytes([1, 5])                                   // wire version 1, delta
        expected.writeInteger(stamp.wallMillis); expected.writeInteger(stamp.logical)
        expected.writeInteger(UInt8(0))                               // push
        expected.writeInteger(UInt32(0)); expected.writeInteger(UInt32(0))   // no versions, no fingerprints
        expected.writeInteger(UInt32(1))                              // one certificate record
        string("first.com"); string("alice@first.com")
        expected.writeInteger(UInt8(32)); expected.writeBytes(id.sha256)
        expected.writeInteger(UInt8(0))                               // no content: a bare tombstone
        expected.writeInteger(RemovalKind.revoked.rawValue)
        expected.writeInteger(revocation.stamp.wallMillis); expected.writeInteger(revocation.stamp.logical)
        string("node2")
        XCTAssertEqual(Array(body.readableBytesView), Array(expected.readableBytesView))

        let decoded = try decodedDelta(body)
        XCTAssertEqual(decoded.certificates, [CertificateRecord(id: id, content: nil, removal: revocation)])
        XCTAssertEqual(decoded.tokenSequenceFloors, [])

        // A record that still has its DER (live or disabled) goes to a 0.1.0 peer unchanged.
        var live = compacted()
        live.content?.der = [0x30, 0x00]
        live.removal = CertificateRemoval(kind: .disabled, stamp: revocation.stamp, origin: "node2")
        let old = try decodedDelta(try frameBody(.replication(.delta(WireDelta(certificates: [live]), purpose: .push), stamp: .zero),
                                                 for: .version0_1))
        XCTAssertEqual(old.certificates, [live])
        // And a delta without floors or compacted records is the same bytes for both versions.
        let plain = WireDelta(certificates: [live])
        XCTAssertEqual(Array(try frameBody(.replication(.delta(plain, purpose: .sync), stamp: stamp), for: .version0_1).readableBytesView),
                       Array(try frameBody(.replication(.delta(plain, purpose: .sync), stamp: stamp)).readableBytesView))
    }

    /// A certificate record with every field, pinned byte for byte: the encoder writes a record
    /// in one pass into memory it sized first, and this is the layout every version decodes
    /// (0.1.0 included). Non-ASCII strings count bytes, not characters.
    func testACertificateRecordIsWrittenInTheWireLayout() throws {
        let content = CertificateContent(name: "téléphone", der: [0x30, 0x03, 0x02, 0x01, 0x07], notBeforeMillis: -5,
                                         notAfterMillis: 0x0102_0304_0506_0708, jids: ["alice@first.com", "ålice@first.com/x"],
                                         noCertManagement: true, added: HLCTimestamp(wallMillis: 7, logical: 0x0A0B_0C0D), origin: "node1")
        let disabled = CertificateRemoval(kind: .disabled, stamp: HLCTimestamp(wallMillis: 9, logical: 2), origin: "nöde2")
        let records = [CertificateRecord(id: id, content: content, removal: disabled),
                       CertificateRecord(id: id, content: content, removal: nil),
                       CertificateRecord(id: id, content: nil, removal: revocation)]
        let stamp = HLCTimestamp(wallMillis: 1, logical: 2)
        for features in [PeerWireFeatures.current, .version0_1] {
            let body = try frameBody(.replication(.delta(WireDelta(certificates: records), purpose: .push), stamp: stamp), for: features)

            var expected = ByteBufferAllocator().buffer(capacity: 256)
            func string(_ s: String) { expected.writeInteger(UInt16(s.utf8.count)); expected.writeBytes(Array(s.utf8)) }
            func stampBytes(_ s: HLCTimestamp) { expected.writeInteger(s.wallMillis); expected.writeInteger(s.logical) }
            func contentBytes() {
                expected.writeInteger(UInt8(1))
                string("téléphone")
                expected.writeInteger(UInt32(5)); expected.writeBytes([0x30, 0x03, 0x02, 0x01, 0x07])
                expected.writeInteger(Int64(-5)); expected.writeInteger(Int64(0x0102_0304_0506_0708))
                expected.writeInteger(UInt16(2)); string("alice@first.com"); string("ålice@first.com/x")
                expected.writeInteger(UInt8(1))                          // no_cert_management
                stampBytes(content.added); string("node1")
            }
            expected.writeBytes([1, 5]); stampBytes(stamp); expected.writeInteger(UInt8(0))   // version, delta, stamp, push
            expected.writeInteger(UInt32(0)); expected.writeInteger(UInt32(0))              // no versions, no fingerprints
            expected.writeInteger(UInt32(3))
            for record in records {
                string("first.com"); string("alice@first.com")
                expected.writeInteger(UInt8(32)); expected.writeBytes(id.sha256)
                if record.content != nil { contentBytes() } else { expected.writeInteger(UInt8(0)) }
                if let removal = record.removal {
                    expected.writeInteger(removal.kind.rawValue); stampBytes(removal.stamp); string(removal.origin)
                } else {
                    expected.writeInteger(UInt8(0))
                }
            }
            XCTAssertEqual(Array(body.readableBytesView), Array(expected.readableBytesView), "\(features)")
            XCTAssertEqual(try decodedDelta(body).certificates, records)
        }
    }

    /// A string of a certificate record too long for the wire fails the encoding before any of
    /// the record is written.
    func testACertificateRecordWithAnOverlongStringIsRefused() throws {
        var record = compacted()
        record.content?.der = [0x30, 0x00]
        record.content?.jids = ["alice@first.com", String(repeating: "j", count: 1025)]
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        XCTAssertThrowsError(try PeerFrameCodec.encode(.replication(.delta(WireDelta(certificates: [record]), purpose: .push), stamp: .zero),
                                                        into: &buffer)) { error in
            XCTAssertEqual(error as? PeerWireError, .fieldTooLong(bytes: 1025, limit: 1024))
        }
        record.content?.jids = ["alice@first.com"]
        record.removal?.origin = String(repeating: "n", count: 2000)
        XCTAssertThrowsError(try PeerFrameCodec.encode(.replication(.delta(WireDelta(certificates: [record]), purpose: .push), stamp: .zero),
                                                        into: &buffer)) { error in
            XCTAssertEqual(error as? PeerWireError, .fieldTooLong(bytes: 2000, limit: 1024))
        }
    }

    func testVersionParsing() {
        for (version, expected) in [("0.1.0", PeerWireFeatures.version0_1), ("0.1.9", .version0_1), ("0.2.0", .current),
                                    ("0.2.0-dev+abc", .current), ("0.10.0", .current), ("1.0.0", .current),
                                    ("", .version0_1), ("garbage", .version0_1), ("0.2", .version0_1), ("0.2.x", .version0_1),
                                    ("-1.5.0", .version0_1), ("0.2.0.1", .version0_1)] {
            XCTAssertEqual(PeerWireFeatures(peerSoftwareVersion: version), expected, version)
        }
    }

    func testBadSectionsAndEmptyCertificatesAreRefused() throws {
        let base = Array(try frameBody(.replication(.delta(WireDelta(), purpose: .push), stamp: .zero)).readableBytesView)
        XCTAssertEqual(decodeError(base + [9, 0, 0, 0, 0]), .invalidField("delta section 9"))
        XCTAssertEqual(decodeError(base + [1, 0, 0, 0, 0]), .invalidField("empty token sequence floor section"))
        XCTAssertEqual(decodeError(base + [1, 0xFF, 0xFF, 0xFF, 0xFF]), .truncated("token sequence floors"))
        let oneFloor = Array(try frameBody(.replication(.delta(WireDelta(tokenSequenceFloors: floors(1)), purpose: .push), stamp: .zero)).readableBytesView)
        let section = Array(oneFloor[base.count...])
        XCTAssertEqual(decodeError(oneFloor + section), .invalidField("repeated delta section 1"))
        XCTAssertEqual(decodeError(Array(oneFloor.dropLast())), .truncated("floor origin"))

        // An empty certificate is only valid in a revoked record.
        for removal in [nil, CertificateRemoval(kind: .disabled, stamp: .zero, origin: "n")] {
            var record = compacted()
            record.removal = removal
            let body = Array(try frameBody(.replication(.delta(WireDelta(certificates: [record]), purpose: .push), stamp: .zero)).readableBytesView)
            XCTAssertEqual(decodeError(body), .invalidField("certificate length 0 (only a revoked record drops its certificate)"))
        }
    }

    func testManyFloorsAreChunkedUnderTheFrameLimit() throws {
        let many = floors(150_000)
        let chunks = PeerFrameCodec.chunks(of: WireDelta(tokenSequenceFloors: many))
        XCTAssertGreaterThan(chunks.count, 1)
        var seen: [TokenSequenceFloor] = []
        for chunk in chunks {
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            try PeerFrameCodec.encode(.replication(.delta(chunk, purpose: .sync), stamp: .zero), into: &buffer)
            XCTAssertLessThanOrEqual(buffer.readableBytes, PeerFrameCodec.maxFrameBytes)
            seen += chunk.tokenSequenceFloors
        }
        XCTAssertEqual(seen, many)
    }
}
