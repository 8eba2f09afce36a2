/// One user's refresh-token sequence floor (issue 14): refresh tokens whose sequence is below
/// `floor` are revoked on every node.
///
/// MongooseIM's `mod_auth_token` keeps one integer per user (`auth_token.seq_no`, 1 until the
/// first revocation, incremented by each `revoke`); a refresh token carries the value current
/// when it was issued and is revoked once the stored value is larger. Here that value is a
/// replicated record whose join is the maximum, so a revocation on any node eventually refuses
/// the token everywhere, and no stale replica can lower it again.
public struct TokenSequenceFloor: Hashable, Sendable {
    public var domain: String
    /// Bare JID `local@domain`.
    public var user: String
    /// Refresh tokens with a sequence below this are revoked; new ones carry this value.
    public var floor: UInt64
    /// When and where the revocation that set this floor happened (provenance, for operators;
    /// it only breaks ties between equal floors).
    public var stamp: HLCTimestamp
    public var origin: NodeID

    public init(domain: String, user: String, floor: UInt64, stamp: HLCTimestamp, origin: NodeID) {
        self.domain = domain
        self.user = user
        self.floor = floor
        self.stamp = stamp
        self.origin = origin
    }

    /// The join's total order: the higher floor wins; between equal floors (two nodes revoked
    /// concurrently from the same value) the earliest (stamp, origin) is kept, like the first
    /// removal of a certificate. A total order makes the join commutative, associative and
    /// idempotent.
    public func supersedes(_ other: TokenSequenceFloor) -> Bool {
        if floor != other.floor { return floor > other.floor }
        if stamp != other.stamp { return stamp < other.stamp }
        return origin < other.origin
    }
}

extension ReplicatedStore {
    struct TokenFloorEntry: Sendable, Equatable {
        var record: TokenSequenceFloor
        let bucket: Int
        var entryHash: UInt64
    }

    /// The sequence of a user who was never revoked: MongooseIM's `mod_auth_token_rdbms`
    /// inserts 1 on first use.
    public static let initialTokenSequence: UInt64 = 1

    /// The user's replicated floor record, nil when the user's tokens were never revoked.
    public func tokenSequenceFloor(domain: String, user: String) -> TokenSequenceFloor? {
        tokenFloors[UserRef(domain: domain, user: user)]?.record
    }

    /// The sequence new refresh tokens of the user carry, which is also the floor they are
    /// checked against: `initialTokenSequence` until the first revocation.
    public func tokenSequence(domain: String, user: String) -> UInt64 {
        max(tokenSequenceFloor(domain: domain, user: user)?.floor ?? Self.initialTokenSequence, Self.initialTokenSequence)
    }

    /// The record a revocation stores: the floor one above the current sequence (saturating).
    /// Changes nothing, so the shell can persist it first and then apply it with `merge`.
    public func tokenFloorRaise(domain: String, user: String, stamp: HLCTimestamp, origin: NodeID) -> TokenSequenceFloor {
        let current = tokenSequence(domain: domain, user: user)
        return TokenSequenceFloor(domain: domain, user: user, floor: current == UInt64.max ? current : current + 1,
                                  stamp: stamp, origin: origin)
    }

    /// `tokenFloorRaise` applied at once; returns the stored record.
    @discardableResult
    public mutating func raiseTokenSequenceFloor(domain: String, user: String, stamp: HLCTimestamp,
                                                 origin: NodeID) -> TokenSequenceFloor {
        let record = tokenFloorRaise(domain: domain, user: user, stamp: stamp, origin: origin)
        applyTokenFloor(record)
        return record
    }

    /// Every floor record, sorted by (domain, user): what the shell writes to its database.
    public func allTokenSequenceFloors() -> [TokenSequenceFloor] {
        tokenFloors.values.map(\.record).sorted(by: Self.floorOrder)
    }

    /// Start-up path: joins floors read from the local database (nothing is reported).
    public mutating func loadTokenSequenceFloors(_ records: [TokenSequenceFloor]) {
        for record in records { applyTokenFloor(record) }
    }

    mutating func mergeTokenSequenceFloors(_ incoming: [TokenSequenceFloor], into outcome: inout MergeOutcome) {
        guard !incoming.isEmpty else { return }
        var changed: Set<UserRef> = []
        for record in incoming where applyTokenFloor(record) {
            changed.insert(UserRef(domain: record.domain, user: record.user))
        }
        guard !changed.isEmpty else { return }
        // Only the final value per user: a record superseded within the same delta was never
        // part of this replica's state.
        let records = changed.compactMap { tokenFloors[$0]?.record }.sorted(by: Self.floorOrder)
        outcome.tokenSequenceFloorsChanged = records
        outcome.forwardable.tokenSequenceFloors = records
    }

    /// Joins one record; true when the stored value changed.
    @discardableResult
    mutating func applyTokenFloor(_ record: TokenSequenceFloor) -> Bool {
        let user = UserRef(domain: record.domain, user: record.user)
        let entryHash = StableHash.entry(record)
        if let current = tokenFloors[user] {
            guard record.supersedes(current.record) else { return false }
            bucketSums[current.bucket] &-= current.entryHash
            bucketSums[current.bucket] &+= entryHash
            tokenFloors[user] = TokenFloorEntry(record: record, bucket: current.bucket, entryHash: entryHash)
        } else {
            let bucket = Int(StableHash.tokenFloorIdentity(domain: record.domain, user: record.user) % UInt64(bucketCount))
            bucketSums[bucket] &+= entryHash
            bucketCounts[bucket] += 1
            tokenFloors[user] = TokenFloorEntry(record: record, bucket: bucket, entryHash: entryHash)
        }
        return true
    }

    static func floorOrder(_ a: TokenSequenceFloor, _ b: TokenSequenceFloor) -> Bool {
        a.domain != b.domain ? a.domain < b.domain : a.user < b.user
    }
}
