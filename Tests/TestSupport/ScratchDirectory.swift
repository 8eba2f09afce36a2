import Foundation
import NIOConcurrencyHelpers
public import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp named `<prefix>-<pid>-XXXXXX`: short enough for Unix socket paths
/// (107 bytes), and tagged with the test process so a check can tell which process left it behind.
///
/// Tests write private keys into these, so every one must go: per test with `makeScratchDirectory`
/// (removed in teardown), per process with `forProcessLifetime` (removed when the test process exits),
/// or explicitly with `remove()`.
public final class ScratchDirectory: Sendable {
    public let path: String

    public init(prefix: String = "ks") throws {
        var template = Array("/tmp/\(prefix)-\(getpid())-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        path = String(cString: made)
    }

    /// A directory shared by every test in the process (certificates made once per run), removed
    /// when the test process exits.
    public static func forProcessLifetime(prefix: String) throws -> ScratchDirectory {
        let directory = try ScratchDirectory(prefix: prefix)
        ProcessLifetimeDirectories.register(directory.path)
        return directory
    }

    public func file(_ name: String) -> String { path + "/" + name }

    /// Writes `contents` to `name` (creating parent directories) with file mode `mode`.
    public func write(_ name: String, _ contents: String, mode: mode_t = 0o600) throws {
        let target = file(name)
        try FileManager.default.createDirectory(atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try contents.write(toFile: target, atomically: false, encoding: .utf8)
        chmod(target, mode)
    }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}

extension XCTestCase {
    /// A scratch directory removed when the current test finishes, whether it passed or not.
    public func makeScratchDirectory(prefix: String) throws -> ScratchDirectory {
        let directory = try ScratchDirectory(prefix: prefix)
        addTeardownBlock { directory.remove() }
        return directory
    }
}

/// Directories removed by an `atexit` handler: XCTest ends the test process with `exit`, after the
/// last test, so shared fixtures live exactly as long as the tests that use them.
private enum ProcessLifetimeDirectories {
    static let paths = LockedBox<[String]>([])
    static let installHandler: Void = {
        atexit {
            for path in ProcessLifetimeDirectories.paths.withLockedValue({ $0 }) {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
    }()

    static func register(_ path: String) {
        _ = installHandler
        paths.withLockedValue { $0.append(path) }
    }
}
