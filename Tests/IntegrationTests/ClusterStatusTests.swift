import Foundation
import KeystoreAPI
import KeystoreClient
import XCTest

/// `/v1/cluster` as the cluster shell reports it: every alive member shows when it was last
/// heard of, and the sync column holds only the documented values.
final class ClusterStatusTests: ClusterTestCase {
    private func members(_ cluster: ClusterHarness, _ node: String) -> [ClusterMemberInfo] {
        (try? cluster.client(node).clusterStatus().members) ?? []
    }

    func testEveryAliveMemberHasALastContactAndPeersReachInSync() throws {
        let nodes = ["node1", "node2", "node3"]
        let cluster = try makeCluster(nodes: nodes)
        try cluster.startAll()
        waitUntil("every node sees every member alive and in sync", timeout: 20) {
            nodes.allSatisfy { node in
                let list = members(cluster, node)
                return list.count == 3 && list.allSatisfy { $0.state == .alive }
                    && list.allSatisfy { $0.sync == ($0.node == node ? .ready : .inSync) }
            }
        }
        for node in nodes {
            for member in members(cluster, node) {
                XCTAssertNotNil(member.lastContact, "\(node) shows alive \(member.node) without a last contact")
            }
        }
        // A member that left and came back is listed with its new contact, and in sync again.
        cluster.processes["node3"]!.kill9()
        waitUntil("node1 sees node3 gone", timeout: 20) {
            members(cluster, "node1").first { $0.node == "node3" }?.state == .dead
        }
        XCTAssertEqual(members(cluster, "node1").first { $0.node == "node3" }?.sync, .unknown, "no sync state for a dead member")
        try cluster.start("node3")
        cluster.waitReady("node3")
        waitUntil("node1 sees node3 alive and in sync again", timeout: 20) {
            let node3 = members(cluster, "node1").first { $0.node == "node3" }
            return node3?.state == .alive && node3?.sync == .inSync && node3?.lastContact != nil
        }
    }
}
