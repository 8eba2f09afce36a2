import CSodium

/// An immutable secret held in a `SecretArena` slot; the slot is zeroed and reused when the
/// last reference goes away.
///
/// Deliberately not `CustomStringConvertible`/`Equatable`: printing or `==` would be the easy
/// way to leak or time-compare a key. Use `withUnsafeBytes` and `constantTimeEquals`.
public final class SecretBytes: Sendable {
    /// Written once in `init` before the object is shared, read-only afterwards; the slot
    /// belongs to this object alone until `deinit`, so concurrent reads are safe.
    private struct Slot: @unchecked Sendable { let pointer: UnsafeMutableRawPointer }
    private let slot: Slot
    private let slotSize: Int
    private let arena: SecretArena
    public let count: Int

    private init(arena: SecretArena, count: Int, fill: (UnsafeMutableRawBufferPointer) throws(SecretMemoryError) -> Void) throws(SecretMemoryError) {
        let (pointer, slotSize) = try arena.allocateSlot(count: count)
        self.slot = Slot(pointer: pointer)
        self.slotSize = slotSize
        self.arena = arena
        self.count = count
        do {
            try fill(UnsafeMutableRawBufferPointer(start: pointer, count: count))
        } catch {
            arena.releaseSlot(pointer, slotSize: slotSize)
            throw error
        }
    }

    /// `count` bytes from libsodium's CSPRNG (`randombytes_buf`).
    public static func random(count: Int, in arena: SecretArena) throws(SecretMemoryError) -> SecretBytes {
        try SecretBytes(arena: arena, count: count) { buffer in
            randombytes_buf(buffer.baseAddress!, buffer.count)
        }
    }

    /// `count` bytes written in place by `fill`, so secret-derived data (such as a prepared
    /// response carrying a key in base64) never passes through ordinary heap memory.
    public static func filled(count: Int, in arena: SecretArena,
                              _ fill: (UnsafeMutableRawBufferPointer) -> Void) throws(SecretMemoryError) -> SecretBytes {
        try SecretBytes(arena: arena, count: count) { buffer in fill(buffer) }
    }

    /// A protected copy of `bytes`. The caller remains responsible for zeroing its own buffer.
    public static func copy(of bytes: UnsafeRawBufferPointer, in arena: SecretArena) throws(SecretMemoryError) -> SecretBytes {
        try SecretBytes(arena: arena, count: bytes.count) { buffer in
            if let source = bytes.baseAddress { buffer.baseAddress!.copyMemory(from: source, byteCount: bytes.count) }
        }
    }

    deinit {
        arena.releaseSlot(slot.pointer, slotSize: slotSize)
    }

    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: slot.pointer, count: count))
    }

    /// Compares contents in time independent of where they differ (`sodium_memcmp`).
    public func constantTimeEquals(_ other: SecretBytes) -> Bool {
        guard count == other.count else { return false }
        return sodium_memcmp(slot.pointer, other.slot.pointer, count) == 0
    }

    public func constantTimeEquals(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard count == bytes.count, let base = bytes.baseAddress else { return count == 0 && bytes.count == 0 }
        return sodium_memcmp(slot.pointer, base, count) == 0
    }

    /// Standard base64 of the secret, written straight into `output` (no intermediate `String`).
    /// Returns the number of bytes written; `output` needs `SecretBytes.base64Length(count)` bytes.
    public func writeBase64(into output: UnsafeMutableRawBufferPointer) -> Int {
        let needed = SecretBytes.base64Length(count)
        precondition(output.count >= needed, "base64 output buffer too small")
        // Constant-time like sodium_bin2base64 (no secret-dependent branches or table lookups),
        // but 3 bytes -> 4 characters at a time straight into the output: about 4x fewer
        // instructions per byte on the get-key hot path, and no scratch copy to wipe.
        let input = UnsafeRawBufferPointer(start: slot.pointer, count: count)
        var o = 0, i = 0
        while i + 3 <= count {
            let n = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8 | UInt32(input[i + 2])
            output[o] = Self.base64Char(n >> 18)
            output[o + 1] = Self.base64Char((n >> 12) & 63)
            output[o + 2] = Self.base64Char((n >> 6) & 63)
            output[o + 3] = Self.base64Char(n & 63)
            i += 3; o += 4
        }
        let rest = count - i // public length: branching on it leaks nothing
        if rest > 0 {
            let n = UInt32(input[i]) << 16 | (rest == 2 ? UInt32(input[i + 1]) << 8 : 0)
            output[o] = Self.base64Char(n >> 18)
            output[o + 1] = Self.base64Char((n >> 12) & 63)
            output[o + 2] = rest == 2 ? Self.base64Char((n >> 6) & 63) : UInt8(ascii: "=")
            output[o + 3] = UInt8(ascii: "=")
        }
        return needed
    }

    /// Maps 0..<64 to the standard alphabet with arithmetic masks only.
    @inline(__always)
    static func base64Char(_ v: UInt32) -> UInt8 {
        var c = v &+ 65
        c &+= ((25 &- v) >> 8) & 6
        c &-= ((51 &- v) >> 8) & 75
        c &-= ((61 &- v) >> 8) & 15
        c &+= ((62 &- v) >> 8) & 3
        return UInt8(truncatingIfNeeded: c)
    }

    public static func base64Length(_ count: Int) -> Int { (count + 2) / 3 * 4 }

    /// A keyed BLAKE2b fingerprint of the secret (libsodium `crypto_generichash`), for comparing
    /// secrets across nodes without revealing them.
    public func keyedFingerprint(key: [UInt8], length: Int = 32) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        key.withUnsafeBufferPointer { k in
            _ = crypto_generichash(&out, length, slot.pointer.assumingMemoryBound(to: UInt8.self), UInt64(count), k.baseAddress, k.count)
        }
        return out
    }
}

/// Unkeyed BLAKE2b over public data (used to derive fingerprint keys).
public func blake2b(_ message: [UInt8], length: Int = 32) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: length)
    _ = crypto_generichash(&out, length, message, UInt64(message.count), nil, 0)
    return out
}
