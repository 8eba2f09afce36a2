import XCTest
final class PlaceholderReplicatedStoreTests: XCTestCase { func testNothing() {} }
