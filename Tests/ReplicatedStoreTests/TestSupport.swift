import ReplicatedStore

/// SplitMix64: a tiny seeded generator so randomized tests replay identically on failure.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func vid(_ wall: UInt64, _ origin: NodeID, logical: UInt32 = 0) -> VersionID {
    VersionID(created: HLCTimestamp(wallMillis: wall, logical: logical), origin: origin)
}

func ts(_ wall: UInt64, _ logical: UInt32 = 0) -> HLCTimestamp {
    HLCTimestamp(wallMillis: wall, logical: logical)
}

let tokenKey = KeyRef(domain: "first.com", name: "token_secret")

extension ReplicatedStore {
    func ids(of key: KeyRef, nowMillis: UInt64) -> [VersionID] {
        versions(of: key, nowMillis: nowMillis).map(\.version.id)
    }
}

/// Combines deltas the way a peer holding all of them would send them.
func combine(_ deltas: [StoreDelta]) -> StoreDelta {
    var out = StoreDelta()
    for d in deltas {
        for (k, vs) in d.keyVersions { out.keyVersions[k, default: []] += vs }
        out.pskFingerprints += d.pskFingerprints
        out.certificates += d.certificates
        out.tokenSequenceFloors += d.tokenSequenceFloors
    }
    return out
}

func certID(_ user: String, _ fingerprint: UInt8, domain: String = "first.com") -> CertificateID {
    CertificateID(domain: domain, user: user, sha256: Array(repeating: fingerprint, count: 32))
}

func certContent(_ name: String, added: HLCTimestamp, origin: NodeID, der: [UInt8] = [0x30, 0x82, 1, 2],
                 jids: [String] = ["alice@first.com"]) -> CertificateContent {
    CertificateContent(name: name, der: der, notBeforeMillis: 0, notAfterMillis: 4_000_000_000_000,
                       jids: jids, noCertManagement: false, added: added, origin: origin)
}

func removal(_ kind: RemovalKind, _ wall: UInt64, _ origin: NodeID, logical: UInt32 = 0) -> CertificateRemoval {
    CertificateRemoval(kind: kind, stamp: ts(wall, logical), origin: origin)
}
