import Foundation
import SecretMemory
import Synchronization
import XCTest

/// `ProcessMemory.prepareThreadHeap` against the real glibc heap: it readies a thread's arena
/// without leaving memory resident, and the thread can then allocate as usual. (What it saves,
/// the `mprotect` per page of a thread arena's growth, is a cost, shown by `strace -c` and
/// `bench/run.sh sync` in BENCHMARKS.md, not a behaviour a test can see.)
final class ThreadHeapTests: XCTestCase {
    private static func residentAnonymousBytes() throws -> Int {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("RssAnon:") })
        let kilobytes = try XCTUnwrap(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
        return kilobytes * 1024
    }

    /// Runs `body` on a thread of its own (a thread's first allocation picks its arena; a new
    /// thread gets one of its own while there are fewer arenas than glibc's limit).
    private func onNewThread(_ body: @escaping @Sendable () throws -> Void) throws {
        let done = DispatchSemaphore(value: 0)
        let failure = Mutex<(any Error)?>(nil)
        let thread = Thread {
            do { try body() } catch { failure.withLock { $0 = error } }
            done.signal()
        }
        thread.start()
        done.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }

    func testPreparingLeavesNothingResidentAndTheThreadAllocatesAfterwards() throws {
        try onNewThread {
            let before = try Self.residentAnonymousBytes()
            // Each call's blocks touch a page apiece (malloc's headers, ~1.7 MiB for 40 MiB): kept
            // instead of freed, ten calls would leave ~17 MiB resident.
            for _ in 0..<10 {
                XCTAssertEqual(ProcessMemory.prepareThreadHeap(forBytes: 40 << 20), (40 << 20) / (96 << 10) * (96 << 10),
                               "whole 96 KiB blocks")
            }
            let after = try Self.residentAnonymousBytes()
            XCTAssertLessThan(after - before, 4 << 20, "freed, and the heap shrunk back: nothing stays resident")

            // What the start-up load does next: many small blocks, kept, then freed.
            var blocks: [UnsafeMutableRawPointer] = []
            blocks.reserveCapacity(40_000)
            for index in 0..<40_000 {
                let block = UnsafeMutableRawPointer.allocate(byteCount: 640, alignment: 8)
                block.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: index), count: 640)
                blocks.append(block)
            }
            for (index, block) in blocks.enumerated() {
                XCTAssertEqual(block.load(fromByteOffset: 639, as: UInt8.self), UInt8(truncatingIfNeeded: index))
            }
            blocks.forEach { $0.deallocate() }
        }
    }

    func testAskingForMoreThanAThreadHeapHoldsIsCappedAndNothingIsNothing() throws {
        try onNewThread {
            XCTAssertEqual(ProcessMemory.prepareThreadHeap(forBytes: 1 << 30), 48 << 20, "capped below a thread arena's 64 MiB heap")
            XCTAssertEqual(ProcessMemory.prepareThreadHeap(forBytes: 0), 0)
            XCTAssertEqual(ProcessMemory.prepareThreadHeap(forBytes: -1), 0)
            XCTAssertEqual(ProcessMemory.prepareThreadHeap(forBytes: (96 << 10) - 1), 0, "less than one block")
        }
    }
}
