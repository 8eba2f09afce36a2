import Foundation
@testable import KeystoreNode
import RegistryDatabase
import ReplicatedStore
import SecretMemory
import XCTest

/// `NodeOperations.loadPersisted` on rows an older version may have left: unprepared users
/// (upper case, NFD), one of them colliding with a prepared row of the same certificate, and a
/// revoked row still holding its DER. Checked in memory and in the database afterwards.
final class LoadPersistedTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = try scratchNodeDirectory("load-persisted")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func content(_ name: String, added: UInt64, jids: [String]) -> CertificateContent {
        CertificateContent(name: name, der: [0x30, 3, 1, 2, 3], notBeforeMillis: 0, notAfterMillis: 4_102_444_800_000, jids: jids,
                           noCertManagement: false, added: HLCTimestamp(wallMillis: added, logical: 0), origin: "node1")
    }

    func testOldRowsAreRenamedJoinedAndCompacted() throws {
        let state = NodeState(config: try oneNodeConfig(in: directory), arena: try SecretArena())
        let database = try RegistryDatabase(directory: directory + "/data")
        defer { database.close() }

        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        let revoked = CertificateRemoval(kind: .revoked, stamp: HLCTimestamp(wallMillis: now - 1000, logical: 0), origin: "node1")
        func sha(_ byte: UInt8) -> [UInt8] { Array(repeating: byte, count: 32) }
        let amy = CertificateRecord(id: CertificateID(domain: "first.com", user: "amy@first.com", sha256: sha(1)),
                                    content: content("phone", added: 1, jids: ["amy@first.com"]), removal: nil)
        // Lowercase NFD: canonically equal to the prepared NFC spelling, different bytes.
        let zoeNFD = CertificateRecord(id: CertificateID(domain: "first.com", user: "zoe\u{301}@first.com", sha256: sha(2)),
                                       content: content("phone", added: 2, jids: ["zoe\u{301}@first.com"]), removal: nil)
        let bobUpper = CertificateRecord(id: CertificateID(domain: "first.com", user: "Bob@first.com", sha256: sha(3)),
                                         content: content("laptop", added: 3, jids: ["bob@first.com"]), removal: revoked)
        let bob = CertificateRecord(id: CertificateID(domain: "first.com", user: "bob@first.com", sha256: sha(3)),
                                    content: content("laptop", added: 3, jids: ["bob@first.com"]), removal: nil)
        let cat = CertificateRecord(id: CertificateID(domain: "first.com", user: "cat@first.com", sha256: sha(4)),
                                    content: content("tablet", added: 4, jids: ["cat@first.com"]), removal: revoked)
        try database.upsert([amy, zoeNFD, bobUpper, bob, cat].map(\.stored))

        XCTAssertEqual(try NodeOperations.loadPersisted(database, into: state), 4)

        let zoe = CertificateID(domain: "first.com", user: "zo\u{E9}@first.com", sha256: sha(2))
        let bobID = CertificateID(domain: "first.com", user: "bob@first.com", sha256: sha(3))
        XCTAssertEqual(state.certificateRecord(amy.id), amy)
        XCTAssertEqual(state.certificateRecord(zoe)?.content?.der, zoeNFD.content?.der)
        XCTAssertEqual(state.certificateRecord(bobID)?.removal, revoked, "the revocation of the old spelling is kept")
        XCTAssertEqual(state.certificateRecord(bobID)?.content?.der, [], "and the revoked record compacted")
        XCTAssertEqual(state.certificateRecord(cat.id)?.content?.der, [])

        let rows = try database.loadAll()
        XCTAssertEqual(Set(rows.map { Array($0.user.utf8) }),
                       Set(["amy@first.com", "zo\u{E9}@first.com", "bob@first.com", "cat@first.com"].map { Array($0.utf8) }))
        XCTAssertEqual(rows.count, 4)
        for row in rows where row.user == "bob@first.com" || row.user == "cat@first.com" {
            XCTAssertEqual(row.der, [], row.user)
            XCTAssertEqual(row.removalKind, RemovalKind.revoked.rawValue, row.user)
        }
        XCTAssertEqual(rows.first { $0.user == "amy@first.com" }?.der, amy.content?.der)
    }
}
