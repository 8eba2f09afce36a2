import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Exit status and combined stdout+stderr of a finished command.
public struct CommandResult: Sendable {
    public var status: Int32
    public var output: String

    public init(status: Int32, output: String) {
        self.status = status
        self.output = output
    }
}

/// A command that exited non-zero, with what it printed.
public struct CommandFailed: Error, CustomStringConvertible {
    public let description: String

    public init(description: String) { self.description = description }
}

/// Runs a command to completion, capturing stdout and stderr together; stdin is /dev/null.
public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                       currentDirectory: String? = nil) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = out
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
}

/// Runs a command that must succeed and returns its combined output; throws `CommandFailed` otherwise.
@discardableResult
public func runTool(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                    currentDirectory: String? = nil) throws -> String {
    let result = try runCommand(executable, arguments, environment: environment, currentDirectory: currentDirectory)
    guard result.status == 0 else {
        throw CommandFailed(description: "\(executable) \(arguments.joined(separator: " ")) exited \(result.status): \(result.output)")
    }
    return result.output
}

/// `openssl <arguments>`, which must succeed.
@discardableResult
public func openssl(_ arguments: [String], in directory: String? = nil) throws -> String {
    try runTool("/usr/bin/openssl", arguments, currentDirectory: directory)
}

/// A loopback TCP port nobody listens on right now (bound to port 0, read back, released; the kernel
/// does not hand it out again at once).
public func freeTCPPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> Int32 in
            guard bind(fd, sa, length) == 0 else { return -1 }
            return getsockname(fd, sa, &length)
        }
    }
    guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A plain TCP listener on 127.0.0.1: on a given port (a port a node used to have, to count who
/// still dials it) or on one the kernel picks (`port: 0`, to hold a port taken while a node tries
/// to bind it). Connections are completed by the kernel and wait in the backlog until `drain`.
public final class LoopbackListener {
    private let fd: Int32
    /// The bound port (the kernel's pick when created with `port: 0`).
    public let port: Int

    public init(port: Int = 0) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> Int32 in
                guard bind(fd, sa, length) == 0, listen(fd, 128) == 0 else { return -1 }
                return getsockname(fd, sa, &length)
            }
        }
        guard bound == 0 else {
            let code = POSIXErrorCode(rawValue: errno) ?? .EADDRINUSE
            close(fd)
            throw POSIXError(code)
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        self.fd = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    /// Accepts and closes every connection waiting; returns how many there were.
    public func drain() -> Int {
        var count = 0
        while true {
            let connection = accept(fd, nil, nil)
            guard connection >= 0 else { return count }
            close(connection)
            count += 1
        }
    }

    deinit { close(fd) }
}
