import XCTest
final class PlaceholderMembershipTests: XCTestCase { func testNothing() {} }
