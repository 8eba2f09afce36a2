@testable import ReplicatedStore
import XCTest

/// `CertificateTable` is a hand-written hash table (chains threaded through the slots, users
/// split into localpart and interned domain, fingerprints inline): checked against a dictionary
/// doing the same job, over random inserts, updates and removals of awkward ids. Ids are byte
/// strings here as in the digests (`StableHash.identity`): canonically equivalent spellings are
/// two ids, so the model is keyed by bytes, not by `CertificateID`'s Unicode-equivalence `==`.
final class CertificateTableTests: XCTestCase {
    private struct ByteKey: Hashable {
        let domain: [UInt8], user: [UInt8], sha256: [UInt8]
        init(_ id: CertificateID) { domain = Array(id.domain.utf8); user = Array(id.user.utf8); sha256 = id.sha256 }
    }

    private static let domains = ["first.com", "b", "é.example"]
    private static let users = ["alice@first.com", "bob@first.com", "alice@b", "@first.com", "first.com", "alice@first.comx",
                                "x@b@first.com", "é@é.example", "alice", "e\u{301}@é.example", "ali@first.com"]
    private static let fingerprints: [[UInt8]] = [Array(repeating: 1, count: 32), Array(repeating: 2, count: 32), [1, 2, 3], [],
                                                  Array(repeating: 1, count: 33)]

    private static func record(_ random: inout SystemRandomNumberGenerator, id: CertificateID) -> CertificateRecord {
        let content = CertificateContent(name: ["phone", "laptop", "é"].randomElement(using: &random)!,
                                 der: [[], [0x30, 1], Array(repeating: 7, count: 40)].randomElement(using: &random)!,
                                 notBeforeMillis: Int64.random(in: -5...5, using: &random), notAfterMillis: Int64.random(in: 0...10, using: &random),
                                 jids: [[id.user], [], [id.user, "x@y"], ["other@first.com"]].randomElement(using: &random)!,
                                 noCertManagement: Bool.random(using: &random),
                                 added: HLCTimestamp(wallMillis: UInt64.random(in: 0...3, using: &random), logical: UInt32.random(in: 0...2, using: &random)),
                                 origin: ["node1", "node2"].randomElement(using: &random)!)
        let removal: CertificateRemoval? = [nil, RemovalKind.disabled, .revoked].randomElement(using: &random)!.map {
            CertificateRemoval(kind: $0, stamp: HLCTimestamp(wallMillis: UInt64.random(in: 0...3, using: &random), logical: 0),
                               origin: ["node1", "node3"].randomElement(using: &random)!)
        }
        return CertificateRecord(id: id, content: Int.random(in: 0..<5, using: &random) == 0 ? nil : content, removal: removal)
    }

    func testTableAgreesWithADictionary() {
        var random = SystemRandomNumberGenerator()
        var table = CertificateTable()
        var model: [ByteKey: CertificateRecord] = [:]
        var slotOf: [ByteKey: Int32] = [:]
        for step in 0..<20_000 {
            let id = CertificateID(domain: Self.domains.randomElement(using: &random)!, user: Self.users.randomElement(using: &random)!,
                                   sha256: Self.fingerprints.randomElement(using: &random)!)
            let key = ByteKey(id)
            let found = table.find(id)
            XCTAssertEqual(found, slotOf[key], "step \(step): find \(id)")
            if let index = found {
                XCTAssertEqual(table.record(index), model[key], "step \(step)")
                XCTAssertTrue(table.holds(index, model[key]!), "step \(step)")
                if Bool.random(using: &random) {
                    table.remove(index, id: id)
                    model[key] = nil
                    slotOf[key] = nil
                } else {
                    let record = Self.record(&random, id: id)
                    table.update(index, record, contentHash: 1, entryHash: 2)
                    XCTAssertEqual(table.holds(index, record), true)
                    XCTAssertEqual(table.holds(index, model[key]!), model[key] == record, "step \(step)")
                    model[key] = record
                }
            } else {
                let record = Self.record(&random, id: id)
                let bucket = Int.random(in: 0..<64, using: &random)
                let index = table.insert(record, bucket: bucket, contentHash: 3, entryHash: 4)
                XCTAssertEqual(table[index].bucket, Int32(bucket))
                model[key] = record
                slotOf[key] = index
            }
            XCTAssertEqual(table.count, model.count)
            XCTAssertEqual(table.removedCount, model.values.filter { $0.removal != nil }.count, "step \(step)")
            if step % 500 == 0 {
                for domain in Self.domains {
                    for user in Self.users {
                        let held = Set(table.slots(domain: domain, user: user).map { ByteKey(table.record($0).id) })
                        let expected = Set(model.keys.filter { $0.domain == Array(domain.utf8) && $0.user == Array(user.utf8) })
                        XCTAssertEqual(held, expected, "step \(step): \(user) in \(domain)")
                    }
                }
                var visited: [ByteKey] = []
                table.forEachSlot { index, _ in visited.append(ByteKey(table.record(index).id)) }
                XCTAssertEqual(Set(visited), Set(model.keys))
                XCTAssertEqual(visited.count, model.count)
            }
        }
    }

    /// The indexes are head arrays relinked at every doubling from the slots' own parts (a
    /// localpart plus the interned domain, the fingerprint inline or apart): after thousands of
    /// inserts through many resizes, with frees and reuse between them, every id and every
    /// user is still found, and nothing else is.
    func testEveryRecordIsFoundAfterTheIndexesGrow() {
        var table = CertificateTable()
        var held: [CertificateID: Int32] = [:]
        func id(_ n: Int) -> CertificateID {
            let domain = ["first.com", "é.example", "b"][n % 3]
            let user = n % 5 == 0 ? "user\(n)@\(domain)x" : "u\(n)@\(domain)"  // every fifth not local@domain
            var sha = Array(repeating: UInt8(truncatingIfNeeded: n), count: n % 7 == 0 ? 20 : 32)  // every seventh odd
            sha[0] = UInt8(truncatingIfNeeded: n >> 8)
            return CertificateID(domain: domain, user: user, sha256: sha)
        }
        func insert(_ n: Int) {
            let content = CertificateContent(name: "n\(n)", der: [0x30, UInt8(truncatingIfNeeded: n)], notBeforeMillis: 0, notAfterMillis: 1,
                                             jids: [id(n).user], noCertManagement: false, added: HLCTimestamp(wallMillis: 1, logical: 0),
                                             origin: "node1")
            held[id(n)] = table.insert(CertificateRecord(id: id(n), content: content, removal: nil), bucket: n % 64, contentHash: 0, entryHash: 0)
        }
        func check(_ step: String) {
            XCTAssertEqual(table.count, held.count, step)
            for (id, index) in held {
                XCTAssertEqual(table.find(id), index, "\(step): \(id)")
                XCTAssertEqual(table.slots(domain: id.domain, user: id.user), [index], "\(step): \(id.user)")
            }
        }
        for n in 0..<3_000 { insert(n) }
        check("after 3,000 inserts")
        for n in stride(from: 0, to: 3_000, by: 2) {
            table.remove(held[id(n)]!, id: id(n))
            held[id(n)] = nil
            XCTAssertNil(table.find(id(n)))
        }
        check("after removing half")
        for n in 3_000..<9_000 { insert(n) }  // reuses the freed slots, then grows twice more
        check("after 6,000 more")
        for n in stride(from: 0, to: 3_000, by: 2) { XCTAssertNil(table.find(id(n)), "removed \(id(n))") }

        var reserved = CertificateTable()
        reserved.reserve(5_000)
        let record = CertificateRecord(id: id(1), content: nil, removal: CertificateRemoval(kind: .revoked, stamp: HLCTimestamp(wallMillis: 1, logical: 0),
                                                                                           origin: "node1"))
        let index = reserved.insert(record, bucket: 0, contentHash: 0, entryHash: 0)
        XCTAssertEqual(reserved.find(id(1)), index)
        XCTAssertNil(reserved.find(id(2)))
    }

    /// The word-at-a-time comparison behind `holds` and the id lookups: a difference in any
    /// byte, in a whole word or in the tail, and any difference in length, is seen.
    func testSameBytesSeesEveryDifference() {
        for length in 0...41 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            XCTAssertTrue(CertificateTable.sameBytes(bytes, Array(bytes)), "length \(length)")
            XCTAssertFalse(CertificateTable.sameBytes(bytes, bytes + [0]), "length \(length) + 1")
            for position in 0..<length {
                var other = bytes
                other[position] ^= 0x80
                XCTAssertFalse(CertificateTable.sameBytes(bytes, other), "length \(length), byte \(position)")
            }
        }
        XCTAssertTrue(CertificateTable.sameBytes("alice@first.com", "alice@" + "first.com"))
        XCTAssertFalse(CertificateTable.sameBytes("zo\u{E9}@first.com", "zoe\u{301}@first.com"), "bytes, not Unicode equivalence")
        XCTAssertFalse(CertificateTable.sameBytes("alice@first.com", "alice@first.con"))
    }

    func testRecordsComeBackByteForByte() {
        // Canonically equivalent spellings are different ids: the table must not fold them.
        var table = CertificateTable()
        let composed = CertificateID(domain: "é.example", user: "é@é.example", sha256: Array(repeating: 9, count: 32))
        let decomposed = CertificateID(domain: "é.example", user: "e\u{301}@é.example", sha256: Array(repeating: 9, count: 32))
        let content = CertificateContent(name: "n", der: [1], notBeforeMillis: 0, notAfterMillis: 1, jids: ["é@é.example"],
                                         noCertManagement: false, added: HLCTimestamp(wallMillis: 1, logical: 0), origin: "node1")
        let a = table.insert(CertificateRecord(id: composed, content: content, removal: nil), bucket: 0, contentHash: 0, entryHash: 0)
        XCTAssertNil(table.find(decomposed))
        let b = table.insert(CertificateRecord(id: decomposed, content: content, removal: nil), bucket: 0, contentHash: 0, entryHash: 0)
        XCTAssertEqual(table.find(composed), a)
        XCTAssertEqual(table.find(decomposed), b)
        XCTAssertEqual(Array(table.record(b).id.user.utf8), Array(decomposed.user.utf8))
        XCTAssertEqual(Array(table.record(a).id.user.utf8), Array(composed.user.utf8))
        XCTAssertEqual(table.record(b).content?.jids.map { Array($0.utf8) }, [Array("é@é.example".utf8)])

        // Interned strings (domains, origins) too: a second spelling is a second string.
        let nfdDomain = CertificateID(domain: "e\u{301}.example", user: "x@e\u{301}.example", sha256: Array(repeating: 9, count: 32))
        var nfdContent = content
        nfdContent.origin = "node\u{301}"
        XCTAssertNil(table.find(nfdDomain))
        let c = table.insert(CertificateRecord(id: nfdDomain, content: nfdContent, removal: nil), bucket: 0, contentHash: 0, entryHash: 0)
        XCTAssertEqual(table.find(nfdDomain), c)
        XCTAssertEqual(Array(table.record(c).id.domain.utf8), Array(nfdDomain.domain.utf8))
        XCTAssertEqual(Array(table.record(c).id.user.utf8), Array(nfdDomain.user.utf8))
        XCTAssertEqual(table.record(c).content.map { Array($0.origin.utf8) }, Array("node\u{301}".utf8))
        XCTAssertEqual(Array(table.record(a).id.domain.utf8), Array(composed.domain.utf8))
        XCTAssertTrue(table.slots(domain: "é.example", user: "x@é.example").isEmpty)
        XCTAssertEqual(table.slots(domain: nfdDomain.domain, user: nfdDomain.user), [c])
    }

    /// Whatever order two spellings of one id arrive in, replicas hold the same and agree on the
    /// digest (a dictionary keyed by `CertificateID`, whose `==` is Unicode equivalence, kept
    /// whichever came first under the other's hash).
    func testCanonicallyEquivalentIdsGiveTheSameDigestInAnyOrder() {
        let nfc = CertificateID(domain: "first.com", user: "zo\u{E9}@first.com", sha256: Array(repeating: 5, count: 32))
        let nfd = CertificateID(domain: "first.com", user: "zoe\u{301}@first.com", sha256: Array(repeating: 5, count: 32))
        let content = CertificateContent(name: "n", der: [1], notBeforeMillis: 0, notAfterMillis: 4_000_000_000_000, jids: ["zoé@first.com"],
                                         noCertManagement: false, added: HLCTimestamp(wallMillis: 1, logical: 0), origin: "node1")
        let records = [CertificateRecord(id: nfc, content: content, removal: nil), CertificateRecord(id: nfd, content: content, removal: nil)]
        var one = ReplicatedStore(graceMillis: 1000), two = ReplicatedStore(graceMillis: 1000)
        _ = one.merge(StoreDelta(certificates: records), nowMillis: 10)
        _ = two.merge(StoreDelta(certificates: records.reversed()), nowMillis: 10)
        XCTAssertEqual(one.rootDigest(), two.rootDigest())
        XCTAssertEqual(one.allCertificateRecords().count, 2)
        XCTAssertEqual(Set(one.fullDelta().certificates.map { Array($0.id.user.utf8) }), Set(records.map { Array($0.id.user.utf8) }))
    }
}
