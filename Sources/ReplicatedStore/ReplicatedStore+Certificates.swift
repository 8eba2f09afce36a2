/// The certificate registry (DESIGN "Certificate registry" 3, 5, 6).
///
/// Each certificate id holds a join-semilattice record (content joined by earliest add,
/// removal joined by strongest-then-earliest), so merges are commutative, associative and
/// idempotent, and a removal, once seen anywhere, survives every later merge: no stale
/// replica, restart (the shell reloads via `loadCertificates`) or full sync can undo it.
///
/// Same-name registrations: two nodes may accept the same name for one user at the same time
/// (each checked the name against what it knew). Both acknowledged registrations stay listed
/// and usable, told apart by fingerprint; disabling or revoking by name applies to every live
/// certificate of that name (`certificateRemovals`). Nothing is ever hidden, so an
/// acknowledged registration never silently stops working, and a removal by name never
/// leaves a same-named certificate usable.
///
/// Compaction, the rule in full (docs/replication.md repeats it):
/// 1. A revoked record shrinks to what it takes to refuse the certificate: the DER is
///    dropped, fingerprint, name, validity, JIDs and the removal stay. This is part of the
///    join (`CertificateRecord.merged(with:)` always returns `compacted()`), so it does not
///    depend on the order the add and the revocation arrive in, and every replica holds and
///    digests the same bytes. A disabled record keeps its DER (it is still listed).
/// 2. A record, live or removed, is forgotten once its certificate has expired:
///    `not_after + certificateRetentionAfterExpiryMillis` (24 h) at or before now
///    (`expireCertificates`). Forgetting can never make anything usable again: `sasl-external`
///    and `append` refuse an expired certificate on their own, and the merge never admits a
///    record whose certificate has expired, so a stale replica (or a node back from a long
///    partition, or a 0.1.0 node, which never forgets) cannot bring it back. The margin covers
///    clock skew between nodes: a node whose clock runs behind still sees the tombstone for a
///    day after the certificate expired by its own clock.
/// 3. A bare tombstone (a removal that arrived without its content, only ever sent by 0.1.0
///    nodes or made of a pre-0.2 database row) has no validity, so it is kept until its content
///    arrives: with content not yet expired the record then expires like any other; with
///    content already expired (a 0.1.0 node still holding it) the tombstone is forgotten at
///    once. That case, a bare tombstone meeting an already expired content, is the only one in
///    which the merge depends on arrival order (a replica that saw the content first keeps the
///    tombstone); all replicas still converge, and nothing either way can be used.
extension ReplicatedStore {
    /// How long past its `not_after` a certificate's record is kept (rule 2 above). Part of
    /// the protocol: all nodes must agree, so it is a constant, not configuration.
    public static let certificateRetentionAfterExpiryMillis: Int64 = 24 * 3600 * 1000

    // MARK: Local operations

    /// The last guard behind the shell's XEP-0257 checks: refuses any id the store already
    /// knows, live or removed (a removed certificate may never be re-registered, or a stale
    /// replica's copy of the old add would be indistinguishable from the new one). An id
    /// forgotten after expiry is unknown again, but its certificate is expired, which the
    /// shell's rules refuse before calling this.
    public mutating func appendCertificate(_ id: CertificateID, _ content: CertificateContent) -> CertificateRecord? {
        guard certificateTable.find(id) == nil else { return nil }
        let record = CertificateRecord(id: id, content: content, removal: nil)
        applyCertificate(record)
        return record
    }

    /// The records that disabling or revoking `name` would store: every live certificate of
    /// the user with that name, each joined with the new removal (and compacted), sorted like
    /// `liveCertificates`. Empty when the user has no live certificate of that name.
    ///
    /// Changes nothing, so the shell can persist these first, then apply them with `merge`
    /// (persist, apply, publish: a failed write leaves the store untouched).
    public func certificateRemovals(domain: String, user: String, name: String, kind: RemovalKind,
                                    stamp: HLCTimestamp, origin: NodeID) -> [CertificateRecord] {
        let removal = CertificateRemoval(kind: kind, stamp: stamp, origin: origin)
        return liveCertificates(domain: domain, user: user).compactMap { record in
            guard record.content?.name == name else { return nil }
            return record.merged(with: CertificateRecord(id: record.id, content: nil, removal: removal))
        }
    }

    /// `certificateRemovals` applied at once. Returns the updated records for the shell to
    /// persist and gossip; empty when the user has no live certificate of that name.
    public mutating func removeCertificates(domain: String, user: String, name: String, kind: RemovalKind,
                                            stamp: HLCTimestamp, origin: NodeID) -> [CertificateRecord] {
        let records = certificateRemovals(domain: domain, user: user, name: name, kind: kind, stamp: stamp, origin: origin)
        for record in records { applyCertificate(record) }
        return records
    }

    /// Forgets every record whose certificate expired more than
    /// `certificateRetentionAfterExpiryMillis` before `nowMillis` (rule 2 above) and returns
    /// their ids, sorted, for the shell to delete from its database. Costs O(1) while nothing
    /// can expire (the earliest instant anything can is tracked), a scan otherwise.
    public mutating func expireCertificates(nowMillis: UInt64) -> [CertificateID] {
        guard Int64(clamping: nowMillis) >= nextCertificateForgettableAtMillis else { return [] }
        var forgotten: [CertificateID] = []
        var next = Int64.max
        let now = Int64(clamping: nowMillis)
        certificateTable.forEachSlot { index, slot in
            guard slot.flags & CertificateTable.Flags.hasContent != 0 else { return }
            let (sum, overflow) = slot.notAfter.addingReportingOverflow(Self.certificateRetentionAfterExpiryMillis)
            let forgettableAt = overflow ? (slot.notAfter < 0 ? Int64.min : Int64.max) : sum
            if now >= forgettableAt {
                forgotten.append(certificateTable.record(index).id)
            } else {
                next = min(next, forgettableAt)
            }
        }
        for id in forgotten { forgetCertificate(id) }
        nextCertificateForgettableAtMillis = next
        forgotten.sort()
        return forgotten
    }

    // MARK: Queries

    /// Every record of the user, removed ones and bare tombstones included (the shell needs
    /// them to refuse re-registering a removed certificate), sorted by (added, id); bare
    /// tombstones, having no add time, come last by id.
    public func certificates(domain: String, user: String) -> [CertificateRecord] {
        certificateTable.slots(domain: domain, user: user).map { certificateTable.record($0) }.sorted(by: Self.listOrder)
    }

    /// The records usable for listing and verification: every record with content and no
    /// removal, sorted by (added, id), so every replica lists them in the same order. Two of
    /// them may share a name (see the type's comment); they differ by fingerprint.
    public func liveCertificates(domain: String, user: String) -> [CertificateRecord] {
        certificates(domain: domain, user: user).filter(\.isLive)
    }

    /// Every record, sorted by id: what the shell writes to its database.
    public func allCertificateRecords() -> [CertificateRecord] {
        allCertificatesInSlotOrder().sorted { $0.id < $1.id }
    }

    /// Every record in slot order (see `CertificateTable`).
    func allCertificatesInSlotOrder() -> [CertificateRecord] {
        var records: [CertificateRecord] = []
        records.reserveCapacity(certificateTable.count)
        certificateTable.forEachSlot { index, _ in records.append(certificateTable.record(index)) }
        return records
    }

    /// Same records, same cached hashes, wherever they sit in the tables.
    static func sameCertificates(_ lhs: ReplicatedStore, _ rhs: ReplicatedStore) -> Bool {
        guard lhs.certificateTable.count == rhs.certificateTable.count else { return false }
        var same = true
        lhs.certificateTable.forEachSlot { index, slot in
            guard same else { return }
            let record = lhs.certificateTable.record(index)
            guard let other = rhs.certificateTable.find(record.id) else { same = false; return }
            let theirs = rhs.certificateTable[other]
            same = theirs.entryHash == slot.entryHash && theirs.contentHash == slot.contentHash && theirs.bucket == slot.bucket
                && rhs.certificateTable.record(other) == record
        }
        return same
    }

    /// Records with and without a removal, kept by the table as records change (a metrics
    /// gauge reads them every second).
    public func certificateCounts() -> (registered: Int, removed: Int) {
        (certificateTable.count - certificateTable.removedCount, certificateTable.removedCount)
    }

    /// Start-up path: joins records read from the local database into the store. Same join as
    /// `merge`, but nothing is reported, since this is not news to gossip or persist again.
    /// Rows written before compaction existed come back compacted (a revoked record with its
    /// DER): the shell finds them with `record.compacted() != record` to rewrite them, and
    /// leaves expired records to its first `expireCertificates` call, which reports them.
    public mutating func loadCertificates(_ records: [CertificateRecord]) {
        loadCertificates(records.map(HashedCertificateRecord.init))
    }

    /// Sizes an empty store for a bulk load of about `expected` records (a start-up load, a
    /// joining node's full sync); does nothing once the store holds records, since most records
    /// of a later full sync are known already and reserving for all of them would copy the whole
    /// registry for nothing. A guess is fine: slot storage reserved and never used is never
    /// touched (so never resident), a guess too high costs only the two chain-head arrays (8
    /// bytes per expected record), and more records than guessed grow the table as usual. A
    /// start-up load sized only for its first batch doubled the table five times on the way to
    /// 100,000 records, relinking every record each time (with the lookup `noneHeld` skips,
    /// ~100 ms of a restart's indexing thread; its peak RSS fell too).
    public mutating func reserveCertificates(_ expected: Int) {
        certificateTable.reserve(expected)
    }

    /// `loadCertificates` with the records' hashes already computed (off the store's lock).
    ///
    /// `noneHeld`: the caller vouches that no record's id is held yet, byte for byte, and that
    /// the records' ids differ from each other, as rows of one database do (its primary key is
    /// the id's bytes, and the table compares bytes) when loaded into an empty store. The lookup
    /// per record is then skipped (~75 ms of a 100,000-row restart).
    public mutating func loadCertificates(_ records: [HashedCertificateRecord], noneHeld: Bool = false) {
        reserveCertificates(records.count)
        for hashed in records {
            assert(!noneHeld || certificateTable.find(hashed.record.id) == nil, "noneHeld, but \(hashed.record.id) is held")
            // An id already held (not in a load from one database, whose rows have distinct
            // keys) is joined the general way.
            if !noneHeld, certificateTable.find(hashed.record.id) != nil {
                applyCertificate(hashed.record)
            } else if hashed.record.content != nil || hashed.record.removal != nil {
                insertCertificate(hashed.record.compacted(), identityHash: hashed.identityHash, contentHash: hashed.contentHash,
                                  entryHash: hashed.entryHash)
            }
        }
    }

    /// The record held for `id` (live, removed or a bare tombstone), if any.
    public func certificateRecord(_ id: CertificateID) -> CertificateRecord? {
        certificateTable.find(id).map { certificateTable.record($0) }
    }

    /// What the store holds for each record's id, in order (ids no longer held are left out):
    /// the record itself where the store holds exactly it, which is the rule for values it
    /// applied a moment ago, else the held record. The same as `certificateRecord` per id
    /// without rebuilding records from the table where they are unchanged: a joining node's
    /// writer asks this for every record it stores, and rebuilding the 100,000 of a join (their
    /// `user@domain` strings among them) was ~120 ms of it under the state lock (`perf record`).
    public func heldCertificates(_ records: [CertificateRecord]) -> [CertificateRecord] {
        records.compactMap { record in
            guard let slot = certificateTable.find(record.id) else { return nil }
            return certificateTable.holds(slot, record) ? record : certificateTable.record(slot)
        }
    }

    /// What `merge` would change for these records, without changing anything: the merged
    /// (and compacted) value of each record that would differ, once per id. The node persists
    /// exactly these before applying them (persist, then apply). With `nowMillis` (the time the
    /// merge will use), records the merge refuses because their certificate has expired are
    /// left out too; a held record that merge then forgets shows up in its
    /// `certificatesForgotten`, for deleting the row after applying.
    public func certificateChanges(_ incoming: [CertificateRecord], nowMillis: UInt64? = nil) -> [CertificateRecord] {
        var after: [CertificateID: CertificateRecord] = [:]
        var order: [CertificateID] = []
        for record in incoming where record.content != nil || record.removal != nil {
            if let nowMillis, let content = record.content, content.isForgettable(atMillis: nowMillis) { continue }
            let slot = certificateTable.find(record.id)
            // The common case of a full sync: the record is held exactly as it is.
            if after[record.id] == nil, let slot, certificateTable.holds(slot, record) { continue }
            let current = after[record.id] ?? slot.map { certificateTable.record($0) }
            let merged = current.map { $0.merged(with: record) } ?? record.compacted()
            guard merged != current else { continue }
            if after[record.id] == nil { order.append(record.id) }
            after[record.id] = merged
        }
        return order.compactMap { id in
            guard let value = after[id] else { return nil }
            if let slot = certificateTable.find(id), certificateTable.holds(slot, value) { return nil }
            return value
        }
    }

    // MARK: Internals

    mutating func mergeCertificates(_ incoming: [CertificateRecord], nowMillis: UInt64, into outcome: inout MergeOutcome) {
        guard !incoming.isEmpty else { return }
        reserveCertificates(incoming.count)
        // Several records for one id in a delta are reported once, with their combined effect
        // (value before the first touch, value after the last), in the order of first touch.
        // Sorting 100k changed records by id cost more than the merge itself.
        // The value after is kept as it changes (nil: forgotten) rather than read back from the
        // table at the end: rebuilding 100,000 records of a joining node's sync cost a lookup
        // and a record each.
        //
        // An id not held before its record was applied cannot have been touched earlier in this
        // delta (what was touched is held, unless forgotten), so it is a first touch and needs no
        // lookup: the index of touched ids is built only once some record finds its id held, or
        // one is forgotten. A fresh node's join touches only new ids and builds none (hashing
        // 100,000 ids into it and growing it was ~10 % of a joining node's certificate merge in
        // `perf record`: 85 of 824 ms).
        var touched: [(id: CertificateID, before: CertificateRecord?, after: CertificateRecord?)] = []
        var touchedIndex: [CertificateID: Int]?
        func touch(_ id: CertificateID, before: CertificateRecord?, after: CertificateRecord?) {
            if before == nil, touchedIndex == nil {
                touched.append((id, before, after))
                return
            }
            if touchedIndex == nil {
                // Distinct ids (see above); `uniquingKeysWith` so that no input can trap here.
                touchedIndex = Dictionary(touched.indices.map { (touched[$0].id, $0) }, uniquingKeysWith: { first, _ in first })
            }
            if let index = touchedIndex?[id] {
                touched[index].after = after
            } else {
                touchedIndex?[id] = touched.count
                touched.append((id, before, after))
            }
        }
        for record in incoming {
            if let content = record.content, content.isForgettable(atMillis: nowMillis) {
                // Rule 2: never admitted. A held record of the same id is then forgotten too if
                // it is a bare tombstone (rule 3) or expired itself; a held record with a later
                // validity (only a faulty peer can send two validities for one DER) is kept.
                if let held = certificateRecord(record.id),
                   held.content.map({ $0.isForgettable(atMillis: nowMillis) }) ?? true {
                    touch(record.id, before: held, after: nil)
                    forgetCertificate(record.id)
                }
                continue
            }
            let result = applyCertificate(record)
            if let after = result.changedTo { touch(record.id, before: result.before, after: after) }
        }
        guard !touched.isEmpty else { return }
        var changed: [CertificateRecord] = []
        var newlyRemoved: [CertificateRecord] = []
        var forgotten: [CertificateID] = []
        for (id, before, after) in touched {
            guard let after else {
                if before != nil { forgotten.append(id) }
                continue
            }
            // Joins only grow, so a final value equal to its before-value can only come from a
            // record that was forgotten and stored again within this delta.
            guard after != before else { continue }
            changed.append(after)
            if let removal = after.removal {
                let old = before?.removal
                if old == nil || (old?.kind == .disabled && removal.kind == .revoked) {
                    newlyRemoved.append(after)
                }
            }
        }
        outcome.certificatesChanged = changed
        outcome.certificatesNewlyRemoved = newlyRemoved
        outcome.certificatesForgotten = forgotten.sorted()
        outcome.forwardable.certificates = changed
    }

    /// Joins one record into the store and keeps its bucket digest in step. `changedTo` is the
    /// new stored value (nil: nothing changed), `before` the previous one when something changed
    /// (nil: the id was unknown).
    /// A record with neither content nor removal says nothing and is not stored.
    @discardableResult
    mutating func applyCertificate(_ incoming: CertificateRecord)
        -> (changedTo: CertificateRecord?, before: CertificateRecord?) {
        if let index = certificateTable.find(incoming.id) {
            let slot = certificateTable[index]
            if certificateTable.holds(index, incoming) { return (nil, nil) }
            let current = certificateTable.record(index)
            let merged = current.merged(with: incoming)
            guard merged != current else { return (nil, current) }
            let contentHash = merged.content == current.content
                ? (current.content == nil ? nil : slot.contentHash) : merged.content.map(StableHash.content)
            let entryHash = StableHash.entry(merged, contentHash: contentHash)
            bucketSums[Int(slot.bucket)] &-= slot.entryHash
            bucketSums[Int(slot.bucket)] &+= entryHash
            certificateTable.update(index, merged, contentHash: contentHash, entryHash: entryHash)
            noteForgettable(merged.content)
            return (merged, current)
        }
        guard incoming.content != nil || incoming.removal != nil else { return (nil, nil) }
        let record = incoming.compacted()
        let hashes = HashedCertificateRecord.hashes(of: record)
        insertCertificate(record, identityHash: hashes.identity, contentHash: hashes.content, entryHash: hashes.entry)
        return (record, nil)
    }

    /// Stores a record whose id is not held (`record` already compacted), with its hashes.
    private mutating func insertCertificate(_ record: CertificateRecord, identityHash: UInt64, contentHash: UInt64?, entryHash: UInt64) {
        let bucket = Int(identityHash % UInt64(bucketCount))
        bucketSums[bucket] &+= entryHash
        bucketCounts[bucket] += 1
        certificateTable.insert(record, bucket: bucket, contentHash: contentHash, entryHash: entryHash)
        noteForgettable(record.content)
    }

    /// Removes a record entirely (rule 2/3 of the type's comment), keeping digests and the
    /// per-user index in step.
    private mutating func forgetCertificate(_ id: CertificateID) {
        guard let index = certificateTable.find(id) else { return }
        let slot = certificateTable[index]
        bucketSums[Int(slot.bucket)] &-= slot.entryHash
        bucketCounts[Int(slot.bucket)] -= 1
        certificateTable.remove(index, id: id)
    }

    /// Keeps the earliest instant anything can be forgotten a lower bound (it may lag behind
    /// after a content change, which only costs one extra scan).
    private mutating func noteForgettable(_ content: CertificateContent?) {
        guard let content else { return }
        nextCertificateForgettableAtMillis = min(nextCertificateForgettableAtMillis, content.forgettableAtMillis)
    }

    static func listOrder(_ a: CertificateRecord, _ b: CertificateRecord) -> Bool {
        switch (a.content?.added, b.content?.added) {
        case let (x?, y?): return x != y ? x < y : a.id < b.id
        case (.some, nil): return true
        case (nil, .some): return false
        case (nil, nil): return a.id < b.id
        }
    }
}

/// A certificate record with the hashes the store keeps for it (identity, content, entry, all of
/// the record as stored: compacted). They depend on the record alone, so a bulk load computes
/// them off the store's lock: a restart's reader thread hashes each batch while the store indexes
/// the previous one (hashing was a quarter of the indexing, the longer of the two steps).
public struct HashedCertificateRecord: Sendable {
    /// As given (not compacted): an id already held is joined with exactly this.
    public let record: CertificateRecord
    let identityHash: UInt64
    let contentHash: UInt64?
    let entryHash: UInt64

    public init(_ record: CertificateRecord) {
        self.record = record
        (identityHash, contentHash, entryHash) = Self.hashes(of: record.compacted())
    }

    static func hashes(of stored: CertificateRecord) -> (identity: UInt64, content: UInt64?, entry: UInt64) {
        let content = stored.content.map(StableHash.content)
        return (StableHash.identity(stored.id), content, StableHash.entry(stored, contentHash: content))
    }
}
