extension JSONValue {
    /// The first member named `key` of an object (nil for other values or a missing member).
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var intValue: Int? { if case .number(_, let int) = self { return int }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var members: [(key: String, value: JSONValue)]? { if case .object(let m) = self { return m }; return nil }

    /// The path (`certs[2].user`) of the first object member that repeats a name within its
    /// object, anywhere in the document; nil when every name is unique.
    public func firstDuplicateMember(path: String = "") -> String? {
        switch self {
        case .object(let members):
            var seen = Set<String>()
            for (key, value) in members {
                let child = path.isEmpty ? key : "\(path).\(key)"
                if !seen.insert(key).inserted { return child }
                if let found = value.firstDuplicateMember(path: child) { return found }
            }
            return nil
        case .array(let elements):
            for (index, element) in elements.enumerated() {
                if let found = element.firstDuplicateMember(path: "\(path)[\(index)]") { return found }
            }
            return nil
        default:
            return nil
        }
    }
}

extension JSONValue: CustomStringConvertible {
    /// Compact JSON in document order (numbers as written).
    public var description: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let raw, _): return raw
        case .string(let s): return JSONValue.quoted(s)
        case .array(let a): return "[" + a.map(\.description).joined(separator: ",") + "]"
        case .object(let m): return "{" + m.map { "\(JSONValue.quoted($0.key)):\($0.value.description)" }.joined(separator: ",") + "}"
        }
    }

    /// Scalars as plain text (strings without quotes), containers as compact JSON: for tables.
    public var text: String {
        if case .string(let s) = self { return s }
        return description
    }

    /// A JSON string literal for `s` (control characters escaped, nothing else).
    public static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
