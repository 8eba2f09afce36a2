import Membership
import Replication
import ReplicatedStore
import TestSupport
import XCTest

/// Each rule of the replication core on one instance, with a real store behind it.
final class RuleTests: XCTestCase {
    typealias Instance = ReplicationInstance<StoreDelta>
    typealias Directive = ReplicationDirective<StoreDelta>

    let peers = ["node2", "node3", "node4"]
    let key = KeyRef(domain: "first.com", name: "token")
    var random = SplitMix64(seed: 9)

    /// A store holding one version of `key` (and, with `certificates`, that many records).
    func replica(versionAt wall: UInt64 = 10, certificates: Int = 0, chunk: Int = 4) -> StoreReplicaContent {
        var store = ReplicatedStore(graceMillis: 60_000, bucketCount: 8)
        _ = store.createInitialVersion(of: key, id: VersionID(created: HLCTimestamp(wallMillis: wall, logical: 0), origin: "node9"))
        for i in 0..<certificates {
            let id = CertificateID(domain: "first.com", user: "u\(i)", sha256: Array(repeating: UInt8(i), count: 32))
            _ = store.appendCertificate(id, CertificateContent(name: "d", der: [UInt8(i)], notBeforeMillis: 0, notAfterMillis: 1,
                                                               jids: [], noCertManagement: false,
                                                               added: HLCTimestamp(wallMillis: 5, logical: 0), origin: "node9"))
        }
        return StoreReplicaContent(store: store, maxEntriesPerChunk: chunk)
    }

    var empty: StoreReplicaContent { StoreReplicaContent(store: ReplicatedStore(graceMillis: 60_000, bucketCount: 8)) }

    func member(_ node: String, _ status: MemberStatus) -> Member {
        Member(node: node, address: node, instance: 1, incarnation: 0, status: status, lastChangeMillis: 0, lastHeardMillis: nil)
    }

    /// "kind→node" for every send, "connect→node", "apply←node", "finished:outcome".
    func summary(_ directives: [Directive]) -> [String] {
        directives.map { directive in
            switch directive {
            case .send(let message, let to): return "\(kind(message))→\(to)"
            case .connect(let to): return "connect→\(to)"
            case .apply(_, let from, _): return "apply←\(from)"
            case .joinFinished(let outcome): return "finished:\(outcome)"
            }
        }
    }

    func kind(_ message: ReplicationMessage<StoreDelta>) -> String {
        switch message {
        case .digest: return "digest"
        case .bucketDigests: return "buckets"
        case .delta(_, let purpose):
            switch purpose {
            case .push: return "push"
            case .repair: return "repair"
            case .repairReply: return "repairReply"
            case .sync: return "sync"
            }
        case .syncRequest: return "syncRequest"
        case .syncDone(let ready): return "syncDone(\(ready))"
        }
    }

    func applyIDs(_ directives: [Directive]) -> [ApplyID] {
        directives.compactMap { if case .apply(_, _, let id) = $0 { return id } else { return nil } }
    }

    func syncChunk() -> ReplicationMessage<StoreDelta> {
        .delta(replica().fullStateChunks()[0], purpose: .sync)
    }

    /// An instance that finished its join (alone here) and is ready, with every peer alive.
    func readyInstance(now: UInt64 = 0) -> Instance {
        var instance = Instance(myself: "node1", peers: peers, nowMillis: now)
        for node in peers { _ = instance.linkChanged(node, .up, nowMillis: now) }
        _ = instance.startJoin(timeoutMillis: 1000, nowMillis: now, replica: empty)
        for node in peers { _ = instance.receive(.syncDone(ready: false), from: node, nowMillis: now, replica: empty) }
        _ = instance.markReady(nowMillis: now, replica: empty)
        for node in peers { _ = instance.memberChanged(member(node, .alive), previous: nil, replica: empty) }
        XCTAssertTrue(instance.isReady)
        return instance
    }

    // MARK: Join

    func testJoinConnectsToEveryPeerAndAsksOncePerConnection() {
        var instance = Instance(myself: "node1", peers: peers + ["node1"], nowMillis: 0)
        XCTAssertEqual(instance.peers, peers, "itself is not a peer")
        XCTAssertEqual(summary(instance.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)), ["connect→node2", "connect→node3", "connect→node4"])
        XCTAssertEqual(summary(instance.linkChanged("node2", .up, nowMillis: 10)), ["syncRequest→node2"])
        XCTAssertEqual(summary(instance.linkChanged("node2", .up, nowMillis: 20)), [], "one request per connection")
        XCTAssertEqual(summary(instance.linkChanged("node2", .down, nowMillis: 30)), [])
        XCTAssertEqual(summary(instance.linkChanged("node2", .up, nowMillis: 40)), ["syncRequest→node2"], "asked again on a new connection")
        // Peers without a connection are dialled again at the redial interval.
        XCTAssertEqual(summary(instance.tick(nowMillis: 400, random: &random, replica: empty)), [])
        XCTAssertEqual(summary(instance.tick(nowMillis: 500, random: &random, replica: empty)), ["connect→node3", "connect→node4"])
        XCTAssertFalse(instance.isReady)
    }

    func testAdoptionWaitsForEveryMergeIssuedBeforeTheDecidingSyncDone() {
        var instance = Instance(myself: "node1", peers: peers, nowMillis: 0)
        _ = instance.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        _ = instance.linkChanged("node3", .up, nowMillis: 1)
        let first = applyIDs(instance.receive(syncChunk(), from: "node3", nowMillis: 2, replica: empty))
        let second = applyIDs(instance.receive(syncChunk(), from: "node3", nowMillis: 3, replica: empty))
        XCTAssertEqual(first.count + second.count, 2)
        XCTAssertEqual(summary(instance.receive(.syncDone(ready: true), from: "node3", nowMillis: 4, replica: empty)), [])
        XCTAssertNil(instance.joinOutcome)
        // A push arriving after the decision is not waited for.
        let late = applyIDs(instance.receive(.delta(replica().fullStateChunks()[0], purpose: .push), from: "node2", nowMillis: 5, replica: empty))
        XCTAssertEqual(summary(instance.applied(second[0], new: StoreDelta(), nowMillis: 6, random: &random, replica: empty)), [])
        XCTAssertEqual(summary(instance.applied(first[0], new: StoreDelta(), nowMillis: 7, random: &random, replica: empty)),
                       ["finished:adopted(from: \"node3\")"])
        XCTAssertEqual(instance.joinOutcome, .adopted(from: "node3"))
        XCTAssertEqual(instance.pendingApplies, late.count)
        XCTAssertFalse(instance.isReady, "ready only once the node says so")
    }

    func testBootstrapsAloneOnlyAfterTheTimeoutAndOnlyWhenNoPeerCanBeReached() {
        var instance = Instance(myself: "node1", peers: peers, nowMillis: 0)
        _ = instance.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        for node in peers { XCTAssertEqual(summary(instance.linkChanged(node, .unreachable, nowMillis: 10)), []) }
        XCTAssertEqual(summary(instance.tick(nowMillis: 999, random: &random, replica: empty)).filter { $0.hasPrefix("finished") }, [])
        XCTAssertNil(instance.joinProblem, "not a problem before the timeout")
        XCTAssertEqual(summary(instance.tick(nowMillis: 1000, random: &random, replica: empty)).filter { $0.hasPrefix("finished") },
                       ["finished:timedOut"])
    }

    func testAPeerThatIsReachableButSilentKeepsTheJoinWaitingAndIsReported() {
        var instance = Instance(myself: "node1", peers: peers, nowMillis: 0)
        _ = instance.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        _ = instance.linkChanged("node2", .unreachable, nowMillis: 10)
        _ = instance.linkChanged("node3", .unresponsive, nowMillis: 10)
        _ = instance.linkChanged("node4", .up, nowMillis: 10)
        _ = instance.linkChanged("node4", .down, nowMillis: 20)
        for now in stride(from: UInt64(100), through: 60_000, by: 100) {
            let out = summary(instance.tick(nowMillis: now, random: &random, replica: empty))
            XCTAssertFalse(out.contains { $0.hasPrefix("finished") }, "minted at \(now) ms while peers were reachable")
        }
        let problem = instance.joinProblem
        XCTAssertEqual(problem?.notAnswering, ["node3", "node4"], "unresponsive, and a connection that dropped without an answer")
        XCTAssertEqual(problem?.unreachable, ["node2"])
        XCTAssertEqual(problem?.overdueMillis, 59_000)
        XCTAssertTrue(problem?.description.contains("waiting for peers node3, node4: reachable but not answering") == true, "\(String(describing: problem))")
        // Once every peer is unreachable on its latest attempt, the node may bootstrap.
        _ = instance.linkChanged("node3", .unreachable, nowMillis: 60_050)
        XCTAssertEqual(summary(instance.linkChanged("node4", .unreachable, nowMillis: 60_060)), ["finished:timedOut"])
    }

    func testOnlyTheStarterGeneratesKeysForAClusterStartingTogether() {
        var starter = Instance(myself: "node1", peers: peers, nowMillis: 0)
        var other = Instance(myself: "node3", peers: ["node1", "node2", "node4"], nowMillis: 0)
        _ = starter.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        _ = other.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        for node in peers { _ = starter.linkChanged(node, .up, nowMillis: 1) }
        for node in ["node1", "node2", "node4"] { _ = other.linkChanged(node, .up, nowMillis: 1) }
        var finished: [String] = []
        for node in peers { finished += summary(starter.receive(.syncDone(ready: false), from: node, nowMillis: 2, replica: empty)) }
        XCTAssertEqual(finished, ["finished:clusterStarting"])
        finished = []
        for node in ["node1", "node2", "node4"] { finished += summary(other.receive(.syncDone(ready: false), from: node, nowMillis: 2, replica: empty)) }
        XCTAssertEqual(finished, [], "node3 is not the starter")
        // It asks the starter again until the starter's state arrives.
        XCTAssertEqual(summary(other.tick(nowMillis: 100, random: &random, replica: empty)), [])
        XCTAssertEqual(summary(other.tick(nowMillis: 252, random: &random, replica: empty)), ["syncRequest→node1"])
        XCTAssertEqual(summary(other.tick(nowMillis: 300, random: &random, replica: empty)), [])
        // While the starter's state streams in, it is not asked again.
        _ = other.receive(syncChunk(), from: "node1", nowMillis: 310, replica: empty)
        XCTAssertEqual(summary(other.tick(nowMillis: 600, random: &random, replica: empty)), [])
        XCTAssertEqual(summary(other.receive(.syncDone(ready: true), from: "node1", nowMillis: 700, replica: empty)), [],
                       "waits for the merge of the chunk")
        XCTAssertEqual(other.joinProblem, nil)
        XCTAssertEqual(summary(other.applied(ApplyID(rawValue: 1), new: StoreDelta(), nowMillis: 710, random: &random, replica: empty)),
                       ["finished:adopted(from: \"node1\")"])
        // If the starter cannot be reached any more, the next one in line takes over.
        var third = Instance(myself: "node2", peers: ["node1", "node3", "node4"], nowMillis: 0)
        _ = third.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        for node in ["node1", "node3", "node4"] {
            _ = third.linkChanged(node, .up, nowMillis: 1)
            _ = third.receive(.syncDone(ready: false), from: node, nowMillis: 2, replica: empty)
        }
        XCTAssertNil(third.joinOutcome)
        _ = third.linkChanged("node1", .down, nowMillis: 3)
        XCTAssertEqual(summary(third.linkChanged("node1", .unreachable, nowMillis: 4)), ["finished:clusterStarting"])
    }

    func testStateRequestsWhileJoiningAreRefusedAndWhileFinishingAreHeldUntilReady() {
        var instance = Instance(myself: "node1", peers: peers, nowMillis: 0)
        let state = replica(certificates: 5, chunk: 2)
        XCTAssertEqual(summary(instance.receive(.syncRequest(durableDigests: nil), from: "node2", nowMillis: 1, replica: state)), ["syncDone(false)→node2"])
        _ = instance.startJoin(timeoutMillis: 10, nowMillis: 1, replica: empty)
        for node in peers { _ = instance.linkChanged(node, .unreachable, nowMillis: 2) }
        XCTAssertEqual(summary(instance.tick(nowMillis: 20, random: &random, replica: state)).last, "finished:timedOut")
        XCTAssertEqual(summary(instance.receive(.syncRequest(durableDigests: nil), from: "node3", nowMillis: 21, replica: state)), [], "held, not refused")
        _ = instance.linkChanged("node3", .up, nowMillis: 22)
        XCTAssertEqual(summary(instance.markReady(nowMillis: 30, replica: state)), ["sync→node3"])
        XCTAssertTrue(instance.isReady)
    }

    // MARK: Streaming

    func testAFullStateAnswerGoesOneChunkPerPumpOnlyOverAnUpConnectionAndStartsOverOnANewOne() {
        var instance = readyInstance()
        let state = replica(certificates: 11, chunk: 2) // 1 version + 11 records = 6 chunks
        XCTAssertEqual(state.fullStateChunks().count, 6)
        _ = instance.linkChanged("node2", .down, nowMillis: 1)
        XCTAssertEqual(summary(instance.receive(.syncRequest(durableDigests: nil), from: "node2", nowMillis: 2, replica: state)), [], "no chunk behind a dial")
        XCTAssertEqual(instance.streamingTo, [])
        XCTAssertEqual(summary(instance.pump()), [])
        XCTAssertEqual(summary(instance.linkChanged("node2", .up, nowMillis: 3)), [])
        XCTAssertEqual(instance.streamingTo, ["node2"])
        XCTAssertEqual(summary(instance.pump()), ["sync→node2"])
        XCTAssertEqual(summary(instance.pump { $0 != "node2" }), [], "the shell's backpressure holds it")
        XCTAssertEqual(summary(instance.pump()), ["sync→node2"])
        // Asked again on the same connection: the answer under way goes on (a requester that
        // re-asks faster than a large answer takes would otherwise never get one).
        XCTAssertEqual(summary(instance.receive(.syncRequest(durableDigests: nil), from: "node2", nowMillis: 3, replica: state)), [])
        // The connection breaks mid-stream: the next one gets the whole answer again.
        _ = instance.linkChanged("node2", .down, nowMillis: 4)
        XCTAssertEqual(summary(instance.pump()), [])
        _ = instance.linkChanged("node2", .up, nowMillis: 5)
        var sent: [String] = []
        while !instance.streamingTo.isEmpty { sent += summary(instance.pump()) }
        XCTAssertEqual(sent, Array(repeating: "sync→node2", count: 6) + ["syncDone(true)→node2"])
        // An answer to a member that died is dropped, not kept for its return.
        _ = instance.receive(.syncRequest(durableDigests: nil), from: "node3", nowMillis: 6, replica: state)
        XCTAssertEqual(instance.streamingTo, ["node3"])
        _ = instance.memberChanged(member("node3", .suspect), previous: .alive, replica: state)
        XCTAssertEqual(instance.streamingTo, ["node3"], "a suspect member keeps its transfer")
        _ = instance.memberChanged(member("node3", .dead), previous: .suspect, replica: state)
        XCTAssertEqual(instance.streamingTo, [])
    }

    func testANodeThatKeptItsDatabaseSaysWhatItHoldsAndIsSentEveryKeyButOnlyTheRecordsItLacks() {
        // The restarting node loaded 11 records from its database; a node that loaded nothing
        // asks with no digests (and is sent everything, as before).
        let held = replica(certificates: 11)
        var joiner = Instance(myself: "node5", peers: ["node1"], nowMillis: 0)
        _ = joiner.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: held)
        let request = joiner.linkChanged("node1", .up, nowMillis: 1)
        guard case .send(.syncRequest(let digests?), "node1")? = request.first else { return XCTFail("\(summary(request))") }
        XCTAssertEqual(digests, held.durableBucketDigests)
        var fresh = Instance(myself: "node6", peers: ["node1"], nowMillis: 0)
        _ = fresh.startJoin(timeoutMillis: 1000, nowMillis: 0, replica: empty)
        guard case .send(.syncRequest(nil), "node1")? = fresh.linkChanged("node1", .up, nowMillis: 1).first else { return XCTFail() }

        // The ready peer holds the same 11 records plus one registered while the node was down.
        var theirs = replica(certificates: 12).store
        /// What a ready peer streams for the request (the first chunk comes with `receive`).
        func answer(from replica: StoreReplicaContent) -> StoreDelta {
            var peer = readyInstance()
            var directives = peer.receive(.syncRequest(durableDigests: digests), from: "node2", nowMillis: 2, replica: replica)
            while !peer.streamingTo.isEmpty { directives += peer.pump() }
            var answer = StoreDelta()
            for case .send(.delta(let chunk, .sync), "node2") in directives {
                answer.certificates += chunk.certificates
                answer.keyVersions.merge(chunk.keyVersions) { $0 + $1 }
            }
            XCTAssertEqual(directives.count { if case .send(.syncDone(true), "node2") = $0 { true } else { false } }, 1)
            return answer
        }
        let sent = answer(from: StoreReplicaContent(store: theirs))
        XCTAssertEqual(sent.keyVersions.count, 1, "RAM keys are not durable: every key travels")
        XCTAssertTrue(sent.certificates.contains { $0.id.user == "u11" }, "the record registered meanwhile")
        XCTAssertLessThan(sent.certificates.count, 12, "only the buckets that differ")
        var merged = held.store
        _ = merged.merge(sent, nowMillis: 3)
        XCTAssertEqual(merged, theirs, "what the full state would have given")

        // Same durable state: no record at all; a revocation the node missed is sent.
        XCTAssertEqual(answer(from: held).certificates, [])
        theirs = held.store
        XCTAssertEqual(theirs.removeCertificates(domain: "first.com", user: "u3", name: "d", kind: .revoked,
                                                 stamp: HLCTimestamp(wallMillis: 9, logical: 0), origin: "node1").count, 1)
        merged = held.store
        _ = merged.merge(answer(from: StoreReplicaContent(store: theirs)), nowMillis: 3)
        XCTAssertEqual(merged, theirs)
    }

    // MARK: Anti-entropy

    func testAntiEntropySendsOneDigestPerIntervalOnlyWhenReady() {
        var joining = Instance(myself: "node1", peers: peers, nowMillis: 0)
        for node in peers { _ = joining.memberChanged(member(node, .alive), previous: nil, replica: empty) }
        XCTAssertEqual(summary(joining.tick(nowMillis: 5_000, random: &random, replica: empty)), [], "no digest while joining")
        XCTAssertEqual(summary(joining.receive(.digest(root: 1), from: "node2", nowMillis: 5_001, replica: empty)), [], "no repair while joining")
        XCTAssertEqual(summary(joining.receive(.bucketDigests([1], sections: nil), from: "node2", nowMillis: 5_002, replica: empty)), [])

        var instance = readyInstance()
        var digests: [String] = []
        for now in stride(from: UInt64(100), through: 10_000, by: 100) {
            digests += summary(instance.tick(nowMillis: now, random: &random, replica: empty))
        }
        XCTAssertEqual(digests.count, Int(10_000 / instance.settings.antiEntropyIntervalMillis), "one per interval: \(digests)")
        XCTAssertTrue(digests.allSatisfy { $0.hasPrefix("digest→") })
        XCTAssertGreaterThan(Set(digests).count, 1, "random alive members")
        _ = instance.memberChanged(member("node2", .dead), previous: .alive, replica: empty)
        _ = instance.memberChanged(member("node3", .suspect), previous: .alive, replica: empty)
        for now in stride(from: UInt64(10_100), through: 15_000, by: 100) {
            XCTAssertTrue(summary(instance.tick(nowMillis: now, random: &random, replica: empty)).allSatisfy { $0 == "digest→node4" })
        }
        // A member that comes back is compared with at once.
        XCTAssertEqual(summary(instance.memberChanged(member("node2", .alive), previous: .dead, replica: empty)), ["digest→node2"])
    }

    func testADifferingDigestStartsOneRepairPerPeerAtATime() {
        var instance = readyInstance()
        let mine = replica()
        XCTAssertEqual(summary(instance.receive(.digest(root: mine.rootDigest), from: "node2", nowMillis: 10, replica: mine)), [])
        XCTAssertEqual(instance.repairState(with: "node2"), .inSync)
        XCTAssertEqual(summary(instance.receive(.digest(root: 42), from: "node2", nowMillis: 20, replica: mine)), ["buckets→node2"])
        XCTAssertEqual(instance.repairState(with: "node2"), .repairing)
        XCTAssertEqual(summary(instance.receive(.digest(root: 42), from: "node2", nowMillis: 1_020, replica: mine)), [], "one at a time")
        XCTAssertEqual(summary(instance.receive(.digest(root: 42), from: "node3", nowMillis: 1_030, replica: mine)), ["buckets→node3"], "per peer")
        // The reply ends the repair; the next differing digest may start another at once.
        _ = instance.receive(.delta(StoreDelta(), purpose: .repairReply), from: "node2", nowMillis: 1_100, replica: mine)
        XCTAssertEqual(instance.repairState(with: "node2"), .inSync)
        XCTAssertEqual(summary(instance.receive(.digest(root: 43), from: "node2", nowMillis: 1_200, replica: mine)), ["buckets→node2"])
        // A repair that is never answered may be asked again after the cooldown.
        XCTAssertEqual(summary(instance.receive(.digest(root: 44), from: "node2", nowMillis: 6_199, replica: mine)), [])
        XCTAssertEqual(summary(instance.receive(.digest(root: 44), from: "node2", nowMillis: 6_200, replica: mine)), ["buckets→node2"])
        XCTAssertNil(instance.repairState(with: "node4"))
    }

    func testBucketDigestsAreAnsweredWithTheDifferingBucketsAndARepairWithOurs() {
        var instance = readyInstance()
        let mine = replica(certificates: 6, chunk: 100)
        XCTAssertEqual(summary(instance.receive(.bucketDigests(mine.bucketDigests, sections: nil), from: "node2", nowMillis: 1, replica: mine)), [],
                       "nothing differs")
        let theirs = StoreReplicaContent(store: ReplicatedStore(graceMillis: 60_000, bucketCount: 8))
        let out = instance.receive(.bucketDigests(theirs.bucketDigests, sections: nil), from: "node2", nowMillis: 2, replica: mine)
        guard case .send(.delta(let payload, .repair(let buckets, let sections)), "node2")? = out.first else { return XCTFail("\(summary(out))") }
        XCTAssertEqual(sections, Array(repeating: .all, count: buckets.count), "no section digests: whole buckets")
        XCTAssertEqual(out.count, 1)
        XCTAssertEqual(buckets, ReplicatedStore.differingBuckets(mine: mine.bucketDigests, theirs: theirs.bucketDigests))
        XCTAssertEqual(payload.certificates.count, 6)
        // The other side merges and answers with its own entries of those buckets: even none.
        var other = readyInstance()
        let answer = other.receive(.delta(payload, purpose: .repair(buckets: buckets, sections: sections)), from: "node2", nowMillis: 3, replica: theirs)
        XCTAssertEqual(summary(answer), ["apply←node2", "repairReply→node2"])
    }

    /// With section digests, a bucket whose key declarations differ is repaired by its
    /// declarations only: after a join every bucket differs that way, and whole buckets carried
    /// every certificate record (and key secret) both ways.
    func testARepairCarriesOnlyTheSectionsThatDiffer() {
        let mine = replica(certificates: 6, chunk: 100)
        var theirStore = mine.store
        let declaration = PSKFingerprint(node: "node2", key: key, fingerprint: [1, 2, 3], stamp: HLCTimestamp(wallMillis: 9, logical: 0))
        _ = theirStore.setLocalPSKFingerprint(declaration)
        let theirs = StoreReplicaContent(store: theirStore, maxEntriesPerChunk: 100)

        var instance = readyInstance()
        let out = instance.receive(.bucketDigests(theirs.bucketDigests, sections: theirs.sectionDigests), from: "node2", nowMillis: 2, replica: mine)
        guard case .send(.delta(let payload, .repair(let buckets, let sections)), "node2")? = out.first, out.count == 1 else {
            return XCTFail("\(summary(out))")
        }
        XCTAssertEqual(buckets.count, 1)
        XCTAssertEqual(sections, [.pskFingerprints])
        XCTAssertTrue(payload.isEmpty, "this side holds no declaration in that bucket: no certificate, no key version")

        var other = readyInstance()
        let answer = other.receive(.delta(payload, purpose: .repair(buckets: buckets, sections: sections)), from: "node2", nowMillis: 3,
                                   replica: theirs)
        let replies = answer.compactMap { directive -> StoreDelta? in
            guard case .send(.delta(let reply, .repairReply), "node2") = directive else { return nil }
            return reply
        }
        XCTAssertEqual(replies, [StoreDelta(pskFingerprints: [declaration])], "the answer carries the declaration alone")
    }

    /// A repair comes in as many chunks as its content needs, each naming the same buckets: it is
    /// answered once, not once per chunk (a 12-chunk repair of every bucket drew 12 whole answers
    /// from a node holding 100,000 certificates). A later repair of the same buckets, after the
    /// cooldown or on a new connection, is a new one and is answered.
    func testARepairSentInSeveralChunksIsAnsweredOnce() {
        let theirs = replica(certificates: 10, chunk: 3)  // their repair: 4 chunks (key + 10 records, 3 a chunk)
        let mine = replica(versionAt: 20, certificates: 7, chunk: 3)
        var sender = readyInstance()
        let repair = sender.receive(.bucketDigests(mine.bucketDigests, sections: nil), from: "node2", nowMillis: 1, replica: theirs)
        let chunks = repair.compactMap { directive -> (StoreDelta, [Int])? in
            guard case .send(.delta(let payload, .repair(let buckets, _)), "node2") = directive else { return nil }
            return (payload, buckets)
        }
        XCTAssertGreaterThan(chunks.count, 1, summary(repair).joined(separator: " "))

        func replies(_ out: [Directive]) -> Int {
            out.filter { if case .send(.delta(_, .repairReply), _) = $0 { return true } else { return false } }.count
        }
        var receiver = readyInstance()
        let whole = nonEmptyReplyCount(mine, chunks[0].1)
        var answered = 0
        for (index, (payload, buckets)) in chunks.enumerated() {
            answered += replies(receiver.receive(.delta(payload, purpose: .repair(buckets: buckets, sections: allSections(buckets))), from: "node2",
                                                 nowMillis: 10 + UInt64(index), replica: mine))
        }
        XCTAssertEqual(answered, whole, "one answer (\(whole) chunks) for the whole repair")

        let later = receiver.receive(.delta(chunks[0].0, purpose: .repair(buckets: chunks[0].1, sections: allSections(chunks[0].1))), from: "node2", nowMillis: 6_000, replica: mine)
        XCTAssertEqual(replies(later), whole, "after the cooldown the same buckets are a new repair")
        _ = receiver.linkChanged("node2", .down, nowMillis: 6_001)
        _ = receiver.linkChanged("node2", .up, nowMillis: 6_002)
        let reconnected = receiver.receive(.delta(chunks[0].0, purpose: .repair(buckets: chunks[0].1, sections: allSections(chunks[0].1))), from: "node2", nowMillis: 6_003,
                                           replica: mine)
        XCTAssertEqual(replies(reconnected), whole, "on a new connection too")
        let otherBuckets = receiver.receive(.delta(StoreDelta(), purpose: .repair(buckets: [0], sections: [.all])), from: "node2", nowMillis: 6_004, replica: mine)
        XCTAssertGreaterThan(replies(otherBuckets), 0, "a repair of other buckets is answered at once")
    }

    private func nonEmptyReplyCount(_ replica: StoreReplicaContent, _ buckets: [Int]) -> Int {
        max(1, replica.chunks(forBuckets: buckets, sections: allSections(buckets)).filter { !$0.isEmpty }.count)
    }

    private func allSections(_ buckets: [Int]) -> [BucketSections] { Array(repeating: .all, count: buckets.count) }

    // MARK: Push

    func testALocalChangeGoesToEveryAliveMemberAndNewsIsForwardedToARandomSquareRoot() {
        let many = (2...17).map { "node\($0)" }
        var instance = Instance(myself: "node1", peers: many, nowMillis: 0)
        let change = replica().fullStateChunks()[0]
        XCTAssertEqual(summary(instance.localChange(change, replica: empty)).count, 16, "before membership: every configured peer")
        for node in many.prefix(12) { _ = instance.memberChanged(member(node, .alive), previous: nil, replica: empty) }
        XCTAssertEqual(Set(summary(instance.localChange(change, replica: empty))), Set(many.prefix(12).map { "push→\($0)" }))
        XCTAssertEqual(summary(instance.localChange(StoreDelta(), replica: empty)), [])

        let ids = applyIDs(instance.receive(.delta(change, purpose: .push), from: "node2", nowMillis: 1, replica: empty))
        let forwarded = summary(instance.applied(ids[0], new: change, nowMillis: 2, random: &random, replica: empty))
        XCTAssertEqual(forwarded.count, 4, "⌈√12⌉ of 11 candidates: \(forwarded)")
        XCTAssertFalse(forwarded.contains("push→node2"), "never back to the sender")
        XCTAssertTrue(forwarded.allSatisfy { $0.hasPrefix("push→") })
        // Nothing new: nothing forwarded. News from a repair or sync: not forwarded either.
        let again = applyIDs(instance.receive(.delta(change, purpose: .push), from: "node3", nowMillis: 3, replica: empty))
        XCTAssertEqual(summary(instance.applied(again[0], new: StoreDelta(), nowMillis: 4, random: &random, replica: empty)), [])
        let repaired = applyIDs(instance.receive(.delta(change, purpose: .repairReply), from: "node3", nowMillis: 5, replica: empty))
        XCTAssertEqual(summary(instance.applied(repaired[0], new: change, nowMillis: 6, random: &random, replica: empty)), [])
    }

    func testWhatThePushingNodeMadeItselfIsNotForwarded() {
        let many = (2...17).map { "node\($0)" }
        var instance = Instance(myself: "node1", peers: many, nowMillis: 0)
        for node in many { _ = instance.memberChanged(member(node, .alive), previous: nil, replica: empty) }
        // The key version in `replica()` was made by node9.
        let change = replica().fullStateChunks()[0]
        let fromOrigin = applyIDs(instance.receive(.delta(change, purpose: .push), from: "node9", nowMillis: 1, replica: empty))
        XCTAssertEqual(summary(instance.applied(fromOrigin[0], new: change, nowMillis: 2, random: &random, replica: empty)), [],
                       "node9 pushed its own change to every alive member already")
        let relayed = applyIDs(instance.receive(.delta(change, purpose: .push), from: "node2", nowMillis: 3, replica: empty))
        XCTAssertEqual(summary(instance.applied(relayed[0], new: change, nowMillis: 4, random: &random, replica: empty)).count, 4,
                       "what node2 learned elsewhere is forwarded")
    }
}
