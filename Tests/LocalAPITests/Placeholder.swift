import XCTest
final class PlaceholderLocalAPITests: XCTestCase { func testNothing() {} }
