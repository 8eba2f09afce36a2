import Logging
import Synchronization

/// The process's log level, changeable while running (`log_level` in the config is reloadable).
/// Every logger copy shares this one setting through `LiveLevelLogHandler`.
public final class LogLevelControl: Sendable {
    private let level: Atomic<UInt8>
    /// Set by `--log-level`: the command line wins over the config, also on reload.
    public let pinned: Bool

    public init(_ initial: Logger.Level, pinned: Bool) {
        level = Atomic(Self.code(initial))
        self.pinned = pinned
    }

    public var current: Logger.Level { Self.levels[Int(level.load(ordering: .relaxed))] }

    public func set(_ new: Logger.Level) { level.store(Self.code(new), ordering: .relaxed) }

    private static let levels = Logger.Level.allCases
    private static func code(_ level: Logger.Level) -> UInt8 { UInt8(levels.firstIndex(of: level) ?? 2) }
}

/// A stderr log handler whose level follows a `LogLevelControl`.
public struct LiveLevelLogHandler: LogHandler {
    private var stream: StreamLogHandler
    private let control: LogLevelControl

    public init(label: String, control: LogLevelControl) {
        stream = StreamLogHandler.standardError(label: label)
        stream.logLevel = .trace
        self.control = control
    }

    public var logLevel: Logger.Level {
        get { control.current }
        set {} // the control decides; per-logger levels would be lost on reload
    }

    public var metadata: Logger.Metadata {
        get { stream.metadata }
        set { stream.metadata = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { stream[metadataKey: key] }
        set { stream[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        stream.log(event: event)
    }
}
