import XCTest
import Membership

final class InstanceTests: XCTestCase {
    let now: UInt64 = 10_000

    private func fresh(seeds: [(node: NodeID, address: String)] = []) -> SWIMInstance {
        SWIMInstance(myself: "a", address: "addr-a", instance: 500, seeds: seeds, settings: SWIMSettings(), nowMillis: now)
    }

    private func rumour(_ status: MemberStatus, _ incarnation: UInt64, node: NodeID = "b", instance: UInt64 = 10) -> GossipUpdate {
        GossipUpdate(node: node, address: "addr-\(node)", instance: instance, incarnation: incarnation, status: status)
    }

    /// Feeds gossip to `swim` through a ping from node "c".
    @discardableResult
    private func hear(_ swim: inout SWIMInstance, _ updates: [GossipUpdate], at time: UInt64? = nil) -> [SWIMDirective] {
        swim.receive(.ping(sequence: 1, gossip: updates), from: "c", instance: 77, address: "addr-c", nowMillis: time ?? now)
    }

    private func changes(_ directives: [SWIMDirective], about node: NodeID = "b") -> [(Member, MemberStatus?)] {
        directives.compactMap {
            if case .statusChanged(let member, let previous) = $0, member.node == node { return (member, previous) }
            return nil
        }
    }

    func testPrecedenceRulesTable() {
        // (known, incoming, expected status, expected incarnation, expected instance)
        let table: [(GossipUpdate, GossipUpdate, MemberStatus, UInt64, UInt64, String)] = [
            (rumour(.alive, 1), rumour(.alive, 2), .alive, 2, 10, "alive(i) beats alive(j) if i > j"),
            (rumour(.alive, 2), rumour(.alive, 1), .alive, 2, 10, "older alive ignored"),
            (rumour(.suspect, 1), rumour(.alive, 2), .alive, 2, 10, "alive(i) beats suspect(j) if i > j"),
            (rumour(.suspect, 1), rumour(.alive, 1), .suspect, 1, 10, "alive(i) loses to suspect(i)"),
            (rumour(.alive, 1), rumour(.suspect, 1), .suspect, 1, 10, "suspect(i) beats alive(j) if i >= j"),
            (rumour(.alive, 1), rumour(.suspect, 2), .suspect, 2, 10, "suspect(i) beats alive(j) if i >= j"),
            (rumour(.alive, 2), rumour(.suspect, 1), .alive, 2, 10, "suspect about an older incarnation ignored"),
            (rumour(.suspect, 1), rumour(.suspect, 2), .suspect, 2, 10, "suspect(i) beats suspect(j) if i > j"),
            (rumour(.suspect, 2), rumour(.suspect, 1), .suspect, 2, 10, "older suspect ignored"),
            (rumour(.alive, 5), rumour(.dead, 5), .dead, 5, 10, "dead beats alive of the same incarnation"),
            (rumour(.suspect, 3), rumour(.dead, 3), .dead, 3, 10, "dead beats suspect"),
            (rumour(.suspect, 3), rumour(.dead, 7), .dead, 7, 10, "dead beats suspect"),
            (rumour(.dead, 1), rumour(.alive, 1), .dead, 1, 10, "alive of the declared incarnation cannot revive"),
            (rumour(.dead, 1), rumour(.suspect, 1), .dead, 1, 10, "suspect cannot undo dead"),
            (rumour(.dead, 1), rumour(.alive, 2), .alive, 2, 10, "the process itself refuted its death (partition heal)"),
            (rumour(.alive, 4), rumour(.dead, 3), .alive, 4, 10, "death of an already refuted incarnation ignored"),
            (rumour(.dead, 9), rumour(.alive, 0, instance: 11), .alive, 0, 11, "a new instance replaces a dead one"),
            (rumour(.suspect, 9), rumour(.alive, 0, instance: 11), .alive, 0, 11, "a new instance replaces a suspect one"),
            (rumour(.alive, 3), rumour(.dead, 0, instance: 11), .dead, 0, 11, "news of a newer instance wins whatever it says"),
            (rumour(.suspect, 0, instance: 11), rumour(.alive, 9), .suspect, 0, 11, "rumours about an older instance ignored"),
            (rumour(.alive, 0, instance: 11), rumour(.dead, 9), .alive, 0, 11, "rumours about an older instance ignored"),
        ]
        for (known, incoming, status, incarnation, instance, rule) in table {
            var swim = fresh()
            hear(&swim, [known])
            XCTAssertEqual(swim.member("b")?.status, known.status, "setup: \(rule)")
            let out = hear(&swim, [incoming], at: now + 5)
            let member = swim.member("b")
            XCTAssertEqual(member?.status, status, rule)
            XCTAssertEqual(member?.incarnation, incarnation, rule)
            XCTAssertEqual(member?.instance, instance, rule)
            let expectEvent = status != known.status || instance != known.instance
            XCTAssertEqual(changes(out).count, expectEvent ? 1 : 0, "event count: \(rule)")
            if expectEvent { XCTAssertEqual(changes(out).first?.1, known.status, "previous: \(rule)") }
        }
    }

    func testRefutesSuspicionAndDeathAboutItself() {
        var swim = fresh()
        hear(&swim, [rumour(.suspect, 0, node: "a", instance: 500)])
        XCTAssertEqual(swim.myself.incarnation, 1)
        hear(&swim, [rumour(.dead, 4, node: "a", instance: 500)])
        XCTAssertEqual(swim.myself.incarnation, 5)
        hear(&swim, [rumour(.suspect, 3, node: "a", instance: 500)])
        XCTAssertEqual(swim.myself.incarnation, 5, "an already refuted suspicion changes nothing")
        hear(&swim, [rumour(.dead, 99, node: "a", instance: 499), rumour(.dead, 99, node: "a", instance: 501)])
        XCTAssertEqual(swim.myself.incarnation, 5, "rumours about other processes of my name are ignored")
        XCTAssertEqual(swim.myself.status, .alive)
        XCTAssertEqual(swim.members.map(\.node), ["c"], "never lists itself")

        // The refutation rides on the next message to anyone.
        let out = swim.receive(.ping(sequence: 9, gossip: []), from: "c", instance: 77, address: "addr-c", nowMillis: now)
        guard case .send(.ack(9, "a", let gossip), "c", "addr-c")? = out.first else {
            return XCTFail("expected an ack to c, got \(out)")
        }
        XCTAssertTrue(gossip.contains(rumour(.alive, 5, node: "a", instance: 500)))

        // A forged maximal incarnation must not trap.
        hear(&swim, [rumour(.dead, .max, node: "a", instance: 500)])
        XCTAssertEqual(swim.myself.incarnation, .max)
    }

    func testPingIsAnsweredAndSenderBecomesAlive() {
        var swim = fresh(seeds: [(node: "b", address: "addr-b")])
        XCTAssertEqual(swim.pendingSeeds, ["b"])
        XCTAssertNil(swim.member("b"))
        let out = swim.receive(.ping(sequence: 3, gossip: []), from: "b", instance: 10, address: "addr-b2", nowMillis: now)
        XCTAssertEqual(swim.pendingSeeds, [])
        XCTAssertEqual(swim.member("b")?.status, .alive)
        XCTAssertEqual(swim.member("b")?.address, "addr-b2", "the advertised address is adopted")
        XCTAssertEqual(swim.member("b")?.lastHeardMillis, now)
        XCTAssertEqual(changes(out).count, 1)
        XCTAssertNil(changes(out).first?.1)
        XCTAssertTrue(out.contains {
            if case .send(.ack(3, "a", _), "b", "addr-b2") = $0 { return true } else { return false }
        })
        // A message from an older process of b is ignored entirely.
        let stale = swim.receive(.ping(sequence: 4, gossip: [rumour(.alive, 0, node: "d")]), from: "b", instance: 9,
                                 address: "addr-b", nowMillis: now)
        XCTAssertEqual(stale, [])
        XCTAssertNil(swim.member("d"))
    }

    /// After a partition heals every member holds a backlog of verdicts from its side; news
    /// queued after them (a refutation) must not wait until the backlog has been sent: among
    /// rumours sent equally often the newest goes first.
    func testNewestRumourGoesFirstAmongEquallySentOnes() {
        var swim = fresh()
        hear(&swim, (0..<30).map { rumour(.suspect, 1, node: "b\($0)") })
        // The ack to the message that brings the refutation already carries it, first.
        let out = hear(&swim, [rumour(.alive, 2, node: "z")])
        guard case .send(.ack(1, "a", let gossip), "c", _)? = out.last else { return XCTFail("no ack: \(out)") }
        let rumoursSent = gossip.filter { $0.node != "a" }
        XCTAssertEqual(rumoursSent.count, SWIMSettings().gossipPerMessage)
        XCTAssertEqual(rumoursSent.first, rumour(.alive, 2, node: "z"), "the newest rumour leads: \(rumoursSent.map(\.node))")
        // The rest are backlog rumours not sent yet, newest first.
        let backlog = rumoursSent.dropFirst().compactMap { $0.node.hasPrefix("b") ? Int($0.node.dropFirst()) : nil }
        XCTAssertFalse(backlog.isEmpty)
        XCTAssertEqual(backlog, backlog.sorted(by: >))
    }

    /// A backlog drains up to four times faster: a message carries a quarter of what is
    /// pending, between `gossipPerMessage` and four times that.
    func testABacklogIsPiggybackedFourTimesFaster() {
        let perMessage = SWIMSettings().gossipPerMessage
        for (pending, expected) in [(20, perMessage), (80, 20), (400, 4 * perMessage)] {
            var swim = fresh()
            // Queued through a member the pings do not come from, so no ack drains them first.
            _ = swim.receive(.ping(sequence: 1, gossip: (0..<pending).map { rumour(.suspect, 1, node: "b\($0)") }),
                         from: "d", instance: 7, address: "addr-d", nowMillis: now)
            let out = swim.receive(.ping(sequence: 2, gossip: []), from: "d", instance: 7, address: "addr-d", nowMillis: now)
            guard case .send(.ack(2, "a", let gossip), "d", _)? = out.last else { return XCTFail("no ack: \(out)") }
            XCTAssertEqual(gossip.filter { $0.node != "a" }.count, expected, "\(pending) pending")
        }
    }

    func testNewcomerGetsFullMembershipOnFirstPing() {
        var swim = fresh()
        hear(&swim, [rumour(.alive, 0, node: "b"), rumour(.dead, 2, node: "d", instance: 3)])
        // Drain the rumour queue so only the full-membership rule can deliver b and d.
        for i in 0..<50 { _ = swim.receive(.ping(sequence: UInt64(i), gossip: []), from: "c", instance: 77, address: "addr-c", nowMillis: now) }
        let out = swim.receive(.ping(sequence: 1, gossip: []), from: "e", instance: 5, address: "addr-e", nowMillis: now)
        guard case .send(.ack(_, _, let gossip), "e", _)? = out.last else { return XCTFail("no ack: \(out)") }
        XCTAssertEqual(Set(gossip.map(\.node)), ["a", "b", "c", "d"])
        let again = swim.receive(.ping(sequence: 2, gossip: []), from: "e", instance: 5, address: "addr-e", nowMillis: now)
        guard case .send(.ack(_, _, let gossip2), "e", _)? = again.last else { return XCTFail("no ack: \(again)") }
        XCTAssertEqual(gossip2.map(\.node), ["a", "e"], "later acks carry only our own record and pending rumours (e's arrival)")
    }

    func testPingRequestRelaysAckOrNacksOnTimeout() {
        var swim = fresh()
        var rng = SeededRNG(seed: 1)
        // c asks a to probe b (unknown to a).
        var out = swim.receive(.pingRequest(sequence: 42, target: "b", targetAddress: "addr-b", gossip: []),
                               from: "c", instance: 77, address: "addr-c", nowMillis: now)
        guard case .send(.ping(let mine, _), "b", "addr-b")? = out.first(where: {
            if case .send(.ping, _, _) = $0 { return true } else { return false }
        }) else { return XCTFail("no ping to b: \(out)") }
        out = swim.receive(.ack(sequence: mine, target: "b", gossip: []), from: "b", instance: 10, address: "addr-b",
                           nowMillis: now + 10)
        XCTAssertTrue(out.contains {
            if case .send(.ack(42, "b", _), "c", "addr-c") = $0 { return true } else { return false }
        }, "ack relayed to the requester: \(out)")

        // Second request: b stays silent, so c gets a nack after the probe timeout.
        out = swim.receive(.pingRequest(sequence: 43, target: "b", targetAddress: "addr-b", gossip: []),
                           from: "c", instance: 77, address: "addr-c", nowMillis: now + 20)
        XCTAssertFalse(swim.tick(nowMillis: now + 30, random: &rng).contains {
            if case .send(.nack, _, _) = $0 { return true } else { return false }
        })
        out = swim.tick(nowMillis: now + 20 + SWIMSettings().probeTimeoutMillis, random: &rng)
        XCTAssertTrue(out.contains(.send(.nack(sequence: 43, target: "b"), to: "c", address: "addr-c")), "\(out)")
        // A late ack for the expired relay is not relayed.
        out = swim.receive(.ack(sequence: mine + 1, target: "b", gossip: []), from: "b", instance: 10, address: "addr-b",
                           nowMillis: now + 400)
        XCTAssertFalse(out.contains { if case .send(.ack, "c", _) = $0 { return true } else { return false } })

        // Asked to probe myself: answer directly.
        out = swim.receive(.pingRequest(sequence: 44, target: "a", targetAddress: "addr-a", gossip: []),
                           from: "c", instance: 77, address: "addr-c", nowMillis: now + 500)
        XCTAssertTrue(out.contains { if case .send(.ack(44, "a", _), "c", _) = $0 { return true } else { return false } })
    }

    func testProbeEscalatesToIndirectThenSuspects() {
        let settings = SWIMSettings()
        var swim = fresh(seeds: [(node: "b", address: "addr-b"), (node: "c", address: "addr-c"), (node: "d", address: "addr-d")])
        for peer in ["b", "c", "d"] {
            _ = swim.receive(.ping(sequence: 1, gossip: []), from: peer, instance: 10, address: "addr-\(peer)", nowMillis: now)
        }
        var rng = SeededRNG(seed: 7)
        var out = swim.tick(nowMillis: now, random: &rng)
        let pings = out.compactMap { d -> (UInt64, NodeID)? in
            if case .send(.ping(let seq, _), let to, _) = d { return (seq, to) } else { return nil }
        }
        XCTAssertEqual(pings.count, 1, "one probe per round once seeds are confirmed")
        guard let (sequence, target) = pings.first else { return }
        XCTAssertTrue(swim.tick(nowMillis: now + 100, random: &rng).isEmpty)
        out = swim.tick(nowMillis: now + settings.probeTimeoutMillis, random: &rng)
        let requests = out.filter {
            if case .send(.pingRequest(sequence, target, "addr-\(target)", _), let to, _) = $0 { return to != target }
            return false
        }
        XCTAssertEqual(requests.count, 2, "all other alive members (2 < indirectProbeCount) are asked")
        // The indirect path (two round trips) gets twice the probe timeout, even past the round.
        out = swim.tick(nowMillis: now + settings.probeIntervalMillis, random: &rng)
        XCTAssertTrue(changes(out, about: target).isEmpty)
        XCTAssertEqual(swim.member(target)?.status, .alive)
        out = swim.tick(nowMillis: now + 3 * settings.probeTimeoutMillis, random: &rng)
        let suspected = changes(out, about: target)
        XCTAssertEqual(suspected.first?.0.status, .suspect)
        XCTAssertEqual(suspected.first?.1, .alive)
        // Hearing from the suspect (same process, not yet refuted) does not clear the verdict, but
        // the reply carries it so the suspect can refute at once.
        out = swim.receive(.ping(sequence: 5, gossip: []), from: target, instance: 10, address: "addr-\(target)",
                           nowMillis: now + 650)
        XCTAssertEqual(swim.member(target)?.status, .suspect)
        guard case .send(.ack(5, "a", let gossip), target, _)? = out.last else { return XCTFail("no ack: \(out)") }
        XCTAssertTrue(gossip.contains { $0.node == target && $0.status == .suspect && $0.incarnation == 0 })
        let refute = GossipUpdate(node: target, address: "addr-\(target)", instance: 10, incarnation: 1, status: .alive)
        out = swim.receive(.ack(sequence: 999, target: target, gossip: [refute]), from: target, instance: 10,
                           address: "addr-\(target)", nowMillis: now + 700)
        XCTAssertEqual(swim.member(target)?.status, .alive)
        XCTAssertEqual(changes(out, about: target).first?.1, .suspect)
    }

    func testConnectionFailedEscalatesWithoutWaiting() {
        var swim = fresh(seeds: [(node: "b", address: "addr-b"), (node: "c", address: "addr-c")])
        for peer in ["b", "c"] {
            _ = swim.receive(.ping(sequence: 1, gossip: []), from: peer, instance: 10, address: "addr-\(peer)", nowMillis: now)
        }
        var rng = SeededRNG(seed: 3)
        let out = swim.tick(nowMillis: now, random: &rng)
        guard case .send(.ping, let target, _)? = out.first else { return XCTFail("no probe: \(out)") }
        swim.connectionFailed(to: target, nowMillis: now + 10)
        let next = swim.tick(nowMillis: now + 50, random: &rng)
        XCTAssertTrue(next.contains { if case .send(.pingRequest, _, _) = $0 { return true } else { return false } },
                      "escalated before probeTimeout: \(next)")
    }

    func testPauseOfThisProcessIsNotEvidenceAgainstOthers() {
        let settings = SWIMSettings()
        var swim = fresh(seeds: [(node: "b", address: "addr-b"), (node: "c", address: "addr-c")])
        _ = swim.receive(.ping(sequence: 1, gossip: []), from: "b", instance: 10, address: "addr-b", nowMillis: now)
        _ = swim.receive(.ping(sequence: 1, gossip: [rumour(.suspect, 0, node: "c", instance: 20)]), from: "b",
                         instance: 10, address: "addr-b", nowMillis: now)
        XCTAssertEqual(swim.member("c")?.status, .suspect)
        var rng = SeededRNG(seed: 9)
        let first = swim.tick(nowMillis: now, random: &rng)
        XCTAssertTrue(first.contains { if case .send(.ping, "b", _) = $0 { return true } else { return false } })
        // Paused for 10 s (longer than the suspicion timeout): the probe of b went unanswered only
        // because we were not running, and c's suspicion did not run its course while we slept.
        let wake = now + 10_000
        let out = swim.tick(nowMillis: wake, random: &rng)
        XCTAssertTrue(changes(out, about: "b").isEmpty, "b must not be suspected after our own pause: \(out)")
        XCTAssertTrue(changes(out, about: "c").isEmpty, "c's suspicion must not expire during our pause")
        XCTAssertEqual(swim.member("b")?.status, .alive)
        // Once running again, c's suspicion times out normally (about the timeout after waking).
        var t = wake
        while swim.member("c")?.status == .suspect && t < wake + 10_000 {
            t += 100
            _ = swim.tick(nowMillis: t, random: &rng)
        }
        XCTAssertEqual(swim.member("c")?.status, .dead)
        XCTAssertGreaterThan(t - wake, settings.suspicionTimeoutMillis(memberCount: 3) / 2)
    }

    func testUnknownNodesAndJunkDoNotCrash() {
        var swim = fresh()
        var rng = SeededRNG(seed: 5)
        let junk: [GossipUpdate] = [
            GossipUpdate(node: "", address: "", instance: 1, incarnation: 0, status: .alive),
            GossipUpdate(node: "x", address: "", instance: 0, incarnation: .max, status: .dead),
            GossipUpdate(node: "y", address: "", instance: .max, incarnation: .max, status: .suspect),
            GossipUpdate(node: "a", address: "", instance: 0, incarnation: .max, status: .dead),
        ]
        let messages: [SWIMMessage] = [
            .ping(sequence: .max, gossip: junk),
            .ack(sequence: 12345, target: "nobody", gossip: junk),
            .ack(sequence: 0, target: "", gossip: []),
            .nack(sequence: 7, target: "ghost"),
            .pingRequest(sequence: 1, target: "", targetAddress: "", gossip: junk),
            .pingRequest(sequence: 2, target: "ghost", targetAddress: "", gossip: []),
        ]
        for message in messages {
            _ = swim.receive(message, from: "stranger", instance: 1, address: "addr-s", nowMillis: now)
            XCTAssertEqual(swim.receive(message, from: "", instance: 1, address: "", nowMillis: now), [])
            XCTAssertEqual(swim.receive(message, from: "a", instance: 500, address: "addr-a", nowMillis: now), [],
                           "messages claiming to be from myself are ignored")
            XCTAssertEqual(swim.receive(message, from: "zero", instance: 0, address: "z", nowMillis: now), [])
        }
        XCTAssertNil(swim.member("x"), "instance 0 rumours are ignored")
        XCTAssertEqual(swim.member("y")?.status, .suspect)
        XCTAssertEqual(swim.member("stranger")?.status, .alive)
        XCTAssertNil(swim.member(""))
        XCTAssertEqual(swim.myself.incarnation, 0)
        // Nack for an unknown/empty target comes back at once rather than occupying a relay.
        let out = swim.receive(.pingRequest(sequence: 3, target: "ghost", targetAddress: "", gossip: []),
                               from: "stranger", instance: 1, address: "addr-s", nowMillis: now)
        XCTAssertTrue(out.contains(.send(.nack(sequence: 3, target: "ghost"), to: "stranger", address: "addr-s")))
        for t in stride(from: now, to: now + 30_000, by: 100) { _ = swim.tick(nowMillis: t, random: &rng) }
        XCTAssertEqual(swim.member("stranger")?.status, .dead, "a silent stranger is eventually dead, not a crash")
    }

    func testSettingsValidationAndTimeouts() throws {
        let settings = SWIMSettings()
        try settings.validate()
        // Lifeguard's minimum: base + 100 ms per doubling of the view.
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 1), 1500)
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 2), 1600)
        XCTAssertEqual(settings.suspicionTimeoutMillis(memberCount: 4), 1700)
        XCTAssertGreaterThan(settings.suspicionTimeoutMillis(memberCount: 25), settings.suspicionTimeoutMillis(memberCount: 10))
        var bad = settings
        bad.probeTimeoutMillis = 300
        XCTAssertThrowsError(try bad.validate()) { error in
            XCTAssertEqual(error as? SWIMSettingsError, .probeTimeoutNotBelowInterval(timeout: 300, interval: 300))
            XCTAssertTrue("\(error)".contains("probeTimeoutMillis"))
        }
        bad = settings
        bad.gossipPerMessage = 0
        XCTAssertThrowsError(try bad.validate()) { XCTAssertTrue("\($0)".contains("gossipPerMessage")) }
        XCTAssertEqual(MemberStatus.allCases.map(\.rawValue), ["alive", "suspect", "dead"])
    }
}
