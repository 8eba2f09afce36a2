import XCTest
final class PlaceholderPeerTLSTests: XCTestCase { func testNothing() {} }
