import KeystoreAPI
import XCTest
import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import KeystoreConfig

final class AccessControlTests: XCTestCase {
    let daemon: UInt32 = 500
    lazy var acl = AccessControl(rules: [
        ClientRule(uid: 1001, domains: ["first.com"], allow: [.keysRead, .certsVerify]),
        ClientRule(gid: 2000, domains: ["second.org", "first.com"], allow: [.certsWrite]),
        ClientRule(uid: 3000, domains: ["*"], allow: [.clusterRead, .eventsRead]),
        ClientRule(uid: 4000, gid: 4100, domains: ["*"], allow: [.all]),
        ClientRule(uid: 5000, domains: ["first.com"], allow: [.all]),
    ], daemonUID: daemon)

    func testDaemonUIDIsAlwaysAllowed() {
        for permission in Permission.allCases {
            XCTAssertTrue(acl.permits(uid: daemon, gids: [], permission: permission, domain: nil))
            XCTAssertTrue(acl.permits(uid: daemon, gids: [], permission: permission, domain: "unlisted.net"))
        }
        let empty = AccessControl(rules: [], daemonUID: daemon)
        XCTAssertTrue(empty.permits(uid: daemon, gids: [], permission: .admin, domain: nil))
        XCTAssertFalse(empty.permits(uid: 0, gids: [0], permission: .keysRead, domain: "first.com"),
                       "with no rules even root is refused unless it is the daemon uid")
    }

    func testUIDRuleGrantsOnlyListedPermissionsOnListedDomains() {
        XCTAssertTrue(acl.permits(uid: 1001, gids: [1001], permission: .keysRead, domain: "first.com"))
        XCTAssertTrue(acl.permits(uid: 1001, gids: [1001], permission: .certsVerify, domain: "first.com"))
        XCTAssertFalse(acl.permits(uid: 1001, gids: [1001], permission: .keysRotate, domain: "first.com"))
        XCTAssertFalse(acl.permits(uid: 1001, gids: [1001], permission: .keysRead, domain: "second.org"))
        XCTAssertFalse(acl.permits(uid: 1002, gids: [1002], permission: .keysRead, domain: "first.com"))
    }

    func testGIDRuleMatchesAnyCallerGroup() {
        XCTAssertTrue(acl.permits(uid: 7, gids: [7, 2000], permission: .certsWrite, domain: "second.org"))
        XCTAssertTrue(acl.permits(uid: 7, gids: [2000], permission: .certsWrite, domain: "first.com"))
        XCTAssertFalse(acl.permits(uid: 7, gids: [7], permission: .certsWrite, domain: "second.org"))
        XCTAssertFalse(acl.permits(uid: 2000, gids: [7], permission: .certsWrite, domain: "second.org"),
                       "a gid rule must not match a uid with the same number")
        // Permissions from several matching rules combine.
        XCTAssertTrue(acl.permits(uid: 1001, gids: [2000], permission: .certsWrite, domain: "first.com"))
        XCTAssertTrue(acl.permits(uid: 1001, gids: [2000], permission: .keysRead, domain: "first.com"))
    }

    func testRuleWithUIDAndGIDMatchesEither() {
        XCTAssertTrue(acl.permits(uid: 4000, gids: [1], permission: .keysRotate, domain: "x.com"))
        XCTAssertTrue(acl.permits(uid: 1, gids: [4100], permission: .keysRotate, domain: "x.com"))
        XCTAssertFalse(acl.permits(uid: 1, gids: [1], permission: .keysRotate, domain: "x.com"))
    }

    func testStarDomainAndDomainLessPermissions() {
        XCTAssertTrue(acl.permits(uid: 3000, gids: [], permission: .clusterRead, domain: nil))
        XCTAssertTrue(acl.permits(uid: 3000, gids: [], permission: .eventsRead, domain: nil))
        XCTAssertTrue(acl.permits(uid: 3000, gids: [], permission: .eventsRead, domain: "any.org"))
        XCTAssertFalse(acl.permits(uid: 3000, gids: [], permission: .admin, domain: nil))
        XCTAssertTrue(acl.permits(uid: 4000, gids: [], permission: .admin, domain: nil))
        // allow ["*"] on one domain does not reach domain-less permissions.
        XCTAssertTrue(acl.permits(uid: 5000, gids: [], permission: .keysRotate, domain: "first.com"))
        XCTAssertFalse(acl.permits(uid: 5000, gids: [], permission: .admin, domain: nil))
        XCTAssertFalse(acl.permits(uid: 5000, gids: [], permission: .clusterRead, domain: nil))
        XCTAssertFalse(acl.permits(uid: 1001, gids: [], permission: .keysRead, domain: nil))
    }

    func testVisibleDomainsKeepsOrder() {
        let all = ["second.org", "first.com", "third.net"]
        XCTAssertEqual(acl.visibleDomains(uid: 1001, gids: [], permission: .keysRead, allDomains: all), ["first.com"])
        XCTAssertEqual(acl.visibleDomains(uid: 9, gids: [2000], permission: .certsWrite, allDomains: all),
                       ["second.org", "first.com"])
        XCTAssertEqual(acl.visibleDomains(uid: 4000, gids: [], permission: .keysRead, allDomains: all), all)
        XCTAssertEqual(acl.visibleDomains(uid: daemon, gids: [], permission: .keysRead, allDomains: all), all)
        XCTAssertEqual(acl.visibleDomains(uid: 9, gids: [], permission: .keysRead, allDomains: all), [])
    }
}

final class PSKFileTests: XCTestCase {
    var fx: Fixture!

    override func setUpWithError() throws { fx = try Fixture() }
    override func tearDown() { fx = nil }

    private func contents(_ raw: [UInt8], mode: mode_t = 0o600) throws -> [UInt8] {
        try fx.writeBytes("psk/t", raw, mode: mode)
        return try PSKFile.withTrimmedContents(path: fx.path("psk/t"), field: "f") { Array($0) }
    }

    func testTrimsASCIIWhitespaceBothEnds() throws {
        XCTAssertEqual(try contents(Array("secret\r\n".utf8)), Array("secret".utf8))
        XCTAssertEqual(try contents(Array(" \t\u{0B}\u{0C}\r\nse cr\tet \r\n\r\n".utf8)), Array("se cr\tet".utf8))
        XCTAssertEqual(try contents(Array("x".utf8), mode: 0o400), Array("x".utf8))
        // Non-ASCII bytes are key material, not whitespace.
        XCTAssertEqual(try contents([0xA0, 0x41, 0x85]), [0xA0, 0x41, 0x85])
    }

    func testOnlyWhitespaceIsEmpty() throws {
        for raw in ["", " ", "\r\n", " \t\r\n\u{0B}\u{0C} "] {
            XCTAssertThrowsError(try contents(Array(raw.utf8))) { error in
                XCTAssertEqual(error as? ConfigError, .pskEmpty(field: "f", path: fx.path("psk/t")))
            }
        }
    }

    func testModeIsCheckedAndContentsNeverInErrors() throws {
        XCTAssertThrowsError(try contents(Array("topsecretvalue".utf8), mode: 0o644)) { error in
            guard let e = error as? ConfigError else { return XCTFail("wrong error \(error)") }
            XCTAssertEqual(e, .pskInsecureMode(field: "f", path: fx.path("psk/t"), mode: 0o644))
            XCTAssertTrue(e.description.contains("chmod 600 \(fx.path("psk/t"))"), e.description)
            XCTAssertFalse(e.description.contains("topsecret"))
        }
    }

    func testBodyErrorsPropagate() throws {
        struct Boom: Error {}
        try fx.write("psk/t", "k", mode: 0o600)
        XCTAssertThrowsError(try PSKFile.withTrimmedContents(path: fx.path("psk/t"), field: "f") { _ in throw Boom() }) {
            XCTAssertTrue($0 is Boom)
        }
    }

    func testFIFOIsRejectedWithoutBlocking() throws {
        XCTAssertEqual(mkfifo(fx.path("psk/fifo"), 0o600), 0)
        XCTAssertThrowsError(try PSKFile.withTrimmedContents(path: fx.path("psk/fifo"), field: "f") { _ in }) {
            XCTAssertEqual($0 as? ConfigError, .pskNotRegularFile(field: "f", path: fx.path("psk/fifo")))
        }
    }

    func testShellQuotingOfOddPaths() {
        XCTAssertEqual(shellQuoted("/a/b.key"), "/a/b.key")
        XCTAssertEqual(shellQuoted("/a b/it's"), #"'/a b/it'\''s'"#)
    }
}
