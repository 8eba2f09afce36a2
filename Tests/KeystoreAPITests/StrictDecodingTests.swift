import KeystoreAPI
import KeystoreJSON
import XCTest

final class StrictDecodingTests: XCTestCase {
    private func decode<T: StrictlyDecodable>(_ type: T.Type, _ text: String) throws -> T {
        try StrictJSON.decode(type, from: Array(text.utf8))
    }

    private func refusal<T: StrictlyDecodable>(_ type: T.Type, _ text: String) -> String {
        do {
            _ = try decode(type, text)
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    func testWellFormedBodiesDecode() throws {
        let body = try decode(AddCertificateRequest.self, #"{"name":"phone","certificate":"MIIB","no_cert_management":true}"#)
        XCTAssertEqual(body, AddCertificateRequest(name: "phone", certificate: "MIIB", noCertManagement: true))
        XCTAssertNil(try decode(AddCertificateRequest.self, #"{"name":"phone","certificate":"MIIB"}"#).noCertManagement)
    }

    func testANumberIsNotABoolean() {
        XCTAssertEqual(refusal(AddCertificateRequest.self, #"{"name":"a","certificate":"b","no_cert_management":1}"#),
                       #"field "no_cert_management": expected true or false"#)
    }

    func testDuplicateMembersAreRefusedAnywhere() {
        XCTAssertEqual(refusal(AddCertificateRequest.self, #"{"name":"a","name":"b","certificate":"c"}"#), #"field "name" appears twice"#)
        XCTAssertEqual(refusal(CertificateStatusRequest.self, #"{"certs":[{"user":"a","user":"b","fingerprint_sha256":"00"}]}"#),
                       #"field "certs[0].user" appears twice"#)
    }

    func testUnknownMembersAreRefusedAtEveryLevel() {
        XCTAssertTrue(refusal(AddCertificateRequest.self, #"{"name":"a","certificate":"c","no_cert_managment":true}"#)
            .hasPrefix(#"unknown field "no_cert_managment""#))
        XCTAssertTrue(refusal(CertificateStatusRequest.self, #"{"certs":[{"user":"a","fingerprint_sha256":"00","x":1}]}"#)
            .contains("certs[0].x"))
    }

    func testMissingFieldsWrongTopLevelAndBadSyntaxAreNamed() {
        XCTAssertEqual(refusal(AddCertificateRequest.self, #"{"name":"a"}"#), #"missing field "certificate""#)
        XCTAssertEqual(refusal(AddCertificateRequest.self, #"["a"]"#), "body must be a JSON object, not an array")
        XCTAssertTrue(refusal(AddCertificateRequest.self, #"{"name":"a",}"#).hasPrefix("body is not valid JSON (line 1"))
        XCTAssertTrue(refusal(AddCertificateRequest.self, "{\"name\":\"a\" // no\n}").hasPrefix("body is not valid JSON"))
        XCTAssertEqual(refusal(HMACRequest.self, #"{"input":"","algorithm":"md5"}"#).hasPrefix(#"field "algorithm""#), true)
    }

    func testConfigFilesMayCarryLineCommentsButNotInsideStrings() throws {
        let value = try JSONReader.parse(Array("{ // the cluster\n \"a\": \"x // y\" // trailing\n}".utf8), allowComments: true)
        XCTAssertEqual(value["a"]?.stringValue, "x // y")
        XCTAssertThrowsError(try JSONReader.parse(Array("{ // c\n}".utf8)))
    }
}
