// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "keystore",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "keystored", targets: ["keystored"]),
        .executable(name: "keystorectl", targets: ["keystorectl"]),
        .library(name: "KeystoreClient", targets: ["KeystoreClient"]),
        // Exposed for the fuzz harnesses in Fuzz/ (a separate package depending on this one).
        .library(name: "SecretMemory", targets: ["SecretMemory"]),
        .library(name: "KeystoreConfig", targets: ["KeystoreConfig"]),
        .library(name: "ReplicatedStore", targets: ["ReplicatedStore"]),
        .library(name: "PeerWire", targets: ["PeerWire"]),
        .library(name: "LocalAPI", targets: ["LocalAPI"]),
        .library(name: "KeystoreNode", targets: ["KeystoreNode"]),
        .library(name: "CertificateRegistry", targets: ["CertificateRegistry"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        // libsodium: locked memory, RNG, constant-time compare, keyed hashes.
        .systemLibrary(name: "CSodium", path: "Sources/CSodium", pkgConfig: "libsodium",
                       providers: [.apt(["libsodium-dev"])]),
        // System OpenSSL 3 (libssl, libcrypto) for peer TLS and X.509.
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        // System SQLite for the durable certificate registry.
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        // C functions Swift cannot call directly: variadic prctl and friends.
        .target(name: "CSystemShims", path: "Sources/CSystemShims"),
        // OpenSSL macros (SSL_CTX_set_min_proto_version, BIO_get_mem_data, ...) as real functions.
        .target(name: "COpenSSLShims", dependencies: ["COpenSSL"], path: "Sources/COpenSSLShims"),

        // Secret bytes in locked, guarded, zero-on-free libsodium memory.
        .target(name: "SecretMemory", dependencies: ["CSodium", "CSystemShims"]),
        // The v1 cluster.json schema: parsing, {node} substitution, validation, PSK files.
        .target(name: "KeystoreConfig", dependencies: []),
        // Replicated key/registry state: HLC, deterministic merge, digests (pure, no I/O).
        .target(name: "ReplicatedStore", dependencies: []),
        // SWIM-style membership state machine (pure, no I/O).
        .target(name: "Membership", dependencies: []),
        // X.509 parsing (OpenSSL), JIDs, and the XEP-0257 append/verify rules (pure).
        .target(name: "CertificateRegistry", dependencies: ["COpenSSL", "COpenSSLShims"]),
        // Durable storage of certificate records (and their tombstones) in SQLite, WAL + synchronous=FULL.
        .target(name: "RegistryDatabase", dependencies: ["CSQLite"]),
        // Mutual TLS 1.3 between peers over system OpenSSL, as a NIO ChannelHandler.
        .target(name: "PeerTLS", dependencies: [
            "COpenSSL", "COpenSSLShims",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        // The versioned, length-prefixed, size-limited peer frame format (pure codec).
        .target(name: "PeerWire", dependencies: [
            "SecretMemory", "ReplicatedStore", "Membership",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        // Blocking HTTP/1.1-over-Unix-socket client for the local API (CLI and tests).
        .target(name: "KeystoreClient", dependencies: []),
        // The local HTTP/1.1 + JSON API on a Unix socket with SO_PEERCRED ACLs.
        .target(name: "LocalAPI", dependencies: [
            "KeystoreConfig", "CSystemShims",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // One keystored node: key vault, API handlers, cluster shell.
        .target(name: "KeystoreNode", dependencies: [
            "SecretMemory", "KeystoreConfig", "ReplicatedStore", "Membership", "PeerTLS", "PeerWire", "LocalAPI",
            "CertificateRegistry", "RegistryDatabase",
            "CSodium", "CSystemShims",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "keystored", dependencies: [
            "KeystoreNode",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // Cluster convergence and sync benchmarks, and a bare-NIO floor server for get-key (see
        // BENCHMARKS.md; the get-key load client is bench/loadgen.c).
        .executableTarget(name: "keystore-bench", dependencies: [
            "KeystoreClient",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "keystorectl", dependencies: [
            "KeystoreClient",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "SecretMemoryTests", dependencies: ["SecretMemory"]),
        .testTarget(name: "KeystoreConfigTests", dependencies: ["KeystoreConfig"]),
        .testTarget(name: "RegistryDatabaseTests", dependencies: ["RegistryDatabase"]),
        .testTarget(name: "CertificateRegistryTests", dependencies: ["CertificateRegistry", "COpenSSL"]),
        .testTarget(name: "ReplicatedStoreTests", dependencies: ["ReplicatedStore"]),
        .testTarget(name: "MembershipTests", dependencies: ["Membership"]),
        .testTarget(name: "PeerWireTests", dependencies: [
            "PeerWire", "SecretMemory", "ReplicatedStore", "Membership",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .testTarget(name: "PeerTLSTests", dependencies: [
            "PeerTLS",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ]),
        .testTarget(name: "LocalAPITests", dependencies: [
            "LocalAPI", "KeystoreNode", "KeystoreClient",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        .testTarget(name: "KeystoreClientTests", dependencies: ["KeystoreClient", "keystorectl"]),
        // Spawns real keystored processes (single node and clusters) and talks to their sockets.
        .testTarget(name: "IntegrationTests", dependencies: ["KeystoreClient", "keystored", "keystorectl"]),
    ]
)
