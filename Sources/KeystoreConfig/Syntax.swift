#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Lexical rules for names and addresses. Kept byte-based (no regex engine) so the rules are
/// exact and the same on every platform.
enum Syntax {
    private static func isLowerAlnum(_ c: UInt8) -> Bool {
        (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39)
    }

    /// `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`: node names become `DNS:NAME` in certificates.
    static func isDNSLabel<S: Collection>(_ bytes: S) -> Bool where S.Element == UInt8 {
        guard let first = bytes.first, bytes.count <= 63 else { return false }
        var last = first
        for c in bytes {
            guard isLowerAlnum(c) || c == 0x2D else { return false }
            last = c
        }
        return isLowerAlnum(first) && isLowerAlnum(last)
    }

    static func isDNSLabel(_ s: String) -> Bool { isDNSLabel(Array(s.utf8)) }

    /// Lowercase DNS name of one or more labels, at most 253 bytes, no trailing dot.
    static func isDomainName(_ s: String) -> Bool {
        let bytes = Array(s.utf8)
        guard !bytes.isEmpty, bytes.count <= 253 else { return false }
        return bytes.split(separator: 0x2E, omittingEmptySubsequences: false).allSatisfy { isDNSLabel($0) }
    }

    /// `[A-Za-z0-9_.-]{1,128}`, not starting with '.' (names end up in URLs and file-like listings).
    static func isKeyName(_ s: String) -> Bool {
        let bytes = Array(s.utf8)
        guard let first = bytes.first, bytes.count <= 128, first != 0x2E else { return false }
        return bytes.allSatisfy { c in
            (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39)
                || c == 0x5F || c == 0x2E || c == 0x2D
        }
    }

    /// `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`: the cluster name travels in every peer hello and must
    /// arrive exactly as configured (no control characters, nothing a frame would have to cut).
    static func isClusterName(_ s: String) -> Bool {
        let bytes = Array(s.utf8)
        guard let first = bytes.first, bytes.count <= 64, first != 0x2E, first != 0x2D, first != 0x5F else { return false }
        return isKeyName(s)
    }

    /// Octal permission string of 3 or 4 digits, at most 0777 (no setuid/sticky bits on a socket).
    static func parseMode(_ s: String) -> UInt32? {
        let bytes = Array(s.utf8)
        guard bytes.count == 3 || bytes.count == 4 else { return nil }
        var value: UInt32 = 0
        for c in bytes {
            guard c >= 0x30 && c <= 0x37 else { return nil }
            value = value * 8 + UInt32(c - 0x30)
        }
        return value <= 0o777 ? value : nil
    }

    /// `host:port` or `[v6]:port`. Returns the host without brackets.
    static func parsePeer(_ s: String, field: String) throws(ConfigError) -> (host: String, port: Int) {
        let host: Substring
        let portText: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else {
                throw .badPeer(field: field, value: s, reason: "missing ']' after IPv6 address")
            }
            host = s[s.index(after: s.startIndex)..<close]
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":") else { throw .badPeer(field: field, value: s, reason: "missing ':port' after ']'") }
            portText = rest.dropFirst()
            var addr = in6_addr()
            guard inet_pton(AF_INET6, String(host), &addr) == 1 else {
                throw .badPeer(field: field, value: s, reason: "'\(host)' is not an IPv6 address")
            }
        } else {
            guard let colon = s.lastIndex(of: ":") else {
                throw .badPeer(field: field, value: s, reason: "missing ':port'")
            }
            host = s[..<colon]
            portText = s[s.index(after: colon)...]
            if host.contains(":") {
                throw .badPeer(field: field, value: s, reason: "IPv6 addresses must be in brackets")
            }
            guard !host.isEmpty else { throw .badPeer(field: field, value: s, reason: "missing host") }
            let validHost = host.utf8.allSatisfy { c in
                (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39)
                    || c == 0x2E || c == 0x2D || c == 0x5F
            }
            guard validHost else {
                throw .badPeer(field: field, value: s, reason: "host may only contain letters, digits, '.', '-' and '_'")
            }
        }
        guard !portText.isEmpty, portText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw .badPeer(field: field, value: s, reason: "port must be a decimal number")
        }
        guard portText.count <= 5, let port = Int(portText), (1...65535).contains(port) else {
            throw .portOutOfRange(field: field, value: String(portText))
        }
        return (String(host), port)
    }
}

/// Lexical path handling. Deliberately does not resolve symlinks or `..` (which would need
/// the filesystem and can change meaning across symlinks); it only anchors relative paths.
enum PathUtil {
    static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func absolute(_ path: String, relativeTo base: String) -> String {
        normalize(path.hasPrefix("/") ? path : base + "/" + path)
    }

    /// Drops empty and "." components so `dir/./x` and `dir//x` compare equal (the socket
    /// uniqueness check and the 107-byte limit see the real path).
    static func normalize(_ path: String) -> String {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        return "/" + parts.joined(separator: "/")
    }

    static func parent(of path: String) -> String {
        let normalized = normalize(path)
        guard let slash = normalized.lastIndex(of: "/"), slash != normalized.startIndex else { return "/" }
        return String(normalized[..<slash])
    }
}
