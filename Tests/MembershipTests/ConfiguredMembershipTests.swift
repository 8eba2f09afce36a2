import Membership
import XCTest

/// `limitMembershipToKnownNodes`, `addSeed` and `remove(node:)`: membership that follows a
/// node's config (reloads) instead of what gossip says.
final class ConfiguredMembershipTests: XCTestCase {
    let start: UInt64 = 10_000
    var random = SeededRNG(seed: 5)

    /// "a" configured with b and c, limited to them, both confirmed alive by a ping each.
    private func configured() -> SWIMInstance {
        var swim = SWIMInstance(myself: "a", address: "addr-a", instance: 500,
                                seeds: [(node: "b", address: "addr-b"), (node: "c", address: "addr-c")],
                                settings: SWIMSettings(), nowMillis: start)
        swim.limitMembershipToKnownNodes()
        for node in ["b", "c"] { _ = swim.receive(.ping(sequence: 1, gossip: []), from: node, instance: 7, address: "addr-\(node)", nowMillis: start) }
        XCTAssertEqual(swim.members.map(\.status), [.alive, .alive])
        return swim
    }

    private func rumour(_ node: NodeID, _ status: MemberStatus, instance: UInt64 = 9, incarnation: UInt64 = 0) -> GossipUpdate {
        GossipUpdate(node: node, address: "addr-\(node)", instance: instance, incarnation: incarnation, status: status)
    }

    /// Every node a directive is addressed to.
    private func recipients(_ directives: [SWIMDirective]) -> Set<NodeID> {
        Set(directives.compactMap { if case .send(_, let to, _) = $0 { return to } else { return nil } })
    }

    private func gossip(_ directives: [SWIMDirective]) -> [GossipUpdate] {
        directives.flatMap { directive -> [GossipUpdate] in
            if case .send(let message, _, _) = directive { return message.gossip } else { return [] }
        }
    }

    /// Runs `swim` for `millis` with every probe of b and c acknowledged; returns what it sent.
    private func run(_ swim: inout SWIMInstance, from: UInt64, millis: UInt64) -> [SWIMDirective] {
        var sent: [SWIMDirective] = []
        var now = from
        while now < from + millis {
            now += 100
            let out = swim.tick(nowMillis: now, random: &random)
            sent += out
            for case .send(.ping(let sequence, _), let to, _) in out where to == "b" || to == "c" {
                sent += swim.receive(.ack(sequence: sequence, target: to, gossip: []), from: to, instance: 7, address: "addr-\(to)", nowMillis: now)
            }
        }
        return sent
    }

    func testLimitedMembershipIgnoresNodesItDoesNotList() {
        var swim = configured()
        // c vouches for x (in its config, not in ours) and even accuses b's process of nothing new.
        let out = swim.receive(.ping(sequence: 2, gossip: [rumour("x", .alive), rumour("x", .dead, incarnation: 3)]),
                               from: "c", instance: 7, address: "addr-c", nowMillis: start + 10)
        XCTAssertNil(swim.member("x"), "a rumour about a node this config does not list is ignored")
        XCTAssertFalse(out.contains { if case .statusChanged = $0 { return true } else { return false } })
        XCTAssertEqual(swim.receive(.ping(sequence: 3, gossip: []), from: "x", instance: 9, address: "addr-x", nowMillis: start + 20), [],
                       "a message from it is not even answered")
        XCTAssertNil(swim.member("x"))
        // c probes x (c lists it) and asks us to help: we nack at once rather than dial it.
        XCTAssertEqual(swim.receive(.pingRequest(sequence: 4, target: "x", targetAddress: "addr-x", gossip: []),
                                    from: "c", instance: 7, address: "addr-c", nowMillis: start + 30),
                       [.send(.nack(sequence: 4, target: "x"), to: "c", address: "addr-c")])
        let later = run(&swim, from: start + 20, millis: 10_000)
        XCTAssertFalse(recipients(later).contains("x"), "never probed")
        XCTAssertFalse(gossip(later).contains { $0.node == "x" }, "never gossiped")

        // Without the limit (the core's default, as in the simulations) gossip introduces members.
        var open = SWIMInstance(myself: "a", address: "addr-a", instance: 500, seeds: [(node: "c", address: "addr-c")],
                                settings: SWIMSettings(), nowMillis: start)
        _ = open.receive(.ping(sequence: 2, gossip: [rumour("x", .alive)]), from: "c", instance: 7, address: "addr-c", nowMillis: start + 10)
        XCTAssertEqual(open.member("x")?.status, .alive)
    }

    func testAnAddedSeedIsPingedUntilHeardThenRumoursAboutItCount() {
        var swim = configured()
        XCTAssertTrue(swim.addSeed(node: "d", address: "addr-d", nowMillis: start + 50))
        XCTAssertFalse(swim.addSeed(node: "d", address: "addr-d", nowMillis: start + 60), "already known")
        XCTAssertFalse(swim.addSeed(node: "a", address: "addr-a", nowMillis: start + 60), "not itself")
        XCTAssertEqual(swim.pendingSeeds, ["d"])
        XCTAssertNil(swim.member("d"), "not reported before it is heard of")
        let out = run(&swim, from: start + 50, millis: 700)
        XCTAssertTrue(out.contains { if case .send(.ping, "d", "addr-d") = $0 { return true } else { return false } },
                      "pinged at its configured address: \(out)")

        // A rumour about it now counts: someone heard its process.
        let heard = swim.receive(.ping(sequence: 5, gossip: [rumour("d", .alive)]), from: "b", instance: 7, address: "addr-b", nowMillis: start + 800)
        XCTAssertEqual(swim.member("d")?.status, .alive)
        XCTAssertTrue(heard.contains(.statusChanged(swim.member("d")!, previous: nil)))
        XCTAssertEqual(swim.pendingSeeds, [])
    }

    func testAnAddedSeedNobodyHearsOfIsDeadAfterTheSeedTimeout() {
        var swim = configured()
        swim.addSeed(node: "d", address: "addr-d", nowMillis: start)
        let timeout = SWIMSettings().probeIntervalMillis + SWIMSettings().suspicionTimeoutMillis(memberCount: 4)
        _ = run(&swim, from: start, millis: timeout - 200)
        XCTAssertNil(swim.member("d"))
        let out = run(&swim, from: start + timeout - 200, millis: 400)
        XCTAssertEqual(swim.member("d")?.status, .dead)
        XCTAssertEqual(swim.member("d")?.instance, 0, "no process of it is known")
        XCTAssertFalse(gossip(out).contains { $0.node == "d" }, "a seed that never answered is not gossiped as dead")
    }

    func testARemovedMemberIsForgottenNeverContactedAndRumoursAboutItAreIgnored() {
        var swim = configured()
        // c asks us to ping b for it; then b is removed before the ping is answered.
        let relay = swim.receive(.pingRequest(sequence: 40, target: "b", targetAddress: "addr-b", gossip: []),
                                 from: "c", instance: 7, address: "addr-c", nowMillis: start + 10)
        XCTAssertTrue(recipients(relay).contains("b"))
        let (last, directives) = swim.remove(node: "b")
        XCTAssertEqual(last?.status, .alive)
        XCTAssertEqual(last?.address, "addr-b")
        XCTAssertEqual(directives, [.send(.nack(sequence: 40, target: "b"), to: "c", address: "addr-c")],
                       "the requester hears at once that we will not ping it")
        XCTAssertNil(swim.member("b"))
        XCTAssertEqual(swim.members.map(\.node), ["c"])

        // Rumours about b (alive, dead, a new process) and b's own messages change nothing.
        _ = swim.receive(.ping(sequence: 6, gossip: [rumour("b", .alive, instance: 8), rumour("b", .dead, instance: 7, incarnation: 4)]),
                         from: "c", instance: 7, address: "addr-c", nowMillis: start + 20)
        XCTAssertEqual(swim.receive(.ping(sequence: 7, gossip: []), from: "b", instance: 8, address: "addr-b", nowMillis: start + 30), [])
        XCTAssertEqual(swim.receive(.ack(sequence: 1, target: "b", gossip: []), from: "b", instance: 7, address: "addr-b", nowMillis: start + 30), [])
        XCTAssertNil(swim.member("b"))

        // Many rounds, dead pings included: b is never contacted and never talked about.
        let later = run(&swim, from: start + 30, millis: 20 * SWIMSettings().probeIntervalMillis * UInt64(SWIMSettings().deadPingEveryRounds))
        XCTAssertEqual(recipients(later), ["c"])
        XCTAssertFalse(gossip(later).contains { $0.node == "b" })
        XCTAssertEqual(swim.members.map(\.status), [.alive], "c stays alive: removing b confused nothing")

        // Added back (the operator changed their mind): a seed again.
        XCTAssertTrue(swim.addSeed(node: "b", address: "addr-b", nowMillis: start + 40_000))
        _ = swim.receive(.ping(sequence: 8, gossip: []), from: "b", instance: 9, address: "addr-b", nowMillis: start + 40_010)
        XCTAssertEqual(swim.member("b")?.status, .alive)
    }

    func testRemovingADeadOrUnknownNodeIsHarmless() {
        var swim = configured()
        XCTAssertNil(swim.remove(node: "zz").last)
        swim.addSeed(node: "d", address: "addr-d", nowMillis: start)
        XCTAssertNil(swim.remove(node: "d").last, "an unconfirmed seed had no reported view")
        XCTAssertEqual(swim.pendingSeeds, [])
        let later = run(&swim, from: start, millis: 10_000)
        XCTAssertFalse(recipients(later).contains("d"))
    }
}
