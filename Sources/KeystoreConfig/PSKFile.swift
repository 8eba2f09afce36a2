#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads pre-shared-key files without letting the secret escape: plain POSIX I/O into one
/// buffer we own (no Foundation Data/String copies), zeroed with explicit_bzero before it is
/// freed, and contents never placed in an error. The same checks run at config load and at
/// every reload, so a file that became world-readable is caught either way.
public enum PSKFile {
    /// A PSK is a short token; anything bigger is a wrong path, and refusing it bounds memory.
    public static let maxSize = 1 << 20

    /// Calls `body` with the file's bytes minus surrounding ASCII whitespace. The buffer is
    /// only valid inside `body` and is wiped afterwards, so `body` must copy into secure
    /// memory if it needs the key later. `field` is the config path used in error messages.
    ///
    /// Throws `ConfigError` for file problems (missing, not regular, group/other mode bits,
    /// unreadable, empty after trimming, too large) and rethrows whatever `body` throws.
    public static func withTrimmedContents<R>(
        path: String, field: String, _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        // O_NONBLOCK: a FIFO at this path must not hang startup; it is rejected below.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        if fd < 0 {
            let err = errno
            if err == ENOENT || err == ENOTDIR { throw ConfigError.pskMissing(field: field, path: path) }
            throw ConfigError.pskUnreadable(field: field, path: path, reason: errnoString(err))
        }
        defer { _ = close(fd) }

        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw ConfigError.pskUnreadable(field: field, path: path, reason: errnoString(errno))
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw ConfigError.pskNotRegularFile(field: field, path: path)
        }
        let mode = UInt32(info.st_mode) & 0o7777
        guard mode & 0o077 == 0 else {
            throw ConfigError.pskInsecureMode(field: field, path: path, mode: mode)
        }
        let size = Int(info.st_size)
        guard size <= maxSize else { throw ConfigError.pskTooLarge(field: field, path: path, limit: maxSize) }

        // One spare byte detects a file that grew between fstat and read.
        let capacity = size + 1
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
        defer {
            if let base = buffer.baseAddress { explicit_bzero(base, capacity) }
            buffer.deallocate()
        }
        var filled = 0
        while filled < capacity {
            guard let base = buffer.baseAddress else { break }
            let n = read(fd, base + filled, capacity - filled)
            if n < 0 {
                let err = errno
                if err == EINTR { continue }
                throw ConfigError.pskUnreadable(field: field, path: path, reason: errnoString(err))
            }
            if n == 0 { break }
            filled += n
        }
        guard filled < capacity else {
            throw ConfigError.pskUnreadable(field: field, path: path, reason: "file changed while being read; retry")
        }

        var start = 0
        var end = filled
        while start < end && isASCIIWhitespace(buffer[start]) { start += 1 }
        while end > start && isASCIIWhitespace(buffer[end - 1]) { end -= 1 }
        guard end > start else { throw ConfigError.pskEmpty(field: field, path: path) }
        return try body(UnsafeRawBufferPointer(rebasing: buffer[start..<end]))
    }

    /// Load-time check: the file passes every rule above; the contents are wiped unused.
    static func validate(path: String, field: String) throws(ConfigError) {
        do {
            try withTrimmedContents(path: path, field: field) { _ in }
        } catch let error as ConfigError {
            throw error
        } catch {
            // The body above cannot throw; keep a typed error anyway rather than trapping.
            throw ConfigError.pskUnreadable(field: field, path: path, reason: "unexpected error")
        }
    }

    static func isASCIIWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || (byte >= 0x09 && byte <= 0x0D)
    }
}

func errnoString(_ err: Int32) -> String {
    guard let message = strerror(err) else { return "errno \(err)" }
    return String(cString: message)
}
