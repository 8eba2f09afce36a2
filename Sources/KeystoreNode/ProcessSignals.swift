import CSystemShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Signal delivery that works regardless of how many threads exist.
///
/// Dispatch signal sources on Linux only see a signal if no other thread takes it first; with
/// NIO's and Swift concurrency's threads around, SIGTERM was silently lost (and SIGHUP killed
/// the process). Instead a C `sigaction` handler writes the signal number into a pipe (the
/// async-signal-safe self-pipe trick) and one dedicated thread reads it and runs the handler.
public enum ProcessSignals {
    private static let handlers = Mutex<[Int32: @Sendable () -> Void]>([:])

    /// Runs `handler` (on the signal thread) each time `signo` arrives. Replaces an earlier one.
    public static func on(_ signo: Int32, _ handler: @escaping @Sendable () -> Void) {
        handlers.withLock { $0[signo] = handler }
    }

    /// Installs the handlers for `signals` and starts the reader thread. Call once, early.
    public static func install(_ signals: [Int32]) {
        let fd = signals.withUnsafeBufferPointer { ks_signal_pipe($0.baseAddress, Int32($0.count)) }
        guard fd >= 0 else { return }
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        var thread = pthread_t()
        pthread_create(&thread, &attributes, { raw in
            let fd = Int32(Int(bitPattern: raw))
            var byte: UInt8 = 0
            while true {
                let n = read(fd, &byte, 1)
                if n < 0 && errno == EINTR { continue }
                guard n == 1 else { return nil }
                let handler = ProcessSignals.handlers.withLock { $0[Int32(byte)] }
                handler?()
            }
        }, UnsafeMutableRawPointer(bitPattern: Int(fd)))
        pthread_attr_destroy(&attributes)
    }
}
