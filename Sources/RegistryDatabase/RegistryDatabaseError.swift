/// Why the registry database could not be opened, read or written.
///
/// Every message names the file or directory involved and what the operator can do, because these
/// errors end up as the daemon's one-line exit reason or in its log.
public enum RegistryDatabaseError: Error, CustomStringConvertible, Equatable {
    /// The data directory (or one of its parents) could not be created or is not a directory.
    case cannotCreateDirectory(path: String, reason: String)
    /// The database or its lock file could not be opened, configured or read.
    case cannotOpen(path: String, reason: String)
    /// The file is not an SQLite database or failed its integrity check.
    case corrupt(path: String, reason: String)
    /// Another process (normally another keystored) holds the data directory's lock.
    case locked(path: String)
    /// A transaction could not be committed; nothing from it was stored.
    case writeFailed(reason: String)
    /// The file was written by a newer keystored whose schema this build does not understand.
    case schemaTooNew(found: Int32, supported: Int32)

    /// One line whatever the parts hold: SQLite's own texts span lines (integrity_check starts with
    /// "*** in database main ***\n"), and this text is the daemon's exit reason and a log line.
    public var description: String {
        Self.oneLine(multiLineDescription)
    }

    private var multiLineDescription: String {
        switch self {
        case let .cannotCreateDirectory(path, reason):
            return "cannot create registry data directory \(path): \(reason); check data_dir and its parent's permissions"
        case let .cannotOpen(path, reason):
            return "cannot open registry database \(path): \(reason)"
        case let .corrupt(path, reason):
            return "registry database \(path) is corrupt (\(reason)); stop this node, move the file (and its -wal/-shm) "
                + "away and restart it: the node re-syncs the registry from its peers"
        case let .locked(path):
            return "registry data directory lock \(path) is held by another process; another keystored uses this "
                + "data_dir: give each node its own data_dir or stop the other one"
        case let .writeFailed(reason):
            return "registry write failed, nothing was stored: \(reason)"
        case let .schemaTooNew(found, supported):
            return "registry database schema version \(found) is newer than this keystored supports (\(supported)); "
                + "run the newer keystored or move the database away to re-sync from peers"
        }
    }

    /// Line breaks (with the whitespace around them) become "; ", other control characters a space.
    static func oneLine(_ text: String) -> String {
        var out = ""
        var pendingBreak = false
        for scalar in text.unicodeScalars {
            if scalar == "\n" || scalar == "\r" || scalar == "\u{2028}" || scalar == "\u{2029}" || scalar == "\u{85}" {
                pendingBreak = true
                continue
            }
            if pendingBreak {
                if scalar == " " || scalar == "\t" { continue }
                while out.unicodeScalars.last == " " { out.unicodeScalars.removeLast() }
                out += "; "
                pendingBreak = false
            }
            out.unicodeScalars.append(scalar.properties.generalCategory == .control ? " " : scalar)
        }
        return out
    }
}
