import Membership
import NIOCore
import Replication
import ReplicatedStore
import SecretMemory

/// Why a peer frame was refused. The connection that sent it is closed; the node goes on.
public enum PeerWireError: Error, CustomStringConvertible, Equatable {
    case frameTooLarge(Int, limit: Int)
    case frameTooShort(Int)
    case unsupportedVersion(UInt8)
    case unknownMessageType(UInt8)
    case truncated(String)
    case invalidField(String)
    case trailingBytes(Int)
    case secretMemory(String)
    /// A string longer than the format allows (the encoder refuses; it never truncates).
    case fieldTooLong(bytes: Int, limit: Int)

    public var description: String {
        switch self {
        case .frameTooLarge(let size, let limit): return "peer frame of \(size) bytes exceeds the \(limit)-byte limit"
        case .frameTooShort(let size): return "peer frame of \(size) bytes is too short to hold a version and a type"
        case .unsupportedVersion(let v): return "peer speaks wire version \(v); this node speaks \(PeerFrameCodec.version) (upgrade the older node)"
        case .unknownMessageType(let t): return "unknown peer message type \(t)"
        case .truncated(let what): return "peer frame ends inside \(what)"
        case .invalidField(let what): return "invalid \(what) in peer frame"
        case .trailingBytes(let n): return "\(n) unexpected bytes after the peer message"
        case .secretMemory(let message): return message
        case .fieldTooLong(let bytes, let limit): return "a \(bytes)-byte string does not fit a peer frame (at most \(limit) bytes); nothing was sent"
        }
    }
}

/// The versioned, length-prefixed peer wire format.
///
/// A frame is `u32 length | u8 version | u8 type | payload`, big-endian, `length` counting
/// version+type+payload and bounded by `maxFrameBytes`. Strings are `u16 length + UTF-8`,
/// lists carry a `u32` count checked against what the remaining bytes could hold, so a
/// hostile count cannot make the decoder allocate. Hand-written rather than protobuf: the
/// messages are few and fixed, and decoding key material straight into protected memory
/// needs control over every byte.
public enum PeerFrameCodec {
    public static let version: UInt8 = 1
    public static let maxFrameBytes = 4 << 20
    /// Deltas are split so each frame stays well under the limit.
    public static let deltaChunkBytes = 1 << 20
    static let maxStringBytes = 1024

    enum MessageType: UInt8 {
        case hello = 1, swim = 2, digest = 3, bucketDigests = 4, delta = 5, syncRequest = 6, syncDone = 7
    }

    // MARK: Framing

    /// Extracts one whole frame's body (version onwards) if `buffer` holds one.
    public static func nextFrame(from buffer: inout ByteBuffer) throws(PeerWireError) -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 2 else { throw .frameTooShort(Int(length)) }
        guard Int(length) <= maxFrameBytes else { throw .frameTooLarge(Int(length), limit: maxFrameBytes) }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        return buffer.readSlice(length: Int(length))
    }

    /// `features`: what the receiving peer decodes (`PeerWireFeatures(peerSoftwareVersion:)` of its
    /// hello); deltas leave out or downgrade what an older peer would refuse.
    public static func encode(_ message: PeerMessage, into out: inout ByteBuffer, for features: PeerWireFeatures = .current) throws(PeerWireError) {
        let start = out.writerIndex
        out.writeInteger(UInt32(0))
        out.writeInteger(version)
        switch message {
        case .hello(let hello):
            out.writeInteger(MessageType.hello.rawValue)
            try writeString(hello.cluster, &out)
            try writeString(hello.node, &out)
            out.writeInteger(hello.instance)
            try writeString(hello.address, &out)
            try writeString(hello.softwareVersion, &out)
            writeStamp(hello.stamp, &out)
        case .swim(let swim):
            out.writeInteger(MessageType.swim.rawValue)
            try writeSWIM(swim, &out)
        case .replication(let message, let stamp):
            try writeReplication(message, stamp: stamp, features, &out)
        }
        out.setInteger(UInt32(out.writerIndex - start - 4), at: start)
    }

    /// Splits a delta into frames of at most ~`deltaChunkBytes` each (secrets dominate size).
    public static func chunks(of delta: WireDelta, limit: Int = deltaChunkBytes) -> [WireDelta] {
        var chunker = WireDeltaChunker(limit: limit)
        var result: [WireDelta] = []
        for fingerprint in delta.pskFingerprints { chunker.add(fingerprint) }
        for floor in delta.tokenSequenceFloors { if let full = chunker.add(floor) { result.append(full) } }
        for version in delta.versions { if let full = chunker.add(version) { result.append(full) } }
        for record in delta.certificates { if let full = chunker.add(record) { result.append(full) } }
        if let last = chunker.finish() { result.append(last) }
        return result.isEmpty ? [WireDelta()] : result
    }

    /// Decodes one frame body (from `nextFrame`). Secrets are copied straight into `arena`.
    public static func decode(_ frame: ByteBuffer, arena: SecretArena) throws(PeerWireError) -> PeerMessage {
        var b = frame
        let v: UInt8 = try read(&b, "version")
        guard v == version else { throw .unsupportedVersion(v) }
        let rawType: UInt8 = try read(&b, "message type")
        guard let type = MessageType(rawValue: rawType) else { throw .unknownMessageType(rawType) }
        let message: PeerMessage
        switch type {
        case .hello:
            let cluster = try readString(&b, "cluster name")
            let node = try readString(&b, "node name")
            let instance: UInt64 = try read(&b, "instance")
            let address = try readString(&b, "address")
            let software = try readString(&b, "software version")
            let stamp = try readStamp(&b)
            message = .hello(PeerHello(cluster: cluster, node: node, instance: instance, address: address, softwareVersion: software, stamp: stamp))
        case .swim:
            message = .swim(try readSWIM(&b))
        case .digest, .bucketDigests, .delta, .syncRequest, .syncDone:
            message = try readReplication(type, &b, arena: arena)
        }
        guard b.readableBytes == 0 else { throw .trailingBytes(b.readableBytes) }
        return message
    }

    // MARK: Replication

    private static func writeReplication(_ message: ReplicationMessage<WireDelta>, stamp: HLCTimestamp, _ features: PeerWireFeatures,
                                         _ out: inout ByteBuffer) throws(PeerWireError) {
        switch message {
        case .digest(let root):
            out.writeInteger(MessageType.digest.rawValue)
            out.writeInteger(root)
            writeStamp(stamp, &out)
        case .bucketDigests(let digests, let sections):
            out.writeInteger(MessageType.bucketDigests.rawValue)
            writeStamp(stamp, &out)
            writeIntegers(digests, &out)
            // Optional tail: the three per-section lists of 16-bit digests, each counted.
            if let sections, features.sectionRepairs {
                for list in [sections.keyVersions, sections.pskFingerprints, sections.durable] { writeIntegers(list, &out) }
            }
        case .delta(let delta, let purpose):
            out.writeInteger(MessageType.delta.rawValue)
            writeStamp(stamp, &out)
            switch purpose {
            case .push: out.writeInteger(UInt8(0))
            case .repair(let buckets, let sections):
                // Tag 1 (all 0.1 decodes) when every bucket is repaired whole; tag 4 adds a
                // section mask per bucket. An older peer gets tag 1 and answers whole buckets.
                let whole = !features.sectionRepairs || (sections.count == buckets.count && sections.allSatisfy { $0 == .all })
                out.writeInteger(UInt8(whole ? 1 : 4))
                out.writeInteger(UInt32(buckets.count))
                for b in buckets { out.writeInteger(UInt32(b)) }
                if !whole {
                    for i in buckets.indices { out.writeInteger(i < sections.count ? sections[i].rawValue : BucketSections.all.rawValue) }
                }
            case .repairReply: out.writeInteger(UInt8(2))
            case .sync: out.writeInteger(UInt8(3))
            }
            out.writeInteger(UInt32(delta.versions.count))
            for v in delta.versions {
                try writeString(v.key.domain, &out)
                try writeString(v.key.name, &out)
                try writeVersionID(v.version.id, &out)
                out.writeInteger(v.version.generation)
                out.writeInteger(UInt32(v.secret.count))
                v.secret.withUnsafeBytes { _ = out.writeBytes($0) }
            }
            out.writeInteger(UInt32(delta.pskFingerprints.count))
            for fp in delta.pskFingerprints {
                try writeString(fp.node, &out)
                try writeString(fp.key.domain, &out)
                try writeString(fp.key.name, &out)
                out.writeInteger(UInt16(fp.fingerprint.count))
                fp.fingerprint.withUnsafeBytes { _ = out.writeBytes($0) }
                writeStamp(fp.stamp, &out)
            }
            out.writeInteger(UInt32(delta.certificates.count))
            for record in delta.certificates { try writeCertificate(record, features, &out) }
            try writeDeltaSections(delta, features, &out)
        case .syncRequest(let durableDigests):
            out.writeInteger(MessageType.syncRequest.rawValue)
            writeStamp(stamp, &out)
            // Optional tail: absent means "nothing durable held" (and is all 0.1 decodes).
            if let durableDigests, features.syncRequestDigests { writeIntegers(durableDigests, &out) }
        case .syncDone(let ready):
            out.writeInteger(MessageType.syncDone.rawValue)
            writeStamp(stamp, &out)
            out.writeInteger(UInt8(ready ? 1 : 0))
        }
    }

    private static func readReplication(_ type: MessageType, _ b: inout ByteBuffer, arena: SecretArena) throws(PeerWireError) -> PeerMessage {
        switch type {
        case .digest:
            let root: UInt64 = try read(&b, "digest")
            return .replication(.digest(root: root), stamp: try readStamp(&b))
        case .bucketDigests:
            let stamp = try readStamp(&b)
            let digests: [UInt64] = try readIntegers(&b, "bucket digest")
            guard b.readableBytes > 0 else { return .replication(.bucketDigests(digests, sections: nil), stamp: stamp) }
            var lists: [[UInt16]] = []
            for what in ["key version", "PSK fingerprint", "durable"] {
                let list: [UInt16] = try readIntegers(&b, "\(what) bucket digest")
                guard list.count == digests.count else {
                    throw .invalidField("\(list.count) \(what) bucket digests for \(digests.count) buckets")
                }
                lists.append(list)
            }
            return .replication(.bucketDigests(digests, sections: SectionDigests(keyVersions: lists[0], pskFingerprints: lists[1],
                                                                                 durable: lists[2])), stamp: stamp)
        case .delta:
            let stamp = try readStamp(&b)
            let purposeTag: UInt8 = try read(&b, "delta purpose")
            let purpose: DeltaPurpose
            switch purposeTag {
            case 0: purpose = .push
            case 1, 4:
                let count = try readCount(&b, minimumElementBytes: purposeTag == 4 ? 5 : 4, "repair buckets")
                var buckets: [Int] = []
                for _ in 0..<count {
                    let bucket: UInt32 = try read(&b, "bucket index")
                    guard bucket < 1 << 16 else { throw .invalidField("bucket index \(bucket)") }
                    buckets.append(Int(bucket))
                }
                var sections = Array(repeating: BucketSections.all, count: count)
                if purposeTag == 4 {
                    for i in 0..<count {
                        let mask: UInt8 = try read(&b, "repair section mask")
                        guard mask != 0, BucketSections.all.isSuperset(of: BucketSections(rawValue: mask)) else {
                            throw .invalidField("repair section mask \(mask)")
                        }
                        sections[i] = BucketSections(rawValue: mask)
                    }
                }
                purpose = .repair(buckets: buckets, sections: sections)
            case 2: purpose = .repairReply
            case 3: purpose = .sync
            default: throw .invalidField("delta purpose \(purposeTag)")
            }
            var delta = WireDelta()
            let versionCount = try readCount(&b, minimumElementBytes: 4 + 4 + 8 + 4 + 2 + 4 + 4, "key versions")
            for _ in 0..<versionCount {
                let domain = try readString(&b, "key domain")
                let name = try readString(&b, "key name")
                let id = try readVersionID(&b)
                let generation: UInt32 = try read(&b, "generation")
                let length: UInt32 = try read(&b, "secret length")
                guard length > 0, Int(length) <= SecretArena.maxSecretSize else { throw .invalidField("secret length \(length)") }
                guard b.readableBytes >= Int(length) else { throw .truncated("a key secret") }
                let secret: SecretBytes
                do {
                    secret = try b.readWithUnsafeReadableBytes { raw in
                        (Int(length), try SecretBytes.copy(of: UnsafeRawBufferPointer(rebasing: raw.prefix(Int(length))), in: arena))
                    }
                } catch {
                    throw .secretMemory("\(error)")
                }
                delta.versions.append(WireKeyVersion(key: KeyRef(domain: domain, name: name), version: KeyVersion(id: id, generation: generation), secret: secret))
            }
            let fpCount = try readCount(&b, minimumElementBytes: 2 + 2 + 2 + 2 + 12, "PSK fingerprints")
            for _ in 0..<fpCount {
                let node = try readString(&b, "fingerprint node")
                let domain = try readString(&b, "fingerprint domain")
                let name = try readString(&b, "fingerprint key")
                let length: UInt16 = try read(&b, "fingerprint length")
                guard length <= 64 else { throw .invalidField("fingerprint length \(length)") }
                guard let bytes = b.readBytes(length: Int(length)) else { throw .truncated("a fingerprint") }
                let stamp = try readStamp(&b)
                delta.pskFingerprints.append(PSKFingerprint(node: node, key: KeyRef(domain: domain, name: name), fingerprint: bytes, stamp: stamp))
            }
            let certCount = try readCount(&b, minimumElementBytes: 2 + 2 + 1 + 1 + 1, "certificate records")
            for _ in 0..<certCount { delta.certificates.append(try readCertificate(&b)) }
            try readDeltaSections(&b, into: &delta)
            return .replication(.delta(delta, purpose: purpose), stamp: stamp)
        case .syncRequest:
            let stamp = try readStamp(&b)
            guard b.readableBytes > 0 else { return .replication(.syncRequest(durableDigests: nil), stamp: stamp) }
            return .replication(.syncRequest(durableDigests: try readIntegers(&b, "durable bucket digest")), stamp: stamp)
        case .syncDone:
            let stamp = try readStamp(&b)
            let ready: UInt8 = try read(&b, "ready flag")
            guard ready <= 1 else { throw .invalidField("ready flag \(ready)") }
            return .replication(.syncDone(ready: ready == 1), stamp: stamp)
        case .hello, .swim:
            throw .unknownMessageType(type.rawValue)
        }
    }

    // MARK: SWIM

    private static func writeSWIM(_ m: SWIMMessage, _ out: inout ByteBuffer) throws(PeerWireError) {
        switch m {
        case .ping(let seq, let gossip):
            out.writeInteger(UInt8(1)); out.writeInteger(seq); try writeGossip(gossip, &out)
        case .pingRequest(let seq, let target, let address, let gossip):
            out.writeInteger(UInt8(2)); out.writeInteger(seq); try writeString(target, &out); try writeString(address, &out); try writeGossip(gossip, &out)
        case .ack(let seq, let target, let gossip):
            out.writeInteger(UInt8(3)); out.writeInteger(seq); try writeString(target, &out); try writeGossip(gossip, &out)
        case .nack(let seq, let target):
            out.writeInteger(UInt8(4)); out.writeInteger(seq); try writeString(target, &out)
        }
    }

    private static func readSWIM(_ b: inout ByteBuffer) throws(PeerWireError) -> SWIMMessage {
        let tag: UInt8 = try read(&b, "swim message kind")
        let seq: UInt64 = try read(&b, "swim sequence")
        switch tag {
        case 1: return .ping(sequence: seq, gossip: try readGossip(&b))
        case 2:
            let target = try readString(&b, "ping-request target")
            let address = try readString(&b, "ping-request address")
            return .pingRequest(sequence: seq, target: target, targetAddress: address, gossip: try readGossip(&b))
        case 3:
            let target = try readString(&b, "ack target")
            return .ack(sequence: seq, target: target, gossip: try readGossip(&b))
        case 4: return .nack(sequence: seq, target: try readString(&b, "nack target"))
        default: throw .invalidField("swim message kind \(tag)")
        }
    }

    private static func writeGossip(_ gossip: [GossipUpdate], _ out: inout ByteBuffer) throws(PeerWireError) {
        out.writeInteger(UInt32(gossip.count))
        for g in gossip {
            try writeString(g.node, &out)
            try writeString(g.address, &out)
            out.writeInteger(g.instance)
            out.writeInteger(g.incarnation)
            switch g.status {
            case .alive: out.writeInteger(UInt8(0))
            case .suspect: out.writeInteger(UInt8(1))
            case .dead: out.writeInteger(UInt8(2))
            }
        }
    }

    private static func readGossip(_ b: inout ByteBuffer) throws(PeerWireError) -> [GossipUpdate] {
        let count = try readCount(&b, minimumElementBytes: 2 + 2 + 8 + 8 + 1, "gossip updates")
        var result: [GossipUpdate] = []
        result.reserveCapacity(count)
        for _ in 0..<count {
            let node = try readString(&b, "gossip node")
            let address = try readString(&b, "gossip address")
            let instance: UInt64 = try read(&b, "gossip instance")
            let incarnation: UInt64 = try read(&b, "gossip incarnation")
            let statusTag: UInt8 = try read(&b, "gossip status")
            let status: MemberStatus
            switch statusTag {
            case 0: status = .alive
            case 1: status = .suspect
            case 2: status = .dead
            default: throw .invalidField("gossip status \(statusTag)")
            }
            result.append(GossipUpdate(node: node, address: address, instance: instance, incarnation: incarnation, status: status))
        }
        return result
    }

    // MARK: Certificates

    static let maxCertificateDER = 64 * 1024

    /// Sized first, then written in one `writeWithUnsafeMutableBytes`: field by field, the
    /// ~20 `ByteBuffer` writes of a record (each checking capacity, uniqueness and exclusive
    /// access) were ~130 ms of the ~500 ms a node spent answering a 100,000-certificate join
    /// (`perf record` of the answering node). A string too long for the wire is refused before
    /// anything is written.
    private static func writeCertificate(_ record: CertificateRecord, _ features: PeerWireFeatures, _ out: inout ByteBuffer) throws(PeerWireError) {
        // 0.1.0 refuses a certificate of length 0, which is what a compacted (revoked) record
        // holds: it gets the record as a bare tombstone, which it decodes and joins correctly.
        let content = record.content.flatMap { !$0.der.isEmpty || features.compactedCertificates ? $0 : nil }
        var size = try wireSize(of: record.id.domain) + wireSize(of: record.id.user) + 1 + record.id.sha256.count + 1 + 1
        if let content {
            size += try wireSize(of: content.name) + 4 + content.der.count + 8 + 8 + 2 + 1 + stampBytes + wireSize(of: content.origin)
            for jid in content.jids { size += try wireSize(of: jid) }
        }
        if let removal = record.removal { size += stampBytes + (try wireSize(of: removal.origin)) }
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { buffer in
            var w = RawFieldWriter(buffer)
            w.string(record.id.domain)
            w.string(record.id.user)
            w.integer(UInt8(record.id.sha256.count))
            w.bytes(record.id.sha256)
            if let content {
                w.integer(UInt8(1))
                w.string(content.name)
                w.integer(UInt32(content.der.count))
                w.bytes(content.der)
                w.integer(content.notBeforeMillis)
                w.integer(content.notAfterMillis)
                w.integer(UInt16(content.jids.count))
                for jid in content.jids { w.string(jid) }
                w.integer(UInt8(content.noCertManagement ? 1 : 0))
                w.stamp(content.added)
                w.string(content.origin)
            } else {
                w.integer(UInt8(0))
            }
            if let removal = record.removal {
                w.integer(removal.kind.rawValue)
                w.stamp(removal.stamp)
                w.string(removal.origin)
            } else {
                w.integer(UInt8(0))
            }
            precondition(w.offset == size, "certificate record sized \(size) bytes, wrote \(w.offset)")
            return size
        }
    }

    private static func readCertificate(_ b: inout ByteBuffer) throws(PeerWireError) -> CertificateRecord {
        let domain = try readString(&b, "certificate domain")
        let user = try readString(&b, "certificate user")
        let hashLength: UInt8 = try read(&b, "fingerprint length")
        guard hashLength == 32 else { throw .invalidField("certificate fingerprint length \(hashLength)") }
        guard let sha256 = b.readBytes(length: 32) else { throw .truncated("a certificate fingerprint") }
        let id = CertificateID(domain: domain, user: user, sha256: sha256)
        var content: CertificateContent?
        let hasContent: UInt8 = try read(&b, "certificate content flag")
        switch hasContent {
        case 0: break
        case 1:
            let name = try readString(&b, "certificate name")
            let derLength: UInt32 = try read(&b, "certificate length")
            // 0 only for a compacted record, checked against its removal below.
            guard Int(derLength) <= maxCertificateDER else { throw .invalidField("certificate length \(derLength)") }
            guard let der = b.readBytes(length: Int(derLength)) else { throw .truncated("a certificate") }
            let notBefore: Int64 = try read(&b, "not-before")
            let notAfter: Int64 = try read(&b, "not-after")
            let jidCount: UInt16 = try read(&b, "JID count")
            guard jidCount <= 64 else { throw .invalidField("JID count \(jidCount)") }
            var jids: [String] = []
            for _ in 0..<jidCount { jids.append(try readString(&b, "certificate JID")) }
            let flag: UInt8 = try read(&b, "no_cert_management flag")
            guard flag <= 1 else { throw .invalidField("no_cert_management flag \(flag)") }
            let added = try readStamp(&b)
            let origin = try readString(&b, "certificate origin")
            content = CertificateContent(name: name, der: der, notBeforeMillis: notBefore, notAfterMillis: notAfter,
                                         jids: jids, noCertManagement: flag == 1, added: added, origin: origin)
        default:
            throw .invalidField("certificate content flag \(hasContent)")
        }
        var removal: CertificateRemoval?
        let kindRaw: UInt8 = try read(&b, "removal kind")
        if kindRaw != 0 {
            guard let kind = RemovalKind(rawValue: kindRaw) else { throw .invalidField("removal kind \(kindRaw)") }
            let stamp = try readStamp(&b)
            let origin = try readString(&b, "removal origin")
            removal = CertificateRemoval(kind: kind, stamp: stamp, origin: origin)
        }
        if let content, content.der.isEmpty, removal?.kind != .revoked {
            throw .invalidField("certificate length 0 (only a revoked record drops its certificate)")
        }
        return CertificateRecord(id: id, content: content, removal: removal)
    }

    // MARK: Delta sections

    /// Optional parts of a delta after the certificate list, each `u8 tag | u32 count | entries`,
    /// present only when non-empty and only for a peer whose `features` decode them: a delta
    /// without them is byte for byte the 0.1.0 format (whose decoder refuses trailing bytes).
    enum DeltaSection: UInt8 {
        case tokenSequenceFloors = 1
    }

    private static func writeDeltaSections(_ delta: WireDelta, _ features: PeerWireFeatures, _ out: inout ByteBuffer) throws(PeerWireError) {
        if features.tokenSequenceFloors && !delta.tokenSequenceFloors.isEmpty {
            out.writeInteger(DeltaSection.tokenSequenceFloors.rawValue)
            out.writeInteger(UInt32(delta.tokenSequenceFloors.count))
            for floor in delta.tokenSequenceFloors {
                try writeString(floor.domain, &out)
                try writeString(floor.user, &out)
                out.writeInteger(floor.floor)
                writeStamp(floor.stamp, &out)
                try writeString(floor.origin, &out)
            }
        }
    }

    /// Strict like the rest of the codec: an unknown or repeated section is refused (a newer
    /// peer must leave out what this version did not announce).
    private static func readDeltaSections(_ b: inout ByteBuffer, into delta: inout WireDelta) throws(PeerWireError) {
        var seen: Set<UInt8> = []
        while b.readableBytes > 0 {
            let tag: UInt8 = try read(&b, "delta section")
            guard let section = DeltaSection(rawValue: tag) else { throw .invalidField("delta section \(tag)") }
            guard seen.insert(tag).inserted else { throw .invalidField("repeated delta section \(tag)") }
            switch section {
            case .tokenSequenceFloors:
                let count = try readCount(&b, minimumElementBytes: 2 + 2 + 8 + 12 + 2, "token sequence floors")
                guard count > 0 else { throw .invalidField("empty token sequence floor section") }
                for _ in 0..<count {
                    let domain = try readString(&b, "floor domain")
                    let user = try readString(&b, "floor user")
                    let floor: UInt64 = try read(&b, "floor")
                    let stamp = try readStamp(&b)
                    let origin = try readString(&b, "floor origin")
                    delta.tokenSequenceFloors.append(TokenSequenceFloor(domain: domain, user: user, floor: floor,
                                                                        stamp: stamp, origin: origin))
                }
            }
        }
    }

    // MARK: Primitives

    /// Never truncates: a string the receiver would refuse is refused here, before anything is sent.
    /// The layout is `RawFieldWriter.string`'s, the one the certificate records are written with;
    /// its bytes are copied from the string's contiguous memory (`writeBytes(s.utf8)` took
    /// ByteBuffer's generic sequence path: ~70 ms of the 155 ms a node spent encoding a
    /// 100,000-certificate state answer, `perf record`).
    private static func writeString(_ s: String, _ out: inout ByteBuffer) throws(PeerWireError) {
        let size = try wireSize(of: s)
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { buffer in
            var w = RawFieldWriter(buffer)
            w.string(s)
            return w.offset
        }
    }

    /// Strict: bytes that are not UTF-8 are refused, never replaced. Read in place, with the
    /// error text built only on failure and plain ASCII (nearly every domain, user, name and
    /// node) taken without the generic validator: a fresh node's join decodes ~600,000 strings,
    /// and the copy into an array, the interpolated `what` and the validator were ~210 ms of its
    /// cluster loop in `perf record`.
    private static func readString(_ b: inout ByteBuffer, _ what: String) throws(PeerWireError) -> String {
        guard let length = b.readInteger(as: UInt16.self) else { throw .truncated("\(what) length") }
        guard Int(length) <= maxStringBytes else { throw .invalidField("\(what) length \(length)") }
        guard b.readableBytes >= Int(length) else { throw .truncated(what) }
        let string = b.withUnsafeReadableBytes { readable -> String? in
            let bytes = UnsafeRawBufferPointer(rebasing: readable[..<Int(length)])
            if bytes.allSatisfy({ $0 < 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
            return String(validating: bytes, as: UTF8.self)
        }
        guard let string else { throw .invalidField("\(what) (not UTF-8)") }
        b.moveReaderIndex(forwardBy: Int(length))
        return string
    }

    /// A string's bytes on the wire (its u16 length prefix included); a string longer than the
    /// receiver accepts is refused here, never truncated.
    private static func wireSize(of s: String) throws(PeerWireError) -> Int {
        let count = s.utf8.count
        guard count <= maxStringBytes else { throw .fieldTooLong(bytes: count, limit: maxStringBytes) }
        return 2 + count
    }

    /// `writeStamp`'s bytes.
    static let stampBytes = MemoryLayout<UInt64>.size + MemoryLayout<UInt32>.size

    private static func writeStamp(_ s: HLCTimestamp, _ out: inout ByteBuffer) {
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: stampBytes) { buffer in
            var w = RawFieldWriter(buffer)
            w.stamp(s)
            return w.offset
        }
    }

    private static func readStamp(_ b: inout ByteBuffer) throws(PeerWireError) -> HLCTimestamp {
        let wall: UInt64 = try read(&b, "timestamp")
        let logical: UInt32 = try read(&b, "timestamp")
        return HLCTimestamp(wallMillis: wall, logical: logical)
    }

    private static func writeVersionID(_ id: VersionID, _ out: inout ByteBuffer) throws(PeerWireError) {
        writeStamp(id.created, &out)
        try writeString(id.origin, &out)
    }

    private static func readVersionID(_ b: inout ByteBuffer) throws(PeerWireError) -> VersionID {
        let created = try readStamp(&b)
        let origin = try readString(&b, "version origin")
        guard !origin.isEmpty else { throw .invalidField("empty version origin") }
        return VersionID(created: created, origin: origin)
    }

    private static func read<I: FixedWidthInteger>(_ b: inout ByteBuffer, _ what: String) throws(PeerWireError) -> I {
        guard let value = b.readInteger(as: I.self) else { throw .truncated(what) }
        return value
    }

    /// `u32 count | count × I`: the digest lists.
    private static func writeIntegers<I: FixedWidthInteger>(_ list: [I], _ out: inout ByteBuffer) {
        out.writeInteger(UInt32(list.count))
        for value in list { out.writeInteger(value) }
    }

    /// A list written by `writeIntegers`; `what` names one element ("bucket digest"), and its
    /// plural the list in errors.
    private static func readIntegers<I: FixedWidthInteger>(_ b: inout ByteBuffer, _ what: String) throws(PeerWireError) -> [I] {
        let count = try readCount(&b, minimumElementBytes: MemoryLayout<I>.size, "\(what)s")
        var list: [I] = []
        list.reserveCapacity(count)
        for _ in 0..<count { list.append(try read(&b, what)) }
        return list
    }

    /// A list count that the remaining bytes could actually hold.
    private static func readCount(_ b: inout ByteBuffer, minimumElementBytes: Int, _ what: String) throws(PeerWireError) -> Int {
        let count: UInt32 = try read(&b, "\(what) count")
        guard Int(count) * minimumElementBytes <= b.readableBytes else { throw .truncated(what) }
        return Int(count)
    }
}

/// Fills message-sized chunks with a delta's entries in the order they are added: what
/// `PeerFrameCodec.chunks(of:)` does with a whole delta, and a state answer streamed as the
/// connection drains does entry by entry. PSK fingerprints cost nothing (a handful, small).
public struct WireDeltaChunker: Sendable {
    public let limit: Int
    private var current = WireDelta()
    private var size = 0

    public init(limit: Int = PeerFrameCodec.deltaChunkBytes) {
        self.limit = limit
    }

    public mutating func add(_ fingerprint: PSKFingerprint) {
        current.pskFingerprints.append(fingerprint)
    }

    /// Each `add` returns the chunk the entry closed: the entries before it, when it did not fit
    /// beside them; the entry then starts the next chunk.
    public mutating func add(_ floor: TokenSequenceFloor) -> WireDelta? {
        let full = admit(cost: floor.domain.utf8.count + floor.user.utf8.count + floor.origin.utf8.count + 32)
        current.tokenSequenceFloors.append(floor)
        return full
    }

    public mutating func add(_ version: WireKeyVersion) -> WireDelta? {
        let full = admit(cost: version.secret.count + 128)
        current.versions.append(version)
        return full
    }

    public mutating func add(_ record: CertificateRecord) -> WireDelta? {
        let full = admit(cost: (record.content?.der.count ?? 0) + 256)
        current.certificates.append(record)
        return full
    }

    /// The last chunk, nil when nothing is left in it.
    public mutating func finish() -> WireDelta? {
        guard !current.isEmpty else { return nil }
        defer { current = WireDelta(); size = 0 }
        return current
    }

    private mutating func admit(cost: Int) -> WireDelta? {
        guard size + cost > limit, !current.isEmpty else {
            size += cost
            return nil
        }
        let full = current
        current = WireDelta()
        size = cost
        return full
    }
}

/// The codec's field layout (big-endian integers, u16-prefixed UTF-8 strings) written straight
/// into memory a `ByteBuffer` lent for it, which the caller sized exactly.
private struct RawFieldWriter {
    private let buffer: UnsafeMutableRawBufferPointer
    private(set) var offset = 0

    init(_ buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
    }

    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        precondition(offset + MemoryLayout<T>.size <= buffer.count, "field written past its record's size")
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
    }

    mutating func bytes(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { copy($0) }
    }

    mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            integer(UInt16(utf8.count))
            copy(UnsafeRawBufferPointer(utf8))
        }
    }

    mutating func stamp(_ stamp: HLCTimestamp) {
        integer(stamp.wallMillis)
        integer(stamp.logical)
    }

    private mutating func copy(_ source: UnsafeRawBufferPointer) {
        guard let from = source.baseAddress, source.count > 0 else { return }
        precondition(offset + source.count <= buffer.count, "field written past its record's size")
        (buffer.baseAddress! + offset).copyMemory(from: from, byteCount: source.count)
        offset += source.count
    }
}
