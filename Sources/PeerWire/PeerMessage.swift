import Membership
import NIOCore
import Replication
import ReplicatedStore
import SecretMemory

/// First frame on every peer connection. The dialer sends it first; an accepting node from 0.2
/// on answers a dialer that understands it with its own hello on the same connection
/// (`PeerWireFeatures.answersOnDialedConnection`), after which messages travel both ways on it.
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

extension WireDelta: ReplicationPayload {
    public static var empty: WireDelta { WireDelta() }

    public func excludingChanges(madeBy node: NodeID) -> WireDelta {
        var kept = WireDelta(versions: versions.filter { $0.version.id.origin != node },
                             pskFingerprints: pskFingerprints.filter { $0.node != node },
                             certificates: certificates.filter { $0.changedBy != node })
        kept.tokenSequenceFloors = tokenSequenceFloors.filter { $0.origin != node }
        return kept
    }
}

public enum PeerMessage: Sendable {
    case hello(PeerHello)
    case swim(SWIMMessage)
    /// The replication core's messages, with the sender's clock reading.
    case replication(ReplicationMessage<WireDelta>, stamp: HLCTimestamp)
}
