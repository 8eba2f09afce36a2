internal import COpenSSL
internal import COpenSSLShims

/// OpenSSL keeps errors in a per-thread queue; NIO event loops run many connections on one thread,
/// so every failing call must drain it or the next connection reports this one's error.
enum OpenSSLErrors {
    /// Pops every queued error and returns their strings joined, or `fallback` when the queue was empty.
    static func drain(fallback: String) -> String {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            let message = sanitize(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            if messages.count < 4 && !messages.contains(message) { messages.append(message) }
        }
        return messages.isEmpty ? fallback : messages.joined(separator: "; ")
    }

    static func clear() { ERR_clear_error() }

    /// Human text for an X509_V_ERR_* code, e.g. "certificate has expired".
    static func verifyResultString(_ result: Int) -> String {
        guard let text = X509_verify_cert_error_string(result) else { return "verify error \(result)" }
        return String(cString: text)
    }
}

/// Keeps operator messages on one line and printable whatever bytes a peer's certificate contains.
func sanitize(_ text: String) -> String {
    String(String.UnicodeScalarView(text.unicodeScalars.map { ($0.value >= 0x20 && $0.value < 0x7f) ? $0 : "?" }))
}

enum X509Names {
    /// The subjectAltName dNSName entries of `cert`, in certificate order.
    static func dnsNames(_ cert: OpaquePointer) -> [String] {
        var status: Int32 = 0
        guard let names = ks_X509_get_subject_alt_names_checked(cert, &status) else { return [] }
        defer { ks_general_names_free(names) }
        var result: [String] = []
        let count = ks_general_names_count(names)
        var index: Int32 = 0
        while index < count {
            var data: UnsafePointer<UInt8>? = nil
            var length: Int32 = 0
            if ks_general_name_dns_at(names, index, &data, &length) == 1, let data, length >= 0 {
                let bytes = UnsafeBufferPointer(start: data, count: Int(length))
                result.append(sanitize(String(decoding: bytes, as: UTF8.self)))
            }
            index += 1
        }
        return result
    }
}
