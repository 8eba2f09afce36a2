import NIOCore

/// Streams JSON straight into a `ByteBuffer`.
///
/// The hot route (`GET .../keys/{k}`) writes base64 key material directly from protected memory
/// into the response; going through `JSONSerialization`/`Codable` would leave extra copies of
/// the key in ordinary heap memory and cost most of the request's time.
public struct JSONWriter {
    public private(set) var buffer: ByteBuffer
    /// One entry per open object/array: true until its first member is written.
    private var isFirst: [Bool] = []
    /// A key was written; the next value belongs to it and takes no comma.
    private var afterKey = false

    public init(allocator: ByteBufferAllocator, capacity: Int = 256) {
        buffer = allocator.buffer(capacity: capacity)
    }

    private mutating func beforeValue() {
        if afterKey { afterKey = false; return }
        if let first = isFirst.last {
            if !first { buffer.writeInteger(UInt8(ascii: ",")) }
            isFirst[isFirst.count - 1] = false
        }
    }

    public mutating func beginObject() { beforeValue(); buffer.writeInteger(UInt8(ascii: "{")); isFirst.append(true) }
    public mutating func endObject() { isFirst.removeLast(); buffer.writeInteger(UInt8(ascii: "}")) }
    public mutating func beginArray() { beforeValue(); buffer.writeInteger(UInt8(ascii: "[")); isFirst.append(true) }
    public mutating func endArray() { isFirst.removeLast(); buffer.writeInteger(UInt8(ascii: "]")) }

    public mutating func key(_ name: String) {
        beforeValue()
        writeEscaped(name)
        buffer.writeInteger(UInt8(ascii: ":"))
        afterKey = true
    }

    public mutating func string(_ value: String) { beforeValue(); writeEscaped(value) }
    public mutating func int<I: BinaryInteger>(_ value: I) { beforeValue(); buffer.writeString(String(value)) }
    public mutating func bool(_ value: Bool) { beforeValue(); buffer.writeString(value ? "true" : "false") }
    public mutating func null() { beforeValue(); buffer.writeString("null") }
    public mutating func strings(_ values: [String]) { beginArray(); for v in values { string(v) }; endArray() }

    /// A string value whose bytes `body` writes in place (they must need no escaping, e.g.
    /// base64); `body` returns how many of the `length` bytes it wrote.
    public mutating func rawString(length: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) {
        beforeValue()
        buffer.writeInteger(UInt8(ascii: "\""))
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) {
            body(UnsafeMutableRawBufferPointer(rebasing: $0.prefix(length)))
        }
        buffer.writeInteger(UInt8(ascii: "\""))
    }

    public mutating func newline() { buffer.writeInteger(UInt8(ascii: "\n")) }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private mutating func writeEscaped(_ s: String) {
        buffer.writeInteger(UInt8(ascii: "\""))
        // Almost every string (names, ids, dates) needs no escaping: copy it in one go.
        if !s.utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C || $0 == 0x7F }) {
            buffer.writeString(s)
            buffer.writeInteger(UInt8(ascii: "\""))
            return
        }
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "\""): buffer.writeStaticString("\\\"")
            case UInt8(ascii: "\\"): buffer.writeStaticString("\\\\")
            case UInt8(ascii: "\n"): buffer.writeStaticString("\\n")
            case UInt8(ascii: "\r"): buffer.writeStaticString("\\r")
            case UInt8(ascii: "\t"): buffer.writeStaticString("\\t")
            case 0..<0x20, 0x7F:
                buffer.writeStaticString("\\u00")
                buffer.writeInteger(JSONWriter.hexDigits[Int(byte >> 4)])
                buffer.writeInteger(JSONWriter.hexDigits[Int(byte & 0xF)])
            default: buffer.writeInteger(byte)
            }
        }
        buffer.writeInteger(UInt8(ascii: "\""))
    }
}
