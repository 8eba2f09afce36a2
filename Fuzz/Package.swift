// swift-tools-version:6.0
import PackageDescription

// libFuzzer harnesses for keystore. Build and run them with ./run.sh, which passes
// `-sanitize=fuzzer,address` (and `-enable-testing`, for `@testable import`) to every module,
// so the code under test is instrumented too, not just the harnesses.
//
// The harnesses define `LLVMFuzzerTestOneInput` and `<Module>_main` instead of top-level code
// (see Sources/FuzzSupport/Driver.swift), hence `-parse-as-library`.
let harness: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "keystore-fuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        // Named: a path dependency is otherwise known by its directory name, which differs per checkout.
        .package(name: "keystore", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // A throw-away config directory with the TLS and PSK files the seed configs name.
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver"]),
        // Declares libFuzzer's LLVMFuzzerRunDriver (see Sources/FuzzSupport/Driver.swift).
        .target(name: "CFuzzDriver"),
        .executableTarget(name: "FuzzPeerFrames", dependencies: [
            "FuzzSupport",
            .product(name: "PeerWire", package: "keystore"),
            .product(name: "Replication", package: "keystore"),
            .product(name: "SecretMemory", package: "keystore"),
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: harness),
        .executableTarget(name: "FuzzHTTP", dependencies: [
            "FuzzSupport",
            .product(name: "KeystoreNode", package: "keystore"),
            .product(name: "RegistryDatabase", package: "keystore"),
            .product(name: "LocalAPI", package: "keystore"),
            .product(name: "KeystoreConfig", package: "keystore"),
            .product(name: "ReplicatedStore", package: "keystore"),
            .product(name: "SecretMemory", package: "keystore"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: harness),
        .executableTarget(name: "FuzzConfig", dependencies: [
            "FuzzSupport",
            .product(name: "KeystoreConfig", package: "keystore"),
        ], swiftSettings: harness),
        .executableTarget(name: "FuzzCertificate", dependencies: [
            "FuzzSupport",
            .product(name: "CertificateRegistry", package: "keystore"),
        ], swiftSettings: harness),
    ]
)
