import FoundationEssentials

/// A JSON body whose accepted member names are known, so a misspelt field is refused instead
/// of silently ignored (the same rule the config loader applies).
public protocol StrictlyDecodable: Decodable {
    /// Every member name the top-level object may carry.
    static var fieldNames: [String] { get }
}

/// Why a body was refused; `description` names the field and says what was expected.
public struct BodyDecodingError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public enum StrictJSON {
    /// Decodes `bytes` as `T`, refusing what Foundation's decoder would let through: syntax
    /// it tolerates, duplicate member names (anywhere), unknown top-level members, and a
    /// top level that is not an object. Types are then checked by `JSONDecoder`, which refuses
    /// `1` for a boolean and `"1"` for a number.
    public static func decode<T: StrictlyDecodable>(_ type: T.Type, from bytes: [UInt8]) throws(BodyDecodingError) -> T {
        let document: JSONValue
        do { document = try JSONReader.parse(bytes) } catch {
            throw BodyDecodingError("body is not valid JSON (\(error.description))")
        }
        guard let members = document.members else {
            throw BodyDecodingError("body must be a JSON object, not \(document.typeName)")
        }
        if let duplicate = document.firstDuplicateMember() {
            throw BodyDecodingError("field \"\(duplicate)\" appears twice")
        }
        let allowed = Set(T.fieldNames)
        if let unknown = members.first(where: { !allowed.contains($0.key) }) {
            throw BodyDecodingError("unknown field \"\(unknown.key)\"; allowed: \(T.fieldNames.joined(separator: ", "))")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch let error as DecodingError {
            throw BodyDecodingError(describe(error))
        } catch {
            throw BodyDecodingError("body cannot be decoded: \(error)")
        }
    }

    /// "field "x": expected a boolean" rather than Foundation's debug text (also used by the
    /// client for answers that do not fit the contract).
    public static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [CodingKey]) -> String {
            var out = ""
            for key in keys {
                if let index = key.intValue { out += "[\(index)]" } else { out += out.isEmpty ? key.stringValue : ".\(key.stringValue)" }
            }
            return out
        }
        func expected(_ type: Any.Type) -> String {
            switch type {
            case is Bool.Type: return "true or false"
            case is String.Type: return "a string"
            case is Int.Type, is Int64.Type, is UInt64.Type, is UInt32.Type, is Int32.Type: return "an integer"
            case is Double.Type: return "a number"
            default:
                let name = "\(type)"
                if name.hasPrefix("Array") { return "an array" }
                if name.hasPrefix("Dictionary") { return "an object" }
                return "a valid value"
            }
        }
        switch error {
        case .typeMismatch(let type, let context):
            return "field \"\(path(context.codingPath))\": expected \(expected(type))"
        case .valueNotFound(let type, let context):
            return "field \"\(path(context.codingPath))\": expected \(expected(type)), found null"
        case .keyNotFound(let key, let context):
            return "missing field \"\(path(context.codingPath + [key]))\""
        case .dataCorrupted(let context):
            let at = path(context.codingPath)
            return at.isEmpty ? context.debugDescription : "field \"\(at)\": \(context.debugDescription)"
        @unknown default:
            return "body cannot be decoded"
        }
    }
}

extension KeyedDecodingContainer {
    /// For nested objects of strictly decoded bodies: refuses member names outside `Key`.
    public func rejectUnknownMembers<Allowed: CodingKey & CaseIterable>(_ allowed: Allowed.Type, decoder: Decoder) throws {
        let everything = try decoder.container(keyedBy: AnyMemberName.self)
        let names = Set(Allowed.allCases.map(\.stringValue))
        if let unknown = everything.allKeys.first(where: { !names.contains($0.stringValue) }) {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath + [unknown],
                debugDescription: "unknown field; allowed: \(Allowed.allCases.map(\.stringValue).joined(separator: ", "))"))
        }
    }
}

/// Any member name, to list what an object really holds.
struct AnyMemberName: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
