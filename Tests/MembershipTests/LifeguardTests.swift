import XCTest
import Membership

/// One test per Lifeguard rule of `SWIMInstance` (local health, dynamic suspicion, probing a
/// heard suspect) and per transport hint (refused, closed), on a single instance driven by hand.
final class LifeguardTests: XCTestCase {
    let now: UInt64 = 10_000
    let settings = SWIMSettings()

    /// "a" knowing `peers`, each confirmed alive by a ping at `now`, rumour queue drained.
    private func instance(_ peers: [NodeID]) -> SWIMInstance {
        var swim = SWIMInstance(myself: "a", address: "addr-a", instance: 500,
                                seeds: peers.map { (node: $0, address: "addr-\($0)") }, settings: settings, nowMillis: now)
        for peer in peers {
            _ = swim.receive(.ping(sequence: 1, gossip: []), from: peer, instance: 10, address: "addr-\(peer)", nowMillis: now)
        }
        for i in 0..<200 {
            _ = swim.receive(.ping(sequence: UInt64(i), gossip: []), from: peers[0], instance: 10,
                             address: "addr-\(peers[0])", nowMillis: now)
        }
        return swim
    }

    private func suspect(_ node: NodeID, origin: NodeID = "", incarnation: UInt64 = 0) -> GossipUpdate {
        GossipUpdate(node: node, address: "addr-\(node)", instance: 10, incarnation: incarnation, status: .suspect, origin: origin)
    }

    private func pings(_ out: [SWIMDirective]) -> [(sequence: UInt64, to: NodeID)] {
        out.compactMap { if case .send(.ping(let s, _), let to, _) = $0 { return (s, to) } else { return nil } }
    }

    private func pingRequests(_ out: [SWIMDirective]) -> [(sequence: UInt64, target: NodeID, helper: NodeID)] {
        out.compactMap {
            if case .send(.pingRequest(let s, let t, _, _), let to, _) = $0 { return (s, t, to) } else { return nil }
        }
    }

    /// Runs one probe round that fails; `nack` decides whether the helpers nack in time.
    private func failOneProbe(_ swim: inout SWIMInstance, nack: Bool, rng: inout SeededRNG) -> NodeID? {
        let out = swim.tick(nowMillis: now, random: &rng)
        guard let probe = pings(out).first else { XCTFail("no probe: \(out)"); return nil }
        let requests = pingRequests(swim.tick(nowMillis: now + settings.probeTimeoutMillis, random: &rng))
        XCTAssertEqual(requests.count, 2, "both other members are asked")
        if nack {
            for request in requests {
                _ = swim.receive(.nack(sequence: request.sequence, target: request.target), from: request.helper,
                                 instance: 10, address: "addr-\(request.helper)", nowMillis: now + 2 * settings.probeTimeoutMillis)
            }
        }
        _ = swim.tick(nowMillis: now + 3 * settings.probeTimeoutMillis, random: &rng)
        XCTAssertEqual(swim.member(probe.to)?.status, .suspect)
        return probe.to
    }

    func testMissedNacksRaiseLocalHealthAndScaleProbeTiming() {
        var swim = instance(["b", "c", "d"])
        var rng = SeededRNG(seed: 7)
        XCTAssertEqual(swim.localHealth, 0)
        _ = failOneProbe(&swim, nack: false, rng: &rng)
        XCTAssertEqual(swim.localHealth, 2, "+1 per helper that neither acked nor nacked")
        XCTAssertEqual(swim.effectiveProbeIntervalMillis, 3 * settings.probeIntervalMillis)
        XCTAssertEqual(swim.effectiveProbeTimeoutMillis, 3 * settings.probeTimeoutMillis)
    }

    func testNackedFailureIsTheTargetsFaultNotOurs() {
        var swim = instance(["b", "c", "d"])
        var rng = SeededRNG(seed: 7)
        _ = failOneProbe(&swim, nack: true, rng: &rng)
        XCTAssertEqual(swim.localHealth, 0, "every helper nacked: our own links and CPU are fine")
    }

    func testFailedProbeWithNobodyToAskCountsOnce() {
        var swim = instance(["b"])
        var rng = SeededRNG(seed: 1)
        _ = swim.tick(nowMillis: now, random: &rng)
        _ = swim.tick(nowMillis: now + settings.probeTimeoutMillis, random: &rng)
        _ = swim.tick(nowMillis: now + 3 * settings.probeTimeoutMillis, random: &rng)
        XCTAssertEqual(swim.member("b")?.status, .suspect)
        XCTAssertEqual(swim.localHealth, 1)
    }

    func testAcknowledgedProbesLowerLocalHealth() {
        var swim = instance(["b", "c", "d"])
        var rng = SeededRNG(seed: 7)
        _ = failOneProbe(&swim, nack: false, rng: &rng)
        XCTAssertEqual(swim.localHealth, 2)
        // The next round comes a scaled interval after the last one; ack every probe.
        var t = now + 3 * settings.probeTimeoutMillis
        var acked = 0
        while swim.localHealth > 0 && t < now + 20_000 {
            t += 50
            for probe in pings(swim.tick(nowMillis: t, random: &rng)) {
                _ = swim.receive(.ack(sequence: probe.sequence, target: probe.to, gossip: []), from: probe.to,
                                 instance: 10, address: "addr-\(probe.to)", nowMillis: t)
                acked += 1
            }
        }
        XCTAssertEqual(swim.localHealth, 0)
        XCTAssertEqual(acked, 2, "one step down per acknowledged probe")
    }

    func testRefutingRaisesLocalHealthUpToTheCap() {
        var swim = instance(["b", "c"])
        _ = swim.receive(.ping(sequence: 1, gossip: [GossipUpdate(node: "a", address: "addr-a", instance: 500,
                                                                  incarnation: 0, status: .suspect)]),
                         from: "b", instance: 10, address: "addr-b", nowMillis: now)
        XCTAssertEqual(swim.myself.incarnation, 1)
        XCTAssertEqual(swim.localHealth, 1, "being suspected hints that we answer too slowly")
        for incarnation in 1..<30 {
            _ = swim.receive(.ping(sequence: 1, gossip: [GossipUpdate(node: "a", address: "addr-a", instance: 500,
                                                                      incarnation: UInt64(incarnation), status: .suspect)]),
                             from: "b", instance: 10, address: "addr-b", nowMillis: now)
        }
        XCTAssertEqual(swim.localHealth, settings.maxLocalHealthMultiplier - 1)
        XCTAssertEqual(swim.effectiveProbeIntervalMillis, UInt64(settings.maxLocalHealthMultiplier) * settings.probeIntervalMillis)
    }

    func testScaledIntervalSpacesTheRounds() {
        var swim = instance(["b", "c"])
        _ = swim.receive(.ping(sequence: 1, gossip: [GossipUpdate(node: "a", address: "addr-a", instance: 500,
                                                                  incarnation: 0, status: .suspect)]),
                         from: "b", instance: 10, address: "addr-b", nowMillis: now)
        var rng = SeededRNG(seed: 2)
        var roundsAt: [UInt64] = []
        for t in stride(from: now, through: now + 2_000, by: 50) {
            for probe in pings(swim.tick(nowMillis: t, random: &rng)) {
                roundsAt.append(t)
                _ = swim.receive(.ack(sequence: probe.sequence, target: probe.to, gossip: []), from: probe.to,
                                 instance: 10, address: "addr-\(probe.to)", nowMillis: t)
            }
        }
        // Health 1 → rounds 600 ms apart; the ack brings it back to 0 → 300 ms apart.
        XCTAssertEqual(Array(roundsAt.prefix(4)), [now, now + 600, now + 900, now + 1200])
    }

    func testSuspicionTimeoutFollowsLifeguardsCurve() {
        let min5 = settings.suspicionTimeoutMillis(memberCount: 5)
        XCTAssertEqual(min5, 1732, "1500 + 100·log2(5)")
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 5, confirmations: 0), 3 * min5, "starts at β·Min")
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 5, confirmations: 1), 3 * min5 - min5,
                       "Max − (Max − Min)·log(2)/log(4)")
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 5, confirmations: 3), min5, "K = 3 confirmations: Min")
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 5, confirmations: 9), min5, "never below Min")
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 3, confirmations: 1), settings.suspicionTimeoutMillis(memberCount: 3),
                       "K is capped at n − 2")
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 2, confirmations: 0), 1600, "nobody can confirm: Min")
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 1000), 2497)
    }

    func testIndependentConfirmationsShortenTheSuspicion() {
        var swim = instance(["b", "c", "d", "e"])
        var rng = SeededRNG(seed: 4)
        let min5 = settings.suspicionTimeoutMillis(memberCount: 5)
        _ = swim.receive(.ack(sequence: 0, target: "b", gossip: [suspect("e", origin: "b")]), from: "b", instance: 10,
                         address: "addr-b", nowMillis: now)
        XCTAssertEqual(swim.member("e")?.status, .suspect)
        XCTAssertEqual(swim.suspicionConfirmations(of: "e"), 0)
        XCTAssertEqual(swim.suspicionDeadline(of: "e"), now + 3 * min5)
        // The same accuser again, through another messenger: not independent.
        _ = swim.receive(.ack(sequence: 0, target: "c", gossip: [suspect("e", origin: "b")]), from: "c", instance: 10,
                         address: "addr-c", nowMillis: now + 10)
        XCTAssertEqual(swim.suspicionConfirmations(of: "e"), 0)
        _ = swim.receive(.ack(sequence: 0, target: "b", gossip: [suspect("e", origin: "c")]), from: "b", instance: 10,
                         address: "addr-b", nowMillis: now + 20)
        XCTAssertEqual(swim.suspicionConfirmations(of: "e"), 1)
        XCTAssertEqual(swim.suspicionDeadline(of: "e"), now + 2 * min5)
        // Today's wire carries no origin: the messenger stands in for it.
        _ = swim.receive(.ack(sequence: 0, target: "d", gossip: [suspect("e")]), from: "d", instance: 10,
                         address: "addr-d", nowMillis: now + 30)
        XCTAssertEqual(swim.suspicionConfirmations(of: "e"), 2)
        // Our own probe of the suspect (started at once: we heard of it) fails: third confirmation.
        var t = now + 30
        var probed = false
        while swim.member("e")?.status == .suspect && swim.suspicionConfirmations(of: "e") == 2 && t < now + 2_000 {
            t += 50
            let out = swim.tick(nowMillis: t, random: &rng)
            probed = probed || pings(out).contains { $0.to == "e" }
            for probe in pings(out) where probe.to != "e" {
                _ = swim.receive(.ack(sequence: probe.sequence, target: probe.to, gossip: []), from: probe.to,
                                 instance: 10, address: "addr-\(probe.to)", nowMillis: t)
            }
            for request in pingRequests(out) {
                _ = swim.receive(.nack(sequence: request.sequence, target: request.target), from: request.helper,
                                 instance: 10, address: "addr-\(request.helper)", nowMillis: t)
            }
        }
        XCTAssertTrue(probed, "a member that hears of a suspicion probes the suspect itself")
        XCTAssertEqual(swim.suspicionConfirmations(of: "e"), 3)
        XCTAssertEqual(swim.suspicionDeadline(of: "e"), now + min5, "K confirmations: the minimum, from the start")
        XCTAssertEqual(swim.localHealth, 0, "the helpers nacked: no blame on ourselves")
    }

    func testALoneAccuserGetsTheLongTimeout() {
        var swim = instance(["b", "c", "d", "e"])
        var rng = SeededRNG(seed: 5)
        let min5 = settings.suspicionTimeoutMillis(memberCount: 5)
        _ = swim.receive(.ack(sequence: 0, target: "b", gossip: [suspect("e", origin: "b")]), from: "b", instance: 10,
                         address: "addr-b", nowMillis: now)
        // Everyone (e included) answers our probes, but e never hears of the suspicion to refute it.
        var t = now
        var deadAt: UInt64?
        while deadAt == nil && t < now + 10 * min5 {
            t += 50
            let out = swim.tick(nowMillis: t, random: &rng)
            for probe in pings(out) {
                _ = swim.receive(.ack(sequence: probe.sequence, target: probe.to, gossip: []), from: probe.to,
                                 instance: 10, address: "addr-\(probe.to)", nowMillis: t)
            }
            if swim.member("e")?.status == .dead { deadAt = t }
        }
        XCTAssertEqual(swim.suspicionConfirmations(of: "e"), nil)
        let deadline = now + 3 * min5
        XCTAssertNotNil(deadAt)
        XCTAssertGreaterThanOrEqual(deadAt ?? 0, deadline)
        XCTAssertLessThan(deadAt ?? .max, deadline + 50 + 1)
    }

    func testRefusedConnectionFailsTheProbeAsSoonAsEveryHelperNacked() {
        var swim = instance(["b", "c", "d"])
        var rng = SeededRNG(seed: 7)
        guard let probe = pings(swim.tick(nowMillis: now, random: &rng)).first else { return XCTFail("no probe") }
        XCTAssertTrue(swim.connectionFailed(to: probe.to, nowMillis: now + 2).isEmpty)
        let requests = pingRequests(swim.tick(nowMillis: now + 50, random: &rng))
        XCTAssertEqual(requests.count, 2, "escalated before the probe timeout")
        _ = swim.receive(.nack(sequence: requests[0].sequence, target: probe.to), from: requests[0].helper, instance: 10,
                         address: "addr-\(requests[0].helper)", nowMillis: now + 55)
        XCTAssertEqual(swim.member(probe.to)?.status, .alive, "one helper may still get through")
        let out = swim.receive(.nack(sequence: requests[1].sequence, target: probe.to), from: requests[1].helper, instance: 10,
                               address: "addr-\(requests[1].helper)", nowMillis: now + 60)
        XCTAssertEqual(swim.member(probe.to)?.status, .suspect, "refused and nacked by all: suspect now, not at the deadline")
        XCTAssertTrue(out.contains { if case .statusChanged(let m, .alive) = $0 { return m.node == probe.to } else { return false } })
        XCTAssertEqual(swim.localHealth, 0)
    }

    func testWithoutRefusalTheProbeWaitsForItsDeadlineEvenIfAllNack() {
        var swim = instance(["b", "c", "d"])
        var rng = SeededRNG(seed: 7)
        guard let probe = pings(swim.tick(nowMillis: now, random: &rng)).first else { return XCTFail("no probe") }
        let requests = pingRequests(swim.tick(nowMillis: now + settings.probeTimeoutMillis, random: &rng))
        for request in requests {
            _ = swim.receive(.nack(sequence: request.sequence, target: probe.to), from: request.helper, instance: 10,
                             address: "addr-\(request.helper)", nowMillis: now + 250)
        }
        XCTAssertEqual(swim.member(probe.to)?.status, .alive, "a late direct ack may still come (frozen, not dead)")
        _ = swim.tick(nowMillis: now + 3 * settings.probeTimeoutMillis, random: &rng)
        XCTAssertEqual(swim.member(probe.to)?.status, .suspect)
    }

    func testRefusedOrClosedConnectionGetsAProbeOutOfTurn() {
        var swim = instance(["b", "c", "d", "e", "f"])
        var rng = SeededRNG(seed: 3)
        guard let first = pings(swim.tick(nowMillis: now, random: &rng)).first else { return XCTFail("no probe") }
        let others = ["b", "c", "d", "e", "f"].filter { $0 != first.to }
        _ = swim.connectionFailed(to: others[0], nowMillis: now + 10)
        swim.connectionClosed(to: others[1])
        let out = swim.tick(nowMillis: now + 50, random: &rng)
        XCTAssertEqual(Set(pings(out).map(\.to)), [others[0], others[1]], "probed before their turn: \(out)")
    }

    func testPendingRumoursArePushedToAFewMembersThenStop() {
        var swim = instance(["b", "c", "d", "e", "f"])
        var rng = SeededRNG(seed: 8)
        _ = swim.receive(.ack(sequence: 0, target: "b", gossip: [GossipUpdate(node: "g", address: "addr-g", instance: 3,
                                                                               incarnation: 0, status: .alive)]),
                         from: "b", instance: 10, address: "addr-b", nowMillis: now)
        let out = swim.tick(nowMillis: now + settings.gossipIntervalMillis, random: &rng)
        let pushes = out.compactMap { d -> NodeID? in
            if case .send(.ack(0, "a", let gossip), let to, _) = d, gossip.contains(where: { $0.node == "g" }) { return to }
            return nil
        }
        XCTAssertEqual(pushes.count, settings.gossipFanout)
        XCTAssertEqual(Set(pushes).count, pushes.count, "distinct members")
        // A push is one-way: the receiver merges it and answers nothing.
        var other = instance(["b", "c"])
        let reply = other.receive(.ack(sequence: 0, target: "b", gossip: [GossipUpdate(node: "g", address: "addr-g",
                                                                                      instance: 3, incarnation: 0, status: .alive)]),
                                  from: "b", instance: 10, address: "addr-b", nowMillis: now)
        XCTAssertFalse(reply.contains { if case .send = $0 { return true } else { return false } })
        XCTAssertEqual(other.member("g")?.status, .alive)
        // Once every rumour has been sent its λ·log2(n) times, the pushes stop.
        var t = now + settings.gossipIntervalMillis
        var lastPush = t
        while t < now + 30_000 {
            t += 50
            let out = swim.tick(nowMillis: t, random: &rng)
            for probe in pings(out) {
                _ = swim.receive(.ack(sequence: probe.sequence, target: probe.to, gossip: []), from: probe.to,
                                 instance: 10, address: "addr-\(probe.to)", nowMillis: t)
            }
            if out.contains(where: { if case .send(.ack(0, _, _), _, _) = $0 { return true } else { return false } }) { lastPush = t }
        }
        XCTAssertLessThan(lastPush, now + 10_000, "no pushes in a quiet cluster")
    }

    func testSeedsArePingedABoundedNumberPerRoundRoundRobin() {
        let seeds = (1...20).map { "s\($0)" }
        var swim = SWIMInstance(myself: "a", address: "addr-a", instance: 500,
                                seeds: seeds.map { (node: $0, address: "addr-\($0)") }, settings: settings, nowMillis: now)
        var rng = SeededRNG(seed: 1)
        var pinged: [NodeID] = []
        for round in 0..<3 {
            let out = pings(swim.tick(nowMillis: now + UInt64(round) * settings.probeIntervalMillis, random: &rng))
            XCTAssertEqual(out.count, settings.maxPingsPerRoundToUnconfirmed)
            pinged += out.map(\.to)
        }
        XCTAssertEqual(Set(pinged), Set(seeds), "every seed within ⌈20/8⌉ rounds")
        // None times out before it has been pinged: 3 rounds, then the suspicion minimum.
        let deadline = now + 3 * settings.probeIntervalMillis + settings.suspicionTimeoutMillis(memberCount: 21)
        for t in stride(from: now + 700, to: deadline - 1, by: 100) { _ = swim.tick(nowMillis: t, random: &rng) }
        _ = swim.tick(nowMillis: deadline - 1, random: &rng)
        XCTAssertEqual(swim.pendingSeeds.count, 20)
        _ = swim.tick(nowMillis: deadline, random: &rng)
        XCTAssertEqual(swim.pendingSeeds, [])
        XCTAssertEqual(swim.members.filter { $0.status == .dead }.count, 20)
    }

    func testConfirmedSeedsAreNotGossipedButNewcomersAndRestartsAre() {
        var swim = SWIMInstance(myself: "a", address: "addr-a", instance: 500,
                                seeds: [(node: "b", address: "addr-b"), (node: "c", address: "addr-c")],
                                settings: settings, nowMillis: now)
        _ = swim.receive(.ping(sequence: 1, gossip: []), from: "b", instance: 10, address: "addr-b", nowMillis: now)
        _ = swim.receive(.ping(sequence: 2, gossip: [GossipUpdate(node: "c", address: "addr-c", instance: 20,
                                                                  incarnation: 0, status: .alive)]),
                         from: "b", instance: 10, address: "addr-b", nowMillis: now)
        XCTAssertEqual(swim.member("c")?.status, .alive)
        XCTAssertEqual(swim.pendingRumourCount, 0, "every member has b and c configured: no start-up rumour storm")
        // A member nobody configured here, and a restart of a known one, are news.
        _ = swim.receive(.ping(sequence: 3, gossip: [GossipUpdate(node: "x", address: "addr-x", instance: 5,
                                                                  incarnation: 0, status: .alive)]),
                         from: "b", instance: 10, address: "addr-b", nowMillis: now)
        XCTAssertEqual(swim.pendingRumourCount, 1)
        _ = swim.receive(.ping(sequence: 4, gossip: []), from: "c", instance: 21, address: "addr-c", nowMillis: now)
        XCTAssertEqual(swim.member("c")?.instance, 21)
        XCTAssertEqual(swim.pendingRumourCount, 2)
    }

    func testAConfiguredSeedGetsNoFullMembershipAnswer() {
        var swim = SWIMInstance(myself: "a", address: "addr-a", instance: 500,
                                seeds: [(node: "b", address: "addr-b"), (node: "c", address: "addr-c")],
                                settings: settings, nowMillis: now)
        _ = swim.receive(.ping(sequence: 1, gossip: []), from: "c", instance: 20, address: "addr-c", nowMillis: now)
        let fromSeed = swim.receive(.ping(sequence: 2, gossip: []), from: "b", instance: 10, address: "addr-b", nowMillis: now)
        guard case .send(.ack(_, _, let seedGossip), "b", _)? = fromSeed.last else { return XCTFail("no ack: \(fromSeed)") }
        XCTAssertEqual(seedGossip.map(\.node), ["a"], "b has every member configured: it confirms them itself")
        let fromStranger = swim.receive(.ping(sequence: 3, gossip: []), from: "x", instance: 5, address: "addr-x", nowMillis: now)
        guard case .send(.ack(_, _, let strangerGossip), "x", _)? = fromStranger.last else { return XCTFail("no ack") }
        XCTAssertEqual(Set(strangerGossip.map(\.node)), ["a", "b", "c"], "a node we did not configure gets the whole view")
    }
}
