import Foundation
import KeystoreAPI
import XCTest

/// docs/ is the user's reference; it must move with the contract target.
final class DocumentationTests: XCTestCase {
    private func document(_ name: String) throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: root.appendingPathComponent("docs/\(name)"), encoding: .utf8)
    }

    func testTheAPIReferenceNamesEveryRouteErrorPermissionAndEvent() throws {
        let api = try document("api.md")
        for endpoint in Endpoint.allCases {
            let spec = endpoint.spec
            // Disable and revoke share one heading ("…/{name}/disable` and `/revoke").
            let shared = spec.template.replacingOccurrences(of: "{name}/revoke", with: "{name}/disable` and `/revoke")
            XCTAssertTrue(api.contains("\(spec.method.rawValue) \(spec.template)") || api.contains("\(spec.method.rawValue) \(shared)"),
                          "docs/api.md lacks \(spec.method.rawValue) \(spec.template)")
            if let permission = spec.access.permission {
                XCTAssertTrue(api.contains("`\(permission.rawValue)`"), "docs/api.md lacks permission \(permission.rawValue)")
            }
        }
        for code in APIErrorCode.allCases {
            XCTAssertTrue(api.contains("`\(code.rawValue)` | \(code.httpStatus)"), "docs/api.md lacks error \(code.rawValue) (\(code.httpStatus))")
        }
        for type in ["hello", "key_rotated", "cert_revoked", "cert_disabled", "tokens_revoked", "member", "heartbeat", "resync", "overflow"] {
            XCTAssertNotNil(EventType(rawValue: type))
            XCTAssertTrue(api.contains("`\(type)`"), "docs/api.md lacks event \(type)")
        }
        for state in MemberState.allCases { XCTAssertTrue(api.contains("`\(state.rawValue)`"), "docs/api.md lacks member state \(state)") }
        for state in SyncState.allCases { XCTAssertTrue(api.contains("`\(state.rawValue)`"), "docs/api.md lacks sync state \(state)") }
    }

    func testTheConfigReferenceNamesEveryPermission() throws {
        let config = try document("config.md")
        for permission in Permission.allCases {
            XCTAssertTrue(config.contains("`\(permission.rawValue)`"), "docs/config.md lacks permission \(permission.rawValue)")
        }
    }
}
