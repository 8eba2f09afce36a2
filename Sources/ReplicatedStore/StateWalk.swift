/// A replica's state answer for a joining peer, one entry at a time: every PSK fingerprint,
/// token floor and key's versions, and the certificate records, of every durable bucket or of
/// those whose digest differs from the peer's (`ReplicatedStore.joinDelta`).
///
/// Why one entry at a time: building a whole answer for a peer joining a node with 100,000
/// certificates took ~0.2 s under the node's state lock, held ~45 MiB until the last chunk was
/// written, and the peer had nothing to do until it was built. A walk reads a copy of the store
/// taken when the answer begins (`ReplicatedStore` is a value: the copy shares its storage, and
/// a later change on the node copies what it changes once), so the answer is the state as of
/// the request, whatever changes while it is sent, and `rewind` gives the same entries again.
///
/// Order: PSK fingerprints, token floors, keys (each in dictionary order: sorting the 20,000
/// declarations of 10,000 keys on two nodes took ~30 ms under the node's state lock), then the
/// certificate records in slot order (see `CertificateTable`: the order they were loaded or
/// received).
public struct StateWalk: Sendable {
    public enum Entry: Sendable, Equatable {
        case pskFingerprint(PSKFingerprint)
        case tokenFloor(TokenSequenceFloor)
        case keyVersions(KeyRef, [KeyVersion])
        case certificate(CertificateRecord)
    }

    private enum Position: Sendable {
        case psk(Dictionary<ReplicatedStore.PSKSlot, ReplicatedStore.PSKEntry>.Index)
        case floors(Dictionary<ReplicatedStore.UserRef, ReplicatedStore.TokenFloorEntry>.Index)
        case keys(Dictionary<KeyRef, ReplicatedStore.KeyEntry>.Index)
        case certificates(Int)
        case done
    }

    private let store: ReplicatedStore
    /// The durable buckets whose certificate records and token floors are sent; nil: all.
    private let durableBuckets: [Bool]?
    private var position: Position

    /// The whole state (`fullDelta`).
    public init(_ store: ReplicatedStore) {
        self.init(store, durableBuckets: nil)
    }

    /// What a peer whose durable entries have `peerDurableDigests` lacks (`joinDelta`).
    public init(_ store: ReplicatedStore, peerDurableDigests: [UInt64]) {
        let differing = ReplicatedStore.differingBuckets(mine: store.durableBucketDigests(), theirs: peerDurableDigests)
        self.init(store, durableBuckets: store.bucketMask(differing))
    }

    private init(_ store: ReplicatedStore, durableBuckets: [Bool]?) {
        self.store = store
        self.durableBuckets = durableBuckets
        self.position = .psk(store.psk.startIndex)
    }

    /// Back to the first entry.
    public mutating func rewind() {
        position = .psk(store.psk.startIndex)
    }

    /// The next entry, nil once every entry was given.
    public mutating func next() -> Entry? {
        while true {
            switch position {
            case .psk(let index):
                guard index != store.psk.endIndex else { position = .floors(store.tokenFloors.startIndex); continue }
                position = .psk(store.psk.index(after: index))
                return .pskFingerprint(store.psk[index].value.record)
            case .floors(let index):
                guard index != store.tokenFloors.endIndex else { position = .keys(store.keys.startIndex); continue }
                position = .floors(store.tokenFloors.index(after: index))
                let entry = store.tokenFloors[index].value
                if durableBuckets?[entry.bucket] ?? true { return .tokenFloor(entry.record) }
            case .keys(let index):
                guard index != store.keys.endIndex else { position = .certificates(0); continue }
                position = .keys(store.keys.index(after: index))
                let (key, entry) = store.keys[index]
                return .keyVersions(key, entry.versions)
            case .certificates(let from):
                guard let slot = store.certificateTable.slotInUse(atOrAfter: from) else { position = .done; continue }
                position = .certificates(Int(slot) + 1)
                if durableBuckets?[Int(store.certificateTable[slot].bucket)] ?? true {
                    return .certificate(store.certificateTable.record(slot))
                }
            case .done:
                return nil
            }
        }
    }

    /// Every remaining entry, as one delta (PSK fingerprints sorted, as `pskFingerprints()`).
    public func collected() -> StoreDelta {
        var walk = self
        var delta = StoreDelta()
        if durableBuckets == nil { delta.certificates.reserveCapacity(store.certificateTable.count) }
        while let entry = walk.next() {
            switch entry {
            case .pskFingerprint(let fingerprint): delta.pskFingerprints.append(fingerprint)
            case .tokenFloor(let floor): delta.tokenSequenceFloors.append(floor)
            case .keyVersions(let key, let versions): delta.keyVersions[key] = versions
            case .certificate(let record): delta.certificates.append(record)
            }
        }
        delta.pskFingerprints.sort(by: ReplicatedStore.pskOrder)
        return delta
    }
}
