/// FNV-1a 64 over length-prefixed fields, finished with a 64-bit avalanche mix.
/// Swift's `Hasher` is seeded per process, so it cannot be used for digests two nodes compare;
/// this one is identical in every process and on every platform (fields are encoded
/// little-endian explicitly). The final mix matters because bucket digests *add* entry hashes:
/// raw FNV outputs of near-identical inputs are correlated in the low bits.
struct StableHasher {
    private var state: UInt64 = 0xcbf2_9ce4_8422_2325

    @inline(__always)
    mutating func byte(_ b: UInt8) {
        state ^= UInt64(b)
        state &*= 0x0000_0100_0000_01B3
    }

    mutating func u32(_ v: UInt32) {
        var v = v
        for _ in 0..<4 { byte(UInt8(truncatingIfNeeded: v)); v >>= 8 }
    }

    mutating func u64(_ v: UInt64) {
        var v = v
        for _ in 0..<8 { byte(UInt8(truncatingIfNeeded: v)); v >>= 8 }
    }

    /// Length prefix so ("ab","c") and ("a","bc") encode differently. The UTF-8 bytes are read
    /// from contiguous storage (what a native string already is): stepping through `utf8` one
    /// index at a time cost ~50 ms of a 100,000-record restart's load.
    mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { lengthPrefixed($0) }
    }

    mutating func bytes(_ bs: [UInt8]) {
        bs.withUnsafeBufferPointer { lengthPrefixed($0) }
    }

    private mutating func lengthPrefixed(_ bytes: UnsafeBufferPointer<UInt8>) {
        u64(UInt64(bytes.count))
        for b in bytes { byte(b) }
    }

    /// Large blobs (certificate DER) eight bytes per step: a byte-wise loop made a 100k-record
    /// full sync take seconds. Multiply and xor-shift are both bijections of the state, so a
    /// one-word difference always survives to the final mix. Length-prefixed; the tail is
    /// zero-padded (the prefix keeps padding from colliding with real zeros).
    mutating func blob(_ bs: [UInt8]) {
        u64(UInt64(bs.count))
        bs.withUnsafeBytes { raw in
            var offset = 0
            while offset + 8 <= raw.count {
                word(UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
                offset += 8
            }
            var tail: UInt64 = 0
            var shift: UInt64 = 0
            while offset < raw.count {
                tail |= UInt64(raw[offset]) << shift
                shift += 8
                offset += 1
            }
            if shift > 0 { word(tail) }
        }
    }

    @inline(__always)
    private mutating func word(_ w: UInt64) {
        state = (state ^ w) &* 0x9E37_79B9_7F4A_7C15
        state ^= state >> 29
    }

    func finalize() -> UInt64 { mix64(state) }
}

/// MurmurHash3 fmix64: a bijective avalanche step.
@inline(__always)
func mix64(_ x: UInt64) -> UInt64 {
    var k = x
    k ^= k >> 33
    k &*= 0xff51_afd7_ed55_8ccd
    k ^= k >> 33
    k &*= 0xc4ce_b9fe_1a85_ec53
    k ^= k >> 33
    return k
}

/// Domain-separation tags: a key version and a PSK record can never hash alike by construction.
enum EntryTag: UInt8 {
    case keyVersion = 1
    case pskFingerprint = 2
    case keyIdentity = 3
    case pskIdentity = 4
    case root = 5
    case certificateIdentity = 6
    case certificateRecord = 7
    case certificateContent = 8
    case tokenFloorIdentity = 9
    case tokenFloorRecord = 10
}

enum StableHash {
    static func entry(_ key: KeyRef, _ v: KeyVersion) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.keyVersion.rawValue)
        h.string(key.domain)
        h.string(key.name)
        h.u64(v.id.created.wallMillis)
        h.u32(v.id.created.logical)
        h.string(v.id.origin)
        h.u32(v.generation)
        return h.finalize()
    }

    static func entry(_ fp: PSKFingerprint) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.pskFingerprint.rawValue)
        h.string(fp.key.domain)
        h.string(fp.key.name)
        h.string(fp.node)
        h.bytes(fp.fingerprint)
        h.u64(fp.stamp.wallMillis)
        h.u32(fp.stamp.logical)
        return h.finalize()
    }

    static func identity(_ key: KeyRef) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.keyIdentity.rawValue)
        h.string(key.domain)
        h.string(key.name)
        return h.finalize()
    }

    static func identity(node: NodeID, key: KeyRef) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.pskIdentity.rawValue)
        h.string(key.domain)
        h.string(key.name)
        h.string(node)
        return h.finalize()
    }

    static func identity(_ id: CertificateID) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.certificateIdentity.rawValue)
        h.string(id.domain)
        h.string(id.user)
        h.bytes(id.sha256)
        return h.finalize()
    }

    /// Hashed once per adopted content (the DER dominates the cost) and cached, so that a
    /// removal only rehashes the few bytes of the record around it.
    static func content(_ c: CertificateContent) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.certificateContent.rawValue)
        h.string(c.name)
        h.blob(c.der)
        h.u64(UInt64(bitPattern: c.notBeforeMillis))
        h.u64(UInt64(bitPattern: c.notAfterMillis))
        h.u64(UInt64(c.jids.count))
        for jid in c.jids { h.string(jid) }
        h.byte(c.noCertManagement ? 1 : 0)
        h.u64(c.added.wallMillis)
        h.u32(c.added.logical)
        h.string(c.origin)
        return h.finalize()
    }

    static func tokenFloorIdentity(domain: String, user: String) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.tokenFloorIdentity.rawValue)
        h.string(domain)
        h.string(user)
        return h.finalize()
    }

    static func entry(_ floor: TokenSequenceFloor) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.tokenFloorRecord.rawValue)
        h.string(floor.domain)
        h.string(floor.user)
        h.u64(floor.floor)
        h.u64(floor.stamp.wallMillis)
        h.u32(floor.stamp.logical)
        h.string(floor.origin)
        return h.finalize()
    }

    /// Covers the whole merged record (content through its hash), so adding or upgrading a
    /// removal changes the bucket digest and anti-entropy ships the tombstone.
    static func entry(_ record: CertificateRecord, contentHash: UInt64?) -> UInt64 {
        var h = StableHasher()
        h.byte(EntryTag.certificateRecord.rawValue)
        h.string(record.id.domain)
        h.string(record.id.user)
        h.bytes(record.id.sha256)
        if let contentHash {
            h.byte(1)
            h.u64(contentHash)
        } else {
            h.byte(0)
        }
        if let removal = record.removal {
            h.byte(removal.kind.rawValue)
            h.u64(removal.stamp.wallMillis)
            h.u32(removal.stamp.logical)
            h.string(removal.origin)
        } else {
            h.byte(0)
        }
        return h.finalize()
    }
}
