import LocalAPI
import NIOCore
import ReplicatedStore
import SecretMemory

/// Get-key answers kept ready: per key, the JSON body (with the key material in base64) in the
/// secret arena, so a get-key copies bytes instead of encoding them.
///
/// Why hand-written caching: in the `bench/run.sh get-key` profile (32 connections, release),
/// building the body on every request — JSON assembly, base64 of a 2 KiB key out of locked memory,
/// version ids and ISO 8601 dates formatted anew — was 22 % of keystored's CPU per get-key
/// (`APIRouter.getKey`; base64 alone 7 %), while the body only changes when the key's versions do.
///
/// Secrets stay where they belong: the body is written straight into a `SecretBytes` (locked,
/// guarded, zeroed when released) — the JSON around the key goes through a heap buffer, the key's
/// base64 never does. An entry is dropped (and its slot zeroed) whenever the key's versions
/// change — rotation, merge from a peer, expiry, PSK reload, the join decision — by `NodeState`
/// in the same lock that changes them (`invalidate`), and it is also only valid until the first
/// expiry of a version it shows (`validUntilMillis`), so it never shows a version past its grace
/// period even before housekeeping prunes it.
struct PreparedResponses {
    struct Entry {
        let body: SecretBytes
        /// Wall-clock millisecond from which the body is stale (a version in it expires).
        let validUntilMillis: UInt64
    }

    /// Locked memory is scarce (RLIMIT_MEMLOCK, often 8 MiB): the cache holds at most this many
    /// body bytes (about 256 bodies of a 2 KiB key) and drops an entry when full. The keys an
    /// XMPP server reads on every login are few; a scan over thousands of keys just rebuilds.
    static let maxBytes = 1 << 20

    private var entries: [KeyRef: Entry] = [:]
    private var bytes = 0
    /// Bumped by every invalidation: a body built from state read before a change is not stored
    /// after it (building happens outside the state lock).
    private(set) var generation: UInt64 = 0

    func body(for ref: KeyRef, nowMillis: UInt64) -> SecretBytes? {
        guard let entry = entries[ref], nowMillis < entry.validUntilMillis else { return nil }
        return entry.body
    }

    mutating func store(_ body: SecretBytes, for ref: KeyRef, validUntilMillis: UInt64, builtAt generation: UInt64) {
        guard generation == self.generation, body.count <= Self.maxBytes else { return }
        if let old = entries.removeValue(forKey: ref) { bytes -= old.body.count }
        while bytes + body.count > Self.maxBytes, let victim = entries.first {
            entries.removeValue(forKey: victim.key)
            bytes -= victim.value.body.count
        }
        entries[ref] = Entry(body: body, validUntilMillis: validUntilMillis)
        bytes += body.count
    }

    /// The key's versions changed (or may have): its prepared body must not be served again.
    mutating func invalidate(_ ref: KeyRef) {
        generation &+= 1
        if let old = entries.removeValue(forKey: ref) { bytes -= old.body.count }
    }

    mutating func invalidate<Refs: Sequence>(_ refs: Refs) where Refs.Element == KeyRef {
        for ref in refs { invalidate(ref) }
    }

    mutating func invalidateAll() {
        generation &+= 1
        entries.removeAll()
        bytes = 0
    }

    var count: Int { entries.count }

    /// `GET /v1/domains/{d}/keys/{k}` body: `{"domain","name","type","versions":[{"id","key",
    /// "primary","created"[,"expires"]}]}` plus a newline, primary first (DESIGN.md "HTTP routes").
    /// Returns the body and the millisecond it stops being valid, or nil when there is nothing
    /// to serve (`lookup` is `.notFound` / `.notReady`).
    static func build(_ ref: KeyRef, _ lookup: KeyLookup, arena: SecretArena) throws(SecretMemoryError) -> (SecretBytes, UInt64)? {
        struct Version {
            var id: String
            var secret: SecretBytes
            var primary: Bool
            var createdMillis: UInt64
            var expiresMillis: UInt64?
        }
        let type: String
        let versions: [Version]
        switch lookup {
        case .notFound, .notReady:
            return nil
        case .file(let fileKey):
            type = "file"
            versions = [Version(id: fileKey.versionID, secret: fileKey.secret, primary: true,
                                createdMillis: fileKey.loadedAtMillis, expiresMillis: nil)]
        case .ram(let found):
            type = "ram"
            versions = found.map { view, secret in
                Version(id: view.version.id.description, secret: secret, primary: view.isPrimary,
                        createdMillis: view.version.id.created.wallMillis, expiresMillis: view.expiresAtMillis)
            }
        }
        // The JSON with a placeholder where each key goes; the key's base64 is written only into
        // the protected copy.
        let size = versions.reduce(128) { $0 + SecretBytes.base64Length($1.secret.count) + 160 }
        var json = JSONWriter(allocator: ByteBufferAllocator(), capacity: size)
        var holes: [(offset: Int, secret: SecretBytes)] = []
        json.beginObject()
        json.key("domain"); json.string(ref.domain)
        json.key("name"); json.string(ref.name)
        json.key("type"); json.string(type)
        json.key("versions"); json.beginArray()
        for version in versions {
            json.beginObject()
            json.key("id"); json.string(version.id)
            json.key("key")
            holes.append((json.buffer.writerIndex + 1, version.secret)) // after the opening quote
            json.rawString(length: SecretBytes.base64Length(version.secret.count)) { placeholder in
                placeholder.initializeMemory(as: UInt8.self, repeating: 0)
                return placeholder.count
            }
            json.key("primary"); json.bool(version.primary)
            json.key("created"); json.string(iso8601(millis: version.createdMillis))
            if let expires = version.expiresMillis { json.key("expires"); json.string(iso8601(millis: expires)) }
            json.endObject()
        }
        json.endArray()
        json.endObject(); json.newline()
        let skeleton = json.buffer
        let body = try SecretBytes.filled(count: skeleton.readableBytes, in: arena) { target in
            skeleton.withUnsafeReadableBytes { target.copyMemory(from: $0) }
            for (offset, secret) in holes {
                let length = SecretBytes.base64Length(secret.count)
                _ = secret.writeBase64(into: UnsafeMutableRawBufferPointer(rebasing: target[offset..<(offset + length)]))
            }
        }
        let validUntil = versions.compactMap(\.expiresMillis).min() ?? UInt64.max
        return (body, validUntil)
    }
}
