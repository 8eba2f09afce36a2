/// The certificate records of a store, laid out for size: a registry of 100,000 records took
/// ~1 KB of memory per record besides its DER as `[CertificateID: Entry]` plus a per-user
/// `[UserRef: [CertificateID]]` index (a dictionary sized for 100k entries reserves 262,144
/// buckets of a 240-byte key and value, every fingerprint and most users a heap object of their
/// own). Here a record is one fixed-size slot in a contiguous array (~176 bytes): the fingerprint
/// inline, domains and node names interned, a user stored as its localpart when it is
/// `local@domain` (a small string, no heap object, for any localpart up to 15 bytes), `jids`
/// omitted when it is just `[user]`; the two indexes are arrays of chain heads (4 bytes a
/// bucket, one bucket per record at most: a `[Int: Int32]` of hash to head took 32 bytes a
/// record each, 6.4 MB at 100,000). Hand-written for that reason (measured: `bench/run.sh sync`,
/// BENCHMARKS.md "Large state").
///
/// Slots keep their insertion order (a freed slot is reused), so iterating the table visits
/// records in the order they were loaded or received: the key order of the database they came
/// from, which makes a full-state answer arrive in key order and its rows append at the end of
/// the receiver's table.
///
/// The chains are keyed by Swift's per-process seeded `Hasher`, so no peer or user can choose
/// identities that collide into long chains.
struct CertificateTable: Sendable {
    /// One record. `flags` says which optional parts are present.
    struct Slot: Sendable {
        /// The localpart when `Flags.userAtDomain` (user == local + "@" + domain), else the user.
        var user: String
        var name: String
        /// Empty when `Flags.jidsAreUser` (the record's jids are exactly `[user]`).
        var jids: [String]
        /// Empty for a compacted record and without content.
        var der: [UInt8]
        var sha: (UInt64, UInt64, UInt64, UInt64)
        var notBefore: Int64
        var notAfter: Int64
        var addedWall: UInt64
        var removalWall: UInt64
        var contentHash: UInt64
        var entryHash: UInt64
        var addedLogical: UInt32
        var removalLogical: UInt32
        var domain: UInt32
        var origin: UInt32
        var removalOrigin: UInt32
        var bucket: Int32
        var nextInID: Int32
        var nextOfUser: Int32
        var flags: UInt8
        /// 0 without a removal, else `RemovalKind.rawValue`.
        var removalKind: UInt8
    }

    struct Flags {
        static let inUse: UInt8 = 1
        static let userAtDomain: UInt8 = 2
        static let hasContent: UInt8 = 4
        static let jidsAreUser: UInt8 = 8
        static let noCertManagement: UInt8 = 16
        /// The fingerprint is not 32 bytes and lives in `oddFingerprints`.
        static let oddFingerprint: UInt8 = 32
    }

    private(set) var count = 0
    /// Records holding a removal (revoked or disabled), kept as slots change: the metrics
    /// gauge asks every second, and counting meant walking every slot under the state lock.
    private(set) var removedCount = 0
    private var slots: [Slot] = []
    private var freeSlots: [Int32] = []
    /// Chain heads (-1: empty), indexed by the id's (`byID`) or the user's (`byUser`) hash
    /// masked to the array's size, a power of two kept at least `count` (`growIndexes`).
    private var byID: [Int32] = []
    private var byUser: [Int32] = []
    private var strings: [String] = []
    private var stringIndex: [String: UInt32] = [:]
    /// The last two distinct strings `intern` returned (`UInt32.max`: none yet).
    private var recentlyInterned: (UInt32, UInt32) = (.max, .max)
    private var oddFingerprints: [Int32: [UInt8]] = [:]

    var isEmpty: Bool { count == 0 }

    /// Sizes the table for a bulk load into an empty table.
    mutating func reserve(_ n: Int) {
        guard count == 0, n > slots.capacity else { return }
        slots.reserveCapacity(n)
        growIndexes(toHold: n)
    }

    // MARK: Lookup

    /// The chain walks read single fields (`slots[i].x`), never a whole `Slot`: a copy retains
    /// its four references, and a chain now holds every id whose hash shares the bucket, so a
    /// lookup of a new id visits ~1 other slot (profiled: with whole-slot copies a fresh node's
    /// join of 100,000 records took ~10 % more CPU).
    func find(_ id: CertificateID) -> Int32? {
        guard let domain = interned(id.domain), !byID.isEmpty else { return nil }
        let words = Self.words(id.sha256)
        var index = byID[Self.idKey(id) & (byID.count - 1)]
        while index >= 0 {
            let i = Int(index)
            let fingerprintMatches = slots[i].flags & Flags.oddFingerprint != 0
                ? oddFingerprints[index] == id.sha256 : words.map { $0 == slots[i].sha } ?? false
            if fingerprintMatches, slots[i].domain == domain, matches(i, user: id.user) { return index }
            index = slots[i].nextInID
        }
        return nil
    }

    /// Every slot of the user, in insertion order of the chain (callers sort).
    func slots(domain: String, user: String) -> [Int32] {
        guard let domainIndex = interned(domain), !byUser.isEmpty else { return [] }
        var result: [Int32] = []
        var index = byUser[Self.userKey(domain: domain, user: user) & (byUser.count - 1)]
        while index >= 0 {
            let i = Int(index)
            if slots[i].domain == domainIndex, matches(i, user: user) { result.append(index) }
            index = slots[i].nextOfUser
        }
        return result
    }

    /// Every slot in use, in slot order.
    func forEachSlot(_ body: (Int32, Slot) throws -> Void) rethrows {
        for (index, slot) in slots.enumerated() where slot.flags & Flags.inUse != 0 {
            try body(Int32(index), slot)
        }
    }

    subscript(index: Int32) -> Slot { slots[Int(index)] }

    /// The first slot in use at or after `index`, for a walk that visits the slots one at a
    /// time (`StateWalk`); nil past the last.
    func slotInUse(atOrAfter index: Int) -> Int32? {
        var i = max(0, index)
        while i < slots.count {
            if slots[i].flags & Flags.inUse != 0 { return Int32(i) }
            i += 1
        }
        return nil
    }

    /// The record in `index`.
    func record(_ index: Int32) -> CertificateRecord {
        let slot = slots[Int(index)]
        let domain = strings[Int(slot.domain)]
        let user = slot.flags & Flags.userAtDomain != 0 ? slot.user + "@" + domain : slot.user
        let sha256 = slot.flags & Flags.oddFingerprint != 0 ? (oddFingerprints[index] ?? []) : Self.bytes(slot.sha)
        var content: CertificateContent?
        if slot.flags & Flags.hasContent != 0 {
            content = CertificateContent(name: slot.name, der: slot.der, notBeforeMillis: slot.notBefore, notAfterMillis: slot.notAfter,
                                         jids: slot.flags & Flags.jidsAreUser != 0 ? [user] : slot.jids,
                                         noCertManagement: slot.flags & Flags.noCertManagement != 0,
                                         added: HLCTimestamp(wallMillis: slot.addedWall, logical: slot.addedLogical),
                                         origin: strings[Int(slot.origin)])
        }
        var removal: CertificateRemoval?
        if let kind = RemovalKind(rawValue: slot.removalKind) {
            removal = CertificateRemoval(kind: kind, stamp: HLCTimestamp(wallMillis: slot.removalWall, logical: slot.removalLogical),
                                         origin: strings[Int(slot.removalOrigin)])
        }
        return CertificateRecord(id: CertificateID(domain: domain, user: user, sha256: sha256), content: content, removal: removal)
    }

    /// True when the slot holds exactly `record` (the same comparison as `==` on the rebuilt
    /// record). Allocates nothing: a full sync compares 100k records that are all already held.
    func holds(_ index: Int32, _ record: CertificateRecord) -> Bool {
        let slot = slots[Int(index)]
        if let removal = record.removal {
            guard slot.removalKind == removal.kind.rawValue, slot.removalWall == removal.stamp.wallMillis,
                  slot.removalLogical == removal.stamp.logical, strings[Int(slot.removalOrigin)] == removal.origin else { return false }
        } else if slot.removalKind != 0 {
            return false
        }
        guard let content = record.content else { return slot.flags & Flags.hasContent == 0 }
        guard slot.flags & Flags.hasContent != 0, slot.notBefore == content.notBeforeMillis, slot.notAfter == content.notAfterMillis,
              slot.addedWall == content.added.wallMillis, slot.addedLogical == content.added.logical,
              (slot.flags & Flags.noCertManagement != 0) == content.noCertManagement,
              slot.name == content.name, strings[Int(slot.origin)] == content.origin else { return false }
        if slot.flags & Flags.jidsAreUser != 0 {
            guard content.jids.count == 1, Self.sameBytes(content.jids[0], record.id.user) else { return false }
        } else if slot.jids != content.jids {
            return false
        }
        return Self.sameBytes(slot.der, content.der)
    }

    // MARK: Changes

    /// Stores `record` in a new slot (its id must not be held) and returns the slot.
    @discardableResult
    mutating func insert(_ record: CertificateRecord, bucket: Int, contentHash: UInt64?, entryHash: UInt64) -> Int32 {
        growIndexes(toHold: count + 1)
        let index: Int32
        if let reused = freeSlots.popLast() {
            index = reused
        } else {
            index = Int32(slots.count)
            slots.append(Self.emptySlot)
        }
        var slot = fill(record, index: index, bucket: bucket, contentHash: contentHash, entryHash: entryHash)
        let idBucket = Self.idKey(record.id) & (byID.count - 1)
        let userBucket = Self.userKey(domain: record.id.domain, user: record.id.user) & (byUser.count - 1)
        slot.nextInID = byID[idBucket]
        slot.nextOfUser = byUser[userBucket]
        slots[Int(index)] = slot
        byID[idBucket] = index
        byUser[userBucket] = index
        count += 1
        if slot.removalKind != 0 { removedCount += 1 }
        return index
    }

    /// Replaces the record in `index` (same id).
    mutating func update(_ index: Int32, _ record: CertificateRecord, contentHash: UInt64?, entryHash: UInt64) {
        let old = slots[Int(index)]
        var slot = fill(record, index: index, bucket: Int(old.bucket), contentHash: contentHash, entryHash: entryHash)
        slot.nextInID = old.nextInID
        slot.nextOfUser = old.nextOfUser
        slots[Int(index)] = slot
        removedCount += (slot.removalKind != 0 ? 1 : 0) - (old.removalKind != 0 ? 1 : 0)
    }

    /// Frees `index`, unlinking it from both chains.
    mutating func remove(_ index: Int32, id: CertificateID) {
        let slot = slots[Int(index)]
        Self.unlink(index, slots: &slots, heads: &byID, bucket: Self.idKey(id) & (byID.count - 1), next: \.nextInID,
                    following: slot.nextInID)
        Self.unlink(index, slots: &slots, heads: &byUser, bucket: Self.userKey(domain: id.domain, user: id.user) & (byUser.count - 1),
                    next: \.nextOfUser, following: slot.nextOfUser)
        slots[Int(index)] = Self.emptySlot
        oddFingerprints[index] = nil
        freeSlots.append(index)
        count -= 1
        if slot.removalKind != 0 { removedCount -= 1 }
    }

    private static func unlink(_ index: Int32, slots: inout [Slot], heads: inout [Int32], bucket: Int,
                               next: WritableKeyPath<Slot, Int32>, following: Int32) {
        let head = heads[bucket]
        if head == index {
            heads[bucket] = following
            return
        }
        var previous = head
        while previous >= 0 {
            let successor = slots[Int(previous)][keyPath: next]
            if successor == index {
                slots[Int(previous)][keyPath: next] = following
                return
            }
            previous = successor
        }
    }

    private mutating func fill(_ record: CertificateRecord, index: Int32, bucket: Int, contentHash: UInt64?, entryHash: UInt64) -> Slot {
        var slot = Self.emptySlot
        slot.flags = Flags.inUse
        slot.bucket = Int32(truncatingIfNeeded: bucket)
        slot.entryHash = entryHash
        slot.contentHash = contentHash ?? 0
        slot.domain = intern(record.id.domain)
        if let local = Self.localpart(of: record.id.user, domain: record.id.domain) {
            slot.user = local
            slot.flags |= Flags.userAtDomain
        } else {
            slot.user = record.id.user
        }
        if let sha = Self.words(record.id.sha256) {
            slot.sha = sha
            oddFingerprints[index] = nil
        } else {
            slot.flags |= Flags.oddFingerprint
            oddFingerprints[index] = record.id.sha256
        }
        if let content = record.content {
            slot.flags |= Flags.hasContent
            slot.name = content.name
            // A copy on purpose. The array passed in was allocated by whoever decoded the record
            // (a peer frame decoder on an event loop, the start-up reader), among that thread's
            // short-lived allocations; kept, the 100,000 DERs of a join held ~25 MB of freed heap
            // around them in place, which `malloc_trim` cannot return. The copy is allocated
            // here, next to the table's other long-lived data (`bench/run.sh sync`, fresh node:
            // 178 -> 153 MiB; BENCHMARKS.md "Large state").
            slot.der = content.der.withUnsafeBufferPointer { Array($0) }
            slot.notBefore = content.notBeforeMillis
            slot.notAfter = content.notAfterMillis
            if content.jids.count == 1 && Self.sameBytes(content.jids[0], record.id.user) {
                slot.flags |= Flags.jidsAreUser
            } else {
                slot.jids = content.jids
            }
            if content.noCertManagement { slot.flags |= Flags.noCertManagement }
            slot.addedWall = content.added.wallMillis
            slot.addedLogical = content.added.logical
            slot.origin = intern(content.origin)
        }
        if let removal = record.removal {
            slot.removalKind = removal.kind.rawValue
            slot.removalWall = removal.stamp.wallMillis
            slot.removalLogical = removal.stamp.logical
            slot.removalOrigin = intern(removal.origin)
        }
        return slot
    }

    /// Domains and node names: a handful of distinct values, never forgotten. Byte-exact like
    /// everything else in the table (the digests hash bytes): `stringIndex`, a `String`-keyed
    /// dictionary, matches canonically equivalent spellings, so a hit with other bytes (only an
    /// unprepared peer sends one) is resolved by a search among the few strings held.
    ///
    /// The two strings interned last are compared first: a record interns its domain and its
    /// origin, and records come in runs that share both (a database's rows in key order, a
    /// peer's chunks), so a bulk load rarely hashes a string (the dictionary lookups were ~75 ms
    /// of a fresh node's 100,000-record join, `perf record`).
    private mutating func intern(_ string: String) -> UInt32 {
        let index: UInt32
        if let held = interned(string) {
            index = held
        } else {
            index = UInt32(strings.count)
            strings.append(string)
            if stringIndex[string] == nil { stringIndex[string] = index }
        }
        if index != recentlyInterned.0 { recentlyInterned = (index, recentlyInterned.0) }
        return index
    }

    private func interned(_ string: String) -> UInt32? {
        let (last, beforeLast) = recentlyInterned
        if Int(last) < strings.count, Self.sameBytes(strings[Int(last)], string) { return last }
        if Int(beforeLast) < strings.count, Self.sameBytes(strings[Int(beforeLast)], string) { return beforeLast }
        guard let index = stringIndex[string] else { return nil }
        if Self.sameBytes(strings[Int(index)], string) { return index }
        return strings.firstIndex { Self.sameBytes($0, string) }.map { UInt32($0) }
    }

    /// Doubles both head arrays (from 16) until they have a bucket per record for `n` records,
    /// relinking every record: the chains hang off hash & (size - 1), so a new size moves them.
    /// The keys are recomputed from the slots (`idKey(of:)`), which is cheaper in memory than
    /// keeping them (8 bytes a record each) for the few resizes of a table's life.
    private mutating func growIndexes(toHold n: Int) {
        guard n > byID.count else { return }
        var size = max(16, byID.count)
        while size < n { size *= 2 }
        byID = Array(repeating: -1, count: size)
        byUser = Array(repeating: -1, count: size)
        for index in slots.indices where slots[index].flags & Flags.inUse != 0 {
            let idBucket = idKey(of: Int32(index)) & (size - 1), userBucket = userKey(of: index) & (size - 1)
            slots[index].nextInID = byID[idBucket]
            slots[index].nextOfUser = byUser[userBucket]
            byID[idBucket] = Int32(index)
            byUser[userBucket] = Int32(index)
        }
    }

    /// `idKey(record.id)` of the record in `index`, from the slot's parts (no record built).
    private func idKey(of index: Int32) -> Int {
        var hasher = Hasher()
        feed(&hasher, Int(index))
        hasher.combine(UInt8(0xFF))
        if slots[Int(index)].flags & Flags.oddFingerprint != 0 {
            (oddFingerprints[index] ?? []).withUnsafeBytes { hasher.combine(bytes: $0) }
        } else {
            withUnsafeBytes(of: slots[Int(index)].sha) { hasher.combine(bytes: $0) }
        }
        return hasher.finalize()
    }

    /// `userKey(domain:user:)` of the record in `index`.
    private func userKey(of index: Int) -> Int {
        var hasher = Hasher()
        feed(&hasher, index)
        return hasher.finalize()
    }

    /// The bytes `feed(_:domain:user:)` gives `Hasher` for the slot's domain and user, the
    /// user fed in parts when it is stored as a localpart (a hasher sees one byte stream
    /// however it is split).
    private func feed(_ hasher: inout Hasher, _ index: Int) {
        var domain = strings[Int(slots[index].domain)], user = slots[index].user
        domain.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        hasher.combine(UInt8(0xFF))
        user.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        if slots[index].flags & Flags.userAtDomain != 0 {
            hasher.combine(UInt8(ascii: "@"))
            domain.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }

    // MARK: Helpers

    private static let emptySlot = Slot(user: "", name: "", jids: [], der: [], sha: (0, 0, 0, 0), notBefore: 0, notAfter: 0,
                                        addedWall: 0, removalWall: 0, contentHash: 0, entryHash: 0, addedLogical: 0,
                                        removalLogical: 0, domain: 0, origin: 0, removalOrigin: 0, bucket: 0, nextInID: -1,
                                        nextOfUser: -1, flags: 0, removalKind: 0)

    /// The hash keys feed the same bytes whether the user is whole or split into localpart and
    /// domain (0xFF never occurs in UTF-8, so it separates fields unambiguously).
    private static func idKey(_ id: CertificateID) -> Int {
        var hasher = Hasher()
        feed(&hasher, domain: id.domain, user: id.user)
        hasher.combine(UInt8(0xFF))
        id.sha256.withUnsafeBytes { hasher.combine(bytes: $0) }
        return hasher.finalize()
    }

    private static func userKey(domain: String, user: String) -> Int {
        var hasher = Hasher()
        feed(&hasher, domain: domain, user: user)
        return hasher.finalize()
    }

    private static func feed(_ hasher: inout Hasher, domain: String, user: String) {
        var domain = domain, user = user
        domain.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        hasher.combine(UInt8(0xFF))
        user.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }

    /// `user` without "@domain" when it is exactly localpart + "@" + domain (compared as UTF-8,
    /// not by Unicode equivalence: ids are byte strings), else nil.
    static func localpart(of user: String, domain: String) -> String? {
        var user = user, domain = domain
        return user.withUTF8 { userBytes in
            domain.withUTF8 { domainBytes -> String? in
                guard userBytes.count > domainBytes.count + 1 else { return nil }
                let at = userBytes.count - domainBytes.count - 1
                guard userBytes[at] == UInt8(ascii: "@"), Self.sameBytes(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: userBytes[(at + 1)...])), UnsafeRawBufferPointer(domainBytes)) else {
                    return nil
                }
                return String(decoding: UnsafeBufferPointer(rebasing: userBytes[..<at]), as: UTF8.self)
            }
        }
    }

    /// Whether the slot's user (whole, or localpart + "@" + domain) equals `user`, byte for byte.
    private func matches(_ i: Int, user: String) -> Bool {
        guard slots[i].flags & Flags.userAtDomain != 0 else { return Self.sameBytes(slots[i].user, user) }
        var local = slots[i].user, domain = strings[Int(slots[i].domain)], user = user
        return user.withUTF8 { bytes in
            local.withUTF8 { local in
                domain.withUTF8 { domain in
                    bytes.count == local.count + 1 + domain.count && bytes[local.count] == UInt8(ascii: "@")
                        && Self.sameBytes(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[..<local.count])), UnsafeRawBufferPointer(local))
                        && Self.sameBytes(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[(local.count + 1)...])), UnsafeRawBufferPointer(domain))
                }
            }
        }
    }

    /// Byte-for-byte equality of two strings' UTF-8 (`==` is Unicode equivalence), compared in
    /// contiguous memory: `utf8.elementsEqual` stepped through the views a byte at a time, which
    /// with the other view walks here was ~15 % of a 100,000-row load's indexing (`perf record`).
    static func sameBytes(_ a: String, _ b: String) -> Bool {
        guard a.utf8.count == b.utf8.count else { return false }
        var a = a, b = b
        return a.withUTF8 { x in b.withUTF8 { y in sameBytes(UnsafeRawBufferPointer(x), UnsafeRawBufferPointer(y)) } }
    }

    /// `Array ==` for bytes steps a byte at a time too: comparing the DERs of a join's 100,000
    /// records in `holds` was ~55 ms of the fresh node's writer (`perf record`).
    static func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { y in sameBytes(x, y) } }
    }

    /// Equal lengths and bytes, compared eight bytes at a time.
    static func sameBytes(_ x: UnsafeRawBufferPointer, _ y: UnsafeRawBufferPointer) -> Bool {
        guard x.count == y.count else { return false }
        var offset = 0
        while offset + 8 <= x.count {
            guard x.loadUnaligned(fromByteOffset: offset, as: UInt64.self) == y.loadUnaligned(fromByteOffset: offset, as: UInt64.self) else {
                return false
            }
            offset += 8
        }
        while offset < x.count {
            guard x[offset] == y[offset] else { return false }
            offset += 1
        }
        return true
    }

    private static func words(_ bytes: [UInt8]) -> (UInt64, UInt64, UInt64, UInt64)? {
        guard bytes.count == 32 else { return nil }
        return bytes.withUnsafeBytes { raw in
            (raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
             raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self), raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        }
    }

    private static func bytes(_ words: (UInt64, UInt64, UInt64, UInt64)) -> [UInt8] {
        var copy = words
        return withUnsafeBytes(of: &copy) { Array($0) }
    }
}
