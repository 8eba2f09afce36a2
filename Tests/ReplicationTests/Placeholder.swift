import Replication
import XCTest

final class ReplicationSmokeTests: XCTestCase {
    func testALoneNodeFinishesAtOnce() {
        var instance = ReplicationInstance<StoreReplicaContent.Payload>(myself: "node1", peers: ["node1"], nowMillis: 0)
        let directives = instance.startJoin(timeoutMillis: 1000, nowMillis: 0)
        guard case .joinFinished(.alone)? = directives.first else { return XCTFail("\(directives)") }
    }
}
