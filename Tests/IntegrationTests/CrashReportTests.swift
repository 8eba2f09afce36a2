import Foundation
import KeystoreClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A crash must not write memory to the journal: by default the Swift runtime's backtracer prints the
/// registers of the crashed thread and the bytes they point at, which inside key handling could be
/// key material. keystored replaces it with one line naming the signal (issue 11 item 5).
final class CrashReportTests: ClusterTestCase {
    /// What the runtime backtracer prints (swift-backtrace's headings and its register/memory dump).
    static let backtracerMarkers = ["Program crashed", "Crashed at", "Thread 0", "Registers", "Backtrace took", "Images", "💣"]

    func testFatalSignalsPrintOneLineNoMemoryAndKillWithThatSignal() throws {
        let cluster = try makeCluster(nodes: ["node1"])
        for (signo, name) in [(SIGSEGV, "SIGSEGV"), (SIGBUS, "SIGBUS"), (SIGILL, "SIGILL"), (SIGABRT, "SIGABRT")] {
            let node = try cluster.start("node1")
            cluster.waitReady("node1")
            // The key is in memory now: exactly what a crash dump must not show.
            XCTAssertNotNil(try node.client.getKey(domain: "first.com", name: "token_secret").primary?.key)
            let logBefore = node.log
            node.signal(signo)
            waitUntil("keystored exits after \(name)", timeout: 30) { !node.isRunning }
            if node.isRunning { node.kill9() }  // failed above already; do not leave it running
            node.process.waitUntilExit()

            XCTAssertEqual(node.process.terminationReason, .uncaughtSignal, "\(name): must die by the signal, not exit")
            XCTAssertEqual(node.process.terminationStatus, signo, "\(name): died by another signal")
            let crashOutput = String(node.log.dropFirst(logBefore.count))
            XCTAssertEqual(crashOutput.split(separator: "\n", omittingEmptySubsequences: true).filter { !$0.contains(" debug ") && !$0.contains(" info ") },
                           ["keystored: fatal signal \(name) (\(Self.reasons[name]!)); exiting without a backtrace so that no memory reaches the log"],
                           "\(name): the crash must print exactly one line:\n\(crashOutput)")
            for marker in Self.backtracerMarkers {
                XCTAssertFalse(crashOutput.contains(marker), "\(name): backtracer output (\(marker)) in the log:\n\(crashOutput)")
            }
            XCTAssertNil(crashOutput.range(of: "0x[0-9a-fA-F]{8,}", options: .regularExpression),
                         "\(name): an address or memory dump in the log:\n\(crashOutput)")
        }
    }

    static let reasons = [
        "SIGSEGV": "invalid memory access", "SIGBUS": "bus error",
        "SIGILL": "illegal instruction, e.g. a Swift runtime trap", "SIGABRT": "abort",
    ]
}
