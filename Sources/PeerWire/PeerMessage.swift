import Membership
import NIOCore
import ReplicatedStore
import SecretMemory

/// First frame on every peer connection, in both directions.
public struct PeerHello: Sendable, Equatable {
    public var cluster: String
    public var node: String
    /// Start time of this process in ms: a higher instance means the node restarted.
    public var instance: UInt64
    /// The sender's configured peer address ("host:port").
    public var address: String
    public var softwareVersion: String
    public var stamp: HLCTimestamp

    public init(cluster: String, node: String, instance: UInt64, address: String, softwareVersion: String, stamp: HLCTimestamp) {
        self.cluster = cluster
        self.node = node
        self.instance = instance
        self.address = address
        self.softwareVersion = softwareVersion
        self.stamp = stamp
    }
}

/// A RAM key version with its secret, as it travels between peers (inside TLS).
public struct WireKeyVersion: Sendable {
    public var key: KeyRef
    public var version: KeyVersion
    public var secret: SecretBytes
    public init(key: KeyRef, version: KeyVersion, secret: SecretBytes) {
        self.key = key
        self.version = version
        self.secret = secret
    }
}

/// Replicated entries plus the secrets behind key versions.
public struct WireDelta: Sendable {
    public var versions: [WireKeyVersion]
    public var pskFingerprints: [PSKFingerprint]
    /// Certificate registrations and their tombstones (public data: no secrets).
    public var certificates: [CertificateRecord]
    /// Refresh-token sequence floors (public data). Not sent to 0.1.0 peers (`PeerWireFeatures`).
    public var tokenSequenceFloors: [TokenSequenceFloor]
    public init(versions: [WireKeyVersion] = [], pskFingerprints: [PSKFingerprint] = [], certificates: [CertificateRecord] = [],
                tokenSequenceFloors: [TokenSequenceFloor] = []) {
        self.versions = versions
        self.pskFingerprints = pskFingerprints
        self.certificates = certificates
        self.tokenSequenceFloors = tokenSequenceFloors
    }
    public var isEmpty: Bool { versions.isEmpty && pskFingerprints.isEmpty && certificates.isEmpty && tokenSequenceFloors.isEmpty }

    /// The metadata part, for `ReplicatedStore.merge`.
    public var storeDelta: StoreDelta {
        var delta = StoreDelta(pskFingerprints: pskFingerprints)
        delta.certificates = certificates
        delta.tokenSequenceFloors = tokenSequenceFloors
        for v in versions { delta.keyVersions[v.key, default: []].append(v.version) }
        return delta
    }
}

/// Why a delta is sent; decides how the receiver answers.
public enum DeltaPurpose: Sendable, Equatable {
    /// New local updates (eager push); no answer.
    case push
    /// Anti-entropy repair of these buckets: the receiver merges and answers with `.repairReply`
    /// carrying its own entries of the same buckets.
    case repair(buckets: [Int])
    case repairReply
    /// One chunk of a full-state answer to `syncRequest`.
    case sync
}

public enum PeerMessage: Sendable {
    case hello(PeerHello)
    case swim(SWIMMessage)
    /// Anti-entropy opener: "this is my state's digest".
    case digest(root: UInt64, stamp: HLCTimestamp)
    /// Answer to a differing digest: my per-bucket digests.
    case bucketDigests([UInt64], stamp: HLCTimestamp)
    case delta(WireDelta, purpose: DeltaPurpose, stamp: HLCTimestamp)
    /// A starting node asks for the full state (DESIGN.md RAM keys 2).
    case syncRequest(stamp: HLCTimestamp)
    /// End of the full-state answer. `ready` tells whether the sender had finished its own
    /// join: only a ready peer's state can be adopted as "the cluster's".
    case syncDone(stamp: HLCTimestamp, ready: Bool)
}
