import XCTest
final class PlaceholderKeystoreConfigTests: XCTestCase { func testNothing() {} }
