import Foundation
@testable import RegistryDatabase
import XCTest

/// The `jids` column is written and read by hand on its common shape (a profile showed the JSON
/// coders per row); the hand path must agree byte for byte with the coders it bypasses, and
/// hand back to them everything else.
final class JIDColumnCodingTests: XCTestCase {
    private let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    func testHandEncodingIsTheEncodersBytesOrDeclines() throws {
        let arrays: [[String]] = [
            [], [""], ["a@b"], ["u1@first.com", "u2@first.com"], ["a/b@c"], ["sp ace@x"], ["~!#$%^&*()=[]{};:'<>?,.@x"],
            ["quo\"te@x"], ["back\\slash@x"], ["tab\t@x"], ["nl\n@x"], ["del\u{7F}@x"], ["é@x"], ["日本@x"], ["a@b", "ü@x"],
        ]
        var handled = 0
        for jids in arrays {
            let expected = String(decoding: try encoder.encode(jids), as: UTF8.self)
            guard let plain = RegistryDatabase.encodePlainJIDs(jids) else {
                // Declined: only for what JSON must escape, or non-ASCII.
                XCTAssertTrue(jids.contains { $0.utf8.contains { $0 < 0x20 || $0 >= 0x7F || $0 == 0x22 || $0 == 0x5C } }, "\(jids)")
                continue
            }
            handled += 1
            XCTAssertEqual(plain, expected, "\(jids)")
        }
        XCTAssertEqual(handled, 7)
    }

    func testHandDecodingAgreesWithTheDecoderOrDeclines() throws {
        let texts = [
            "[]", "[\"\"]", "[\"a@b\"]", "[\"a@b\",\"c@d\"]", "[\"a]b\"]", "[\"a,b\",\"\"]", "[\"é@x\"]", "[\"a/b\"]",
            // Valid JSON the hand path leaves to the decoder.
            "[ \"a@b\" ]", "[\"a@b\", \"c@d\"]", "[\"a\\\"b\"]", "[\"a\\u00e9\"]", "[\"a\\/b\"]", "\n[\"a\"]",
            // Not a JSON array of strings: both must refuse.
            "", "[", "]", "[\"a\"", "[\"a]", "[\"a\",]", "[,\"a\"]", "[\"a\"\"b\"]", "[\"a\" \"b\"]", "[\"a\"]x", "x[\"a\"]",
            "[1]", "[\"a\",1]", "[null]", "{}", "\"a\"", "[\"tab\there\"]", "[[\"a\"]]",
        ]
        let decoder = JSONDecoder()
        var handled = 0
        for text in texts {
            let expected = try? decoder.decode([String].self, from: Data(text.utf8))
            guard let plain = RegistryDatabase.decodePlainJIDs(text) else { continue }
            handled += 1
            XCTAssertEqual(plain, expected, text)
            // Whatever the hand path reads, it reads exactly what was written by encodeJIDs.
            let written = try RegistryDatabase.encodePlainJIDs(plain) ?? String(decoding: encoder.encode(plain), as: UTF8.self)
            XCTAssertEqual(written, text)
        }
        XCTAssertEqual(handled, 8)
        for text in ["[ \"a@b\" ]", "[\"a\\\"b\"]", "[\"a\\u00e9\"]"] {
            XCTAssertNil(RegistryDatabase.decodePlainJIDs(text), text)
            XCTAssertNotNil(try? decoder.decode([String].self, from: Data(text.utf8)), text)
        }
    }
}
