import Foundation
import KeystoreClient
import XCTest

/// `/v1/cluster` as the cluster shell reports it: every alive member shows when it was last
/// heard of, and the sync column holds only the documented values.
final class ClusterStatusTests: ClusterTestCase {
    private func members(_ cluster: ClusterHarness, _ node: String) -> [[String: Any]] {
        guard let response = try? cluster.client(node).send(APIRequest(method: "GET", path: "/v1/cluster")),
              let json = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any] else { return [] }
        return json["members"] as? [[String: Any]] ?? []
    }

    func testEveryAliveMemberHasALastContactAndPeersReachInSync() throws {
        let nodes = ["node1", "node2", "node3"]
        let cluster = try makeCluster(nodes: nodes)
        try cluster.startAll()
        waitUntil("every node sees every member alive and in sync", timeout: 20) {
            nodes.allSatisfy { node in
                let list = members(cluster, node)
                return list.count == 3 && list.allSatisfy { $0["state"] as? String == "alive" }
                    && list.allSatisfy { ($0["sync"] as? String) == ($0["node"] as? String == node ? "ready" : "in_sync") }
            }
        }
        for node in nodes {
            for member in members(cluster, node) {
                XCTAssertNotNil(member["last_contact"] as? String, "\(node) shows alive \(member["node"] ?? "?") without a last contact")
                XCTAssertTrue(["ready", "joining", "in_sync", "repairing", "unknown"].contains(member["sync"] as? String ?? ""), "\(member)")
            }
        }
        // A member that left and came back is listed with its new contact, and in sync again.
        cluster.processes["node3"]!.kill9()
        waitUntil("node1 sees node3 gone", timeout: 20) {
            members(cluster, "node1").first { $0["node"] as? String == "node3" }?["state"] as? String == "dead"
        }
        try cluster.start("node3")
        cluster.waitReady("node3")
        waitUntil("node1 sees node3 alive and in sync again", timeout: 20) {
            let node3 = members(cluster, "node1").first { $0["node"] as? String == "node3" }
            return node3?["state"] as? String == "alive" && node3?["sync"] as? String == "in_sync" && node3?["last_contact"] != nil
        }
    }
}
