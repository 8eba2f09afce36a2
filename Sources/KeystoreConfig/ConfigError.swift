import KeystoreAPI
/// Every way a cluster config can be rejected. `description` is the single line keystored
/// prints before exiting, so each message names the offending field (as a path such as
/// `domains["first.com"].keys[1].path`) and says how to fix it. Values echoed back are
/// quoted and escaped so hostile input cannot break the one-line guarantee; secret file
/// contents never appear.
public enum ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The config file itself could not be read.
    case configFileUnreadable(path: String, reason: String)
    case syntax(file: String, line: Int, column: Int, message: String)
    case duplicateField(field: String)
    case wrongType(field: String, expected: String, found: String)
    case unknownField(field: String, allowed: [String])
    case missingField(field: String)
    case emptyValue(field: String)
    case noNodes(field: String)
    case unknownNode(name: String, configured: [String])
    case badNodeName(field: String, name: String)
    case badClusterName(field: String, name: String)
    case badEnumValue(field: String, value: String, allowed: [String])
    case badPeer(field: String, value: String, reason: String)
    case portOutOfRange(field: String, value: String)
    case socketPathTooLong(field: String, path: String, bytes: Int)
    case badSocketMode(field: String, value: String)
    case duplicatePeerAddress(field: String, address: String, otherNode: String)
    case duplicateSocketPath(field: String, path: String, otherNode: String)
    case outOfRange(field: String, value: String, min: Int, max: Int)
    case badDomainName(field: String, name: String)
    case badKeyName(field: String, name: String)
    case duplicateKeyName(field: String, name: String)
    case unknownKeyType(field: String, value: String)
    case fileKeyWithoutPath(field: String)
    case ramKeyWithPath(field: String)
    case pskMissing(field: String, path: String)
    case pskNotRegularFile(field: String, path: String)
    case pskUnreadable(field: String, path: String, reason: String)
    case pskEmpty(field: String, path: String)
    case pskTooLarge(field: String, path: String, limit: Int)
    case pskInsecureMode(field: String, path: String, mode: UInt32)
    case tlsFileMissing(field: String, path: String)
    case tlsFileNotRegularFile(field: String, path: String)
    case tlsFileUnreadable(field: String, path: String, reason: String)
    case tlsKeyInsecureMode(field: String, path: String, mode: UInt32)
    case clientWithoutPrincipal(field: String)
    case badClientID(field: String, value: String)
    case clientDomainsEmpty(field: String)
    case clientUnknownDomain(field: String, domain: String, configured: [String])
    case clientAllowEmpty(field: String)
    case unknownPermission(field: String, value: String)

    public var description: String {
        switch self {
        case let .configFileUnreadable(path, reason):
            return "cannot read config file \(q(path)): \(reason); check the --config path and its permissions"
        case let .syntax(file, line, column, message):
            return "\(q(file)) line \(line), column \(column): invalid JSON: \(message)"
        case let .duplicateField(field):
            return "\(field): appears more than once; keep exactly one"
        case let .wrongType(field, expected, found):
            return "\(field): expected \(expected), found \(found)"
        case let .unknownField(field, allowed):
            return "\(field): unknown field; allowed here: \(allowed.joined(separator: ", "))"
        case let .missingField(field):
            return "\(field): required field is missing; add it"
        case let .emptyValue(field):
            return "\(field): must not be empty"
        case let .noNodes(field):
            return "\(field): at least one node is required; add an entry like \"node1\": {\"peer\": ..., \"socket\": ..., \"data_dir\": ...}"
        case let .unknownNode(name, configured):
            return "unknown node name \(q(name)); configured: \(configured.joined(separator: ", ")); pass one of them to --node"
        case let .badEnumValue(field, value, allowed):
            return "\(field): \(q(value)) is not one of \(allowed.joined(separator: ", "))"
        case let .badClusterName(field, name):
            return "\(field): bad cluster name \(q(name)) (\(name.utf8.count) bytes); use 1-64 characters from [A-Za-z0-9._-] starting with a letter or digit: every node sends it to its peers and they must compare equal"
        case let .badNodeName(field, name):
            return "\(field): bad node name \(q(name)); use a lowercase DNS label ([a-z0-9], inner '-', 1-63 chars) matching the DNS: name in its certificate"
        case let .badPeer(field, value, reason):
            return "\(field): bad peer address \(q(value)): \(reason); use \"host:port\" or \"[ipv6]:port\""
        case let .portOutOfRange(field, value):
            return "\(field): port \(q(value)) is out of range; use 1-65535"
        case let .socketPathTooLong(field, path, bytes):
            return "\(field): socket path \(q(path)) is \(bytes) bytes; Unix socket paths must be at most 107 bytes, choose a shorter path"
        case let .badSocketMode(field, value):
            return "\(field): bad socket mode \(q(value)); use an octal string no greater than \"0777\", like \"0660\""
        case let .duplicatePeerAddress(field, address, otherNode):
            return "\(field): peer address \(q(address)) is also used by node \(q(otherNode)); give each node its own address"
        case let .duplicateSocketPath(field, path, otherNode):
            return "\(field): socket path \(q(path)) is also used by node \(q(otherNode)); give each node its own socket (e.g. use {node})"
        case let .outOfRange(field, value, min, max):
            return "\(field): value \(value) is out of range; use an integer from \(min) to \(max)"
        case let .badDomainName(field, name):
            return "\(field): bad domain name \(q(name)); use a lowercase DNS name (labels of [a-z0-9] with inner '-', at most 253 chars)"
        case let .badKeyName(field, name):
            return "\(field): bad key name \(q(name)); use 1-128 characters from [A-Za-z0-9_.-], not starting with '.'"
        case let .duplicateKeyName(field, name):
            return "\(field): key name \(q(name)) is already used in this domain; key names must be unique per domain"
        case let .unknownKeyType(field, value):
            return "\(field): unknown key type \(q(value)); use \"ram\" or \"file\""
        case let .fileKeyWithoutPath(field):
            return "\(field): required for keys of type \"file\"; add the path of the PSK file"
        case let .ramKeyWithPath(field):
            return "\(field): path is only for file keys; remove it or set \"type\": \"file\""
        case let .pskMissing(field, path):
            return "\(field): PSK file \(q(path)) does not exist; create it or fix the path"
        case let .pskNotRegularFile(field, path):
            return "\(field): PSK file \(q(path)) is not a regular file; point it at a regular file"
        case let .pskUnreadable(field, path, reason):
            return "\(field): cannot read PSK file \(q(path)): \(reason); make it readable by the keystored user"
        case let .pskEmpty(field, path):
            return "\(field): PSK file \(q(path)) is empty after trimming whitespace; write the key into it"
        case let .pskTooLarge(field, path, limit):
            return "\(field): PSK file \(q(path)) is larger than \(limit) bytes; it should hold only the key"
        case let .pskInsecureMode(field, path, mode):
            return "\(field): PSK file \(q(path)) has mode \(octal(mode)), readable or writable by group or others; run chmod 600 \(shellQuoted(path))"
        case let .tlsFileMissing(field, path):
            return "\(field): TLS file \(q(path)) does not exist; create it or fix the path"
        case let .tlsFileNotRegularFile(field, path):
            return "\(field): TLS file \(q(path)) is not a regular file; point it at a PEM file"
        case let .tlsFileUnreadable(field, path, reason):
            return "\(field): cannot read TLS file \(q(path)): \(reason); make it readable by the keystored user"
        case let .tlsKeyInsecureMode(field, path, mode):
            return "\(field): private key \(q(path)) has mode \(octal(mode)), accessible by group or others; run chmod 600 \(shellQuoted(path))"
        case let .clientWithoutPrincipal(field):
            return "\(field): a client rule needs \"uid\" or \"gid\" (or both); add one"
        case let .badClientID(field, value):
            return "\(field): \(value) is not a valid id; use an integer from 0 to 4294967294"
        case let .clientDomainsEmpty(field):
            return "\(field): must list at least one domain, or \"*\" for all"
        case let .clientUnknownDomain(field, domain, configured):
            let list = configured.isEmpty ? "none" : configured.joined(separator: ", ")
            return "\(field): domain \(q(domain)) is not configured (configured: \(list)); add it under \"domains\" or use \"*\""
        case let .clientAllowEmpty(field):
            return "\(field): must list at least one permission; allowed: \(Permission.allCases.map(\.rawValue).joined(separator: ", "))"
        case let .unknownPermission(field, value):
            return "\(field): unknown permission \(q(value)); allowed: \(Permission.allCases.map(\.rawValue).joined(separator: ", "))"
        }
    }
}

/// Quotes and escapes an untrusted value so it stays on one printable line.
func q(_ value: String) -> String { quotedOnOneLine(value, quote: "'") }

/// Escapes backslashes, the quote character, line breaks and other control or line-separator
/// characters (JSON-style `\uXXXX`), so hostile names cannot split an error message.
func quotedOnOneLine(_ value: String, quote: Unicode.Scalar) -> String {
    var out = String(quote)
    for scalar in value.unicodeScalars {
        switch scalar {
        case "\\": out += "\\\\"
        case quote: out += "\\" + String(quote)
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F || (scalar.value >= 0x80 && scalar.value < 0xA0)
                || scalar.value == 0x2028 || scalar.value == 0x2029 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    out.unicodeScalars.append(quote)
    return out
}

/// A path an operator can paste into a shell as-is (POSIX single quotes when needed).
func shellQuoted(_ path: String) -> String {
    let scalars = path.unicodeScalars
    let safe = scalars.allSatisfy { s in
        (s >= "a" && s <= "z") || (s >= "A" && s <= "Z") || (s >= "0" && s <= "9") || "/._-+,:@%".unicodeScalars.contains(s)
    }
    if safe { return path }
    // A control character cannot be shown safely on one line; fall back to escaped display.
    if scalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) { return q(path) }
    var out = "'"
    for s in scalars {
        if s == "'" { out += "'\\''" } else { out.unicodeScalars.append(s) }
    }
    return out + "'"
}

func octal(_ mode: UInt32) -> String {
    let digits = String(mode & 0o7777, radix: 8)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}
