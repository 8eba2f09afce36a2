import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Hosts of our own in network namespaces on this machine: each node gets a namespace with a
/// veth into a bridge and its own 10.231.x.y address. A partition moves some nodes' veths onto a
/// second bridge; healing moves them back. Everything is torn down in `destroy()`.
final class NamespaceNetwork {
    let tag: String
    let nodes: [String]
    private(set) var addresses: [String: String] = [:]
    private var created: [String] = []

    static var available: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip")
    }

    static var ipPath: String { FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip" }

    init(nodes: [String], subnet: Int) throws {
        self.nodes = nodes
        tag = "k\(getpid() % 10000)\(subnet)"
        try ip(["link", "add", bridge(0), "type", "bridge"]); created.append("link:" + bridge(0))
        try ip(["link", "add", bridge(1), "type", "bridge"]); created.append("link:" + bridge(1))
        try ip(["link", "set", bridge(0), "up"])
        try ip(["link", "set", bridge(1), "up"])
        for (i, node) in nodes.enumerated() {
            let ns = namespace(node)
            try ip(["netns", "add", ns]); created.append("netns:" + ns)
            let host = "\(tag)h\(i)", inner = "\(tag)n\(i)"
            try ip(["link", "add", host, "type", "veth", "peer", "name", inner]); created.append("link:" + host)
            try ip(["link", "set", inner, "netns", ns])
            try ip(["link", "set", host, "master", bridge(0)])
            try ip(["link", "set", host, "up"])
            let address = "10.231.\(subnet).\(i + 1)"
            try ip(["netns", "exec", ns, Self.ipPath, "addr", "add", "\(address)/24", "dev", inner])
            try ip(["netns", "exec", ns, Self.ipPath, "link", "set", inner, "up"])
            try ip(["netns", "exec", ns, Self.ipPath, "link", "set", "lo", "up"])
            addresses[node] = address
        }
    }

    func namespace(_ node: String) -> String { "\(tag)-\(node)" }
    private func bridge(_ i: Int) -> String { "\(tag)b\(i)" }
    private func hostVeth(_ node: String) -> String { "\(tag)h\(nodes.firstIndex(of: node)!)" }

    func prefix(_ node: String) -> [String] { [Self.ipPath, "netns", "exec", namespace(node)] }

    /// Cuts `side` off from the other nodes.
    func partition(_ side: [String]) throws {
        for node in side { try ip(["link", "set", hostVeth(node), "master", bridge(1)]) }
    }

    func heal() throws {
        for node in nodes { try ip(["link", "set", hostVeth(node), "master", bridge(0)]) }
    }

    func destroy() {
        for item in created.reversed() {
            let parts = item.split(separator: ":", maxSplits: 1).map(String.init)
            if parts[0] == "netns" { try? ip(["netns", "del", parts[1]]) } else { try? ip(["link", "del", parts[1]]) }
        }
        created.removeAll()
    }

    private func ip(_ arguments: [String]) throws {
        try SharedCertificates.run(Self.ipPath, arguments)
    }
}
