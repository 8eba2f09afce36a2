/// The certificate registry (DESIGN "Certificate registry" 3, 5, 6).
///
/// Each certificate id holds a join-semilattice record (content joined by earliest add,
/// removal joined by strongest-then-earliest), so merges are commutative, associative and
/// idempotent, and a removal, once seen anywhere, survives every later merge: no stale
/// replica, restart (the shell reloads via `loadCertificates`) or full sync can undo it.
/// Records are never deleted, so the registry grows with every registration ever made; that
/// is the price of tombstones that cannot be outlived by a stale add.
extension ReplicatedStore {
    // MARK: Local operations

    /// The last guard behind the shell's XEP-0257 checks: refuses any id the store already
    /// knows, live or removed (a removed certificate may never be re-registered, or a stale
    /// replica's copy of the old add would be indistinguishable from the new one).
    public mutating func appendCertificate(_ id: CertificateID, _ content: CertificateContent) -> CertificateRecord? {
        guard certEntries[id] == nil else { return nil }
        let record = CertificateRecord(id: id, content: content, removal: nil)
        applyCertificate(record)
        return record
    }

    /// Removes the record that `liveCertificates` shows under `name`, so a hidden duplicate
    /// can never be the target (the user cannot see it). Returns the updated record for the
    /// shell to persist and gossip; nil when the user has no live certificate of that name.
    public mutating func removeCertificate(domain: String, user: String, name: String, kind: RemovalKind,
                                           stamp: HLCTimestamp, origin: NodeID) -> CertificateRecord? {
        guard let target = liveCertificates(domain: domain, user: user).first(where: { $0.content?.name == name })
        else { return nil }
        let removal = CertificateRecord(id: target.id, content: nil,
                                        removal: CertificateRemoval(kind: kind, stamp: stamp, origin: origin))
        applyCertificate(removal)
        return certEntries[target.id]?.record
    }

    // MARK: Queries

    /// Every record of the user, removed ones and bare tombstones included (the shell needs
    /// them to refuse re-registering a removed certificate), sorted by (added, id); bare
    /// tombstones, having no add time, come last by id.
    public func certificates(domain: String, user: String) -> [CertificateRecord] {
        guard let ids = certIDsByUser[UserRef(domain: domain, user: user)] else { return [] }
        return ids.compactMap { certEntries[$0]?.record }.sorted(by: Self.listOrder)
    }

    /// The records usable for listing and verification, sorted by (added, id). Two live
    /// records of one user may share a name when two nodes accepted the same name
    /// concurrently; only the earliest (added, origin) is shown, and since that choice depends
    /// on the records alone every node shows the same one. If that one is removed later the
    /// other, which its node did acknowledge, becomes visible.
    public func liveCertificates(domain: String, user: String) -> [CertificateRecord] {
        var byName: [String: CertificateRecord] = [:]
        for record in certificates(domain: domain, user: user) {
            guard record.removal == nil, let content = record.content else { continue }
            if let held = byName[content.name], let heldContent = held.content,
               !Self.namePrecedence(content, record.id, over: heldContent, held.id) {
                continue
            }
            byName[content.name] = record
        }
        return byName.values.sorted(by: Self.listOrder)
    }

    /// Every record, sorted by id: what the shell writes to its database.
    public func allCertificateRecords() -> [CertificateRecord] {
        certEntries.values.map(\.record).sorted { $0.id < $1.id }
    }

    /// Records with and without a removal, counted in place (no copy, no sort): cheap enough
    /// for a once-a-second metrics gauge at 100k records.
    public func certificateCounts() -> (registered: Int, removed: Int) {
        var removed = 0
        for entry in certEntries.values where entry.record.removal != nil { removed += 1 }
        return (certEntries.count - removed, removed)
    }

    /// Start-up path: joins records read from the local database into the store. Same join as
    /// `merge`, but nothing is reported, since this is not news to gossip or persist again.
    public mutating func loadCertificates(_ records: [CertificateRecord]) {
        reserveCertificateCapacity(records.count)
        for record in records { applyCertificate(record) }
    }

    /// The record held for `id` (live, removed or a bare tombstone), if any.
    public func certificateRecord(_ id: CertificateID) -> CertificateRecord? {
        certEntries[id]?.record
    }

    /// What `merge` would change for these records, without changing anything: the merged
    /// value of each record that would differ, once per id. The node persists exactly these
    /// before applying them (persist, then apply).
    public func certificateChanges(_ incoming: [CertificateRecord]) -> [CertificateRecord] {
        var after: [CertificateID: CertificateRecord] = [:]
        var order: [CertificateID] = []
        for record in incoming where record.content != nil || record.removal != nil {
            let current = after[record.id] ?? certEntries[record.id]?.record
            let merged = current.map { $0.merged(with: record) } ?? record
            guard merged != current else { continue }
            if after[record.id] == nil { order.append(record.id) }
            after[record.id] = merged
        }
        return order.compactMap { id in
            guard let value = after[id], value != certEntries[id]?.record else { return nil }
            return value
        }
    }

    // MARK: Internals

    mutating func mergeCertificates(_ incoming: [CertificateRecord], into outcome: inout MergeOutcome) {
        guard !incoming.isEmpty else { return }
        reserveCertificateCapacity(incoming.count)
        // Several records for one id in a delta are reported once, with their combined effect
        // (value before the first change, after the last), in the order of first change.
        // Sorting 100k changed records by id cost more than the merge itself.
        var firstChange: [CertificateID: Int] = [:]
        var befores: [CertificateRecord?] = []
        var changed: [CertificateRecord] = []
        for record in incoming {
            let result = applyCertificate(record)
            guard let after = result.changedTo else { continue }
            if let index = firstChange[record.id] {
                changed[index] = after
            } else {
                firstChange[record.id] = changed.count
                changed.append(after)
                befores.append(result.before)
            }
        }
        guard !changed.isEmpty else { return }
        // Joins only grow, so a later record for an id can never undo an earlier change: each
        // final value really differs from its before-value.
        var newlyRemoved: [CertificateRecord] = []
        for (after, before) in zip(changed, befores) {
            guard let removal = after.removal else { continue }
            let old = before?.removal
            if old == nil || (old?.kind == .disabled && removal.kind == .revoked) {
                newlyRemoved.append(after)
            }
        }
        outcome.certificatesChanged = changed
        outcome.certificatesNewlyRemoved = newlyRemoved
        outcome.forwardable.certificates = changed
    }

    /// Sizes the table once for the bulk loads into an empty registry (start-up, a joining
    /// node's full sync). Not otherwise: most records of a later full sync are already known,
    /// and reserving for all of them would resize (copy) the whole registry for nothing.
    private mutating func reserveCertificateCapacity(_ incoming: Int) {
        if certEntries.isEmpty && incoming > certEntries.capacity { certEntries.reserveCapacity(incoming) }
    }

    /// Joins one record into the store and keeps its bucket digest in step. `changedTo` is the
    /// new stored value (nil: nothing changed), `before` the previous one (nil: id unknown).
    /// A record with neither content nor removal says nothing and is not stored.
    @discardableResult
    mutating func applyCertificate(_ incoming: CertificateRecord)
        -> (changedTo: CertificateRecord?, before: CertificateRecord?) {
        if let current = certEntries[incoming.id] {
            let merged = current.record.merged(with: incoming)
            guard merged != current.record else { return (nil, current.record) }
            let contentHash = merged.content == current.record.content
                ? current.contentHash : merged.content.map(StableHash.content)
            let entryHash = StableHash.entry(merged, contentHash: contentHash)
            bucketSums[current.bucket] &-= current.entryHash
            bucketSums[current.bucket] &+= entryHash
            certEntries[incoming.id] = CertificateEntry(record: merged, bucket: current.bucket,
                                                        contentHash: contentHash, entryHash: entryHash)
            return (merged, current.record)
        }
        guard incoming.content != nil || incoming.removal != nil else { return (nil, nil) }
        let bucket = Int(StableHash.identity(incoming.id) % UInt64(bucketCount))
        let contentHash = incoming.content.map(StableHash.content)
        let entryHash = StableHash.entry(incoming, contentHash: contentHash)
        bucketSums[bucket] &+= entryHash
        bucketCounts[bucket] += 1
        certEntries[incoming.id] = CertificateEntry(record: incoming, bucket: bucket,
                                                    contentHash: contentHash, entryHash: entryHash)
        certIDsByUser[UserRef(domain: incoming.id.domain, user: incoming.id.user), default: []].append(incoming.id)
        return (incoming, nil)
    }

    /// (added, origin) as DESIGN fixes it; the id only breaks ties no correct cluster produces.
    static func namePrecedence(_ a: CertificateContent, _ aID: CertificateID,
                               over b: CertificateContent, _ bID: CertificateID) -> Bool {
        if a.added != b.added { return a.added < b.added }
        if a.origin != b.origin { return a.origin < b.origin }
        return aID < bID
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
