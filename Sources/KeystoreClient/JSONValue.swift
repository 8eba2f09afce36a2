import Foundation

/// A lossless-enough JSON tree so typed results tolerate fields the daemon adds later
/// (the v1 contract says "extend, do not rename") and fields whose JSON type we do not pin down.
public enum JSONValue: Sendable, Equatable, Decodable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    /// Parses a whole response body.
    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        do {
            return try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch {
            throw KeystoreClientError.malformedResponse("response body is not valid JSON")
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case let .object(o) = self { return o[key] }
        return nil
    }

    public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
    public var boolValue: Bool? { if case let .bool(b) = self { return b }; return nil }
    public var arrayValue: [JSONValue]? { if case let .array(a) = self { return a }; return nil }
    public var objectValue: [String: JSONValue]? { if case let .object(o) = self { return o }; return nil }
    public var intValue: Int? {
        if case let .number(d) = self, d == d.rounded(), abs(d) < 9.0e15 { return Int(d) }
        return nil
    }

    /// Scalars as plain text (no quotes), containers as compact JSON; for human-readable tables.
    public var text: String {
        switch self {
        case .string(let s): return s
        default: return description
        }
    }

    /// Compact JSON with sorted keys.
    public var description: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let d):
            if d == d.rounded(), abs(d) < 9.0e15 { return String(Int64(d)) }
            return String(d)
        case .string(let s): return Self.quote(s)
        case .array(let a): return "[" + a.map(\.description).joined(separator: ",") + "]"
        case .object(let o):
            return "{" + o.keys.sorted().map { "\(Self.quote($0)):\(o[$0]?.description ?? "null")" }
                .joined(separator: ",") + "}"
        }
    }

    private static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}

/// Field access that names the missing field, so a contract drift is diagnosable from one line.
struct FieldReader {
    let object: [String: JSONValue]
    let context: String

    init(_ value: JSONValue, _ context: String) throws {
        guard let o = value.objectValue else {
            throw KeystoreClientError.malformedResponse("\(context) is not a JSON object")
        }
        object = o
        self.context = context
    }

    func string(_ key: String) throws -> String {
        guard let s = object[key]?.stringValue else { throw missing(key, "a string") }
        return s
    }
    func optionalString(_ key: String) -> String? { object[key]?.stringValue }
    /// Strings or numbers, rendered as text (ids and timestamps whose JSON type is the daemon's call).
    func scalarText(_ key: String) throws -> String {
        switch object[key] {
        case .string(let s)?: return s
        case let v? where v.intValue != nil || v.boolValue != nil: return v.description
        case .number(let d)?: return String(d)
        default: throw missing(key, "a string or number")
        }
    }
    func optionalScalarText(_ key: String) -> String? { try? scalarText(key) }
    func bool(_ key: String) throws -> Bool {
        guard let b = object[key]?.boolValue else { throw missing(key, "a boolean") }
        return b
    }
    func int(_ key: String) throws -> Int {
        guard let i = object[key]?.intValue else { throw missing(key, "an integer") }
        return i
    }
    func array(_ key: String) throws -> [JSONValue] {
        guard let a = object[key]?.arrayValue else { throw missing(key, "an array") }
        return a
    }

    private func missing(_ key: String, _ kind: String) -> KeystoreClientError {
        .malformedResponse("field \"\(key)\" of \(context) is missing or not \(kind)")
    }
}
