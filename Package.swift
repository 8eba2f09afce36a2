// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "keystore",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "keystored", targets: ["keystored"]),
        .executable(name: "keystorectl", targets: ["keystorectl"]),
        .executable(name: "keystore-sim", targets: ["keystore-sim"]),
        .library(name: "KeystoreClient", targets: ["KeystoreClient"]),
        // Exposed for the fuzz harnesses in Fuzz/ (a separate package depending on this one).
        .library(name: "SecretMemory", targets: ["SecretMemory"]),
        .library(name: "KeystoreConfig", targets: ["KeystoreConfig"]),
        .library(name: "KeystoreAPI", targets: ["KeystoreAPI"]),
        .library(name: "RegistryDatabase", targets: ["RegistryDatabase"]),
        .library(name: "ReplicatedStore", targets: ["ReplicatedStore"]),
        .library(name: "PeerWire", targets: ["PeerWire"]),
        // The replication core, for keystore-sim and other in-process drivers.
        .library(name: "Replication", targets: ["Replication"]),
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
        // libidn's stringprep (nodeprep, nameprep, resourceprep): the JID preparation Prosody uses.
        .systemLibrary(name: "CLibIDN", path: "Sources/CLibIDN", pkgConfig: "libidn",
                       providers: [.apt(["libidn-dev"])]),
        // C functions Swift cannot call directly: variadic prctl, sigaction handlers and friends.
        .target(name: "CSystemShims", path: "Sources/CSystemShims"),
        // OpenSSL macros (SSL_CTX_set_min_proto_version, BIO_get_mem_data, ...) as real functions.
        .target(name: "COpenSSLShims", dependencies: ["COpenSSL"], path: "Sources/COpenSSLShims"),

        // Secret bytes in locked, guarded, zero-on-free libsodium memory.
        .target(name: "SecretMemory", dependencies: ["CSodium", "CSystemShims"]),
        // A strict JSON reader (duplicate keys, exact positions, depth limit) and strict body decoding.
        .target(name: "KeystoreJSON", dependencies: []),
        // The local API contract shared by server, client and CLI: routes, permissions, Codable bodies.
        .target(name: "KeystoreAPI", dependencies: ["KeystoreJSON"]),
        // The v1 cluster.json schema: parsing, {node} substitution, validation, PSK files.
        .target(name: "KeystoreConfig", dependencies: ["KeystoreJSON", "KeystoreAPI"]),
        // Replicated key/registry state: HLC, deterministic merge, digests (pure, no I/O).
        .target(name: "ReplicatedStore", dependencies: []),
        // SWIM-style membership state machine (pure, no I/O).
        .target(name: "Membership", dependencies: []),
        // Replication between members: join decision, push, anti-entropy, state streaming (pure, no I/O).
        .target(name: "Replication", dependencies: ["ReplicatedStore", "Membership"]),
        // X.509 parsing (OpenSSL), JIDs prepared with libidn, and the XEP-0257 append/verify rules (pure).
        .target(name: "CertificateRegistry", dependencies: ["COpenSSL", "COpenSSLShims", "CLibIDN"]),
        // MongooseIM mod_auth_token token bodies: build and take apart (pure: no keys, no clock).
        .target(name: "TokenFormat", dependencies: ["ReplicatedStore"]),
        // HMAC with keys in protected memory (system OpenSSL), constant-time verification (libsodium).
        .target(name: "KeyCrypto", dependencies: ["COpenSSL", "CSodium", "SecretMemory"]),
        // Durable storage of certificate records (and their tombstones) in SQLite, WAL + synchronous=FULL.
        .target(name: "RegistryDatabase", dependencies: ["CSQLite"]),
        // Mutual TLS 1.3 between peers over system OpenSSL, as a NIO ChannelHandler.
        .target(name: "PeerTLS", dependencies: [
            "COpenSSL", "COpenSSLShims",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        // The versioned, length-prefixed, size-limited peer frame format (pure codec).
        .target(name: "PeerWire", dependencies: [
            "SecretMemory", "ReplicatedStore", "Membership", "Replication",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        // Blocking HTTP/1.1-over-Unix-socket client for the local API (CLI and tests).
        .target(name: "KeystoreClient", dependencies: ["KeystoreAPI", "KeystoreJSON"]),
        // The local HTTP/1.1 + JSON API on a Unix socket with SO_PEERCRED ACLs.
        .target(name: "LocalAPI", dependencies: [
            "KeystoreAPI",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // One keystored node: key vault, API handlers, cluster shell.
        .target(name: "KeystoreNode", dependencies: [
            "SecretMemory", "KeystoreConfig", "ReplicatedStore", "Membership", "Replication", "PeerTLS", "PeerWire", "LocalAPI",
            "CertificateRegistry", "RegistryDatabase", "KeystoreAPI", "KeystoreJSON", "KeyCrypto", "TokenFormat",
            "CSystemShims",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "keystored", dependencies: [
            "KeystoreNode", "KeystoreAPI", "SecretMemory", "CSystemShims",
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
        // N nodes of the real membership and store cores over a simulated network (pure, seeded).
        .target(name: "ClusterSimulation", dependencies: ["Membership", "ReplicatedStore", "Replication", "PeerWire", "SecretMemory",
                                                          .product(name: "NIOCore", package: "swift-nio")]),
        // The simulation as a release executable: prints the one-line summary BENCHMARKS.md quotes.
        .executableTarget(name: "keystore-sim", dependencies: [
            "ClusterSimulation",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "keystorectl", dependencies: [
            "KeystoreClient", "KeystoreAPI", "KeystoreJSON",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // Helpers shared by the test targets (seeded RNG, lock box, openssl CLI fixtures, self-removing
        // temporary directories). A plain target because test targets cannot depend on each other; no
        // product lists it, so nothing shipped links it.
        .target(name: "TestSupport", dependencies: [
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], path: "Tests/TestSupport"),

        .testTarget(name: "SecretMemoryTests", dependencies: ["SecretMemory"]),
        .testTarget(name: "KeystoreConfigTests", dependencies: ["KeystoreConfig", "KeystoreAPI", "KeystoreJSON"]),
        .testTarget(name: "KeystoreAPITests", dependencies: ["KeystoreAPI", "KeystoreJSON"]),
        .testTarget(name: "RegistryDatabaseTests", dependencies: ["RegistryDatabase"]),
        .testTarget(name: "CertificateRegistryTests", dependencies: ["CertificateRegistry", "COpenSSL", "TestSupport"]),
        .testTarget(name: "ReplicatedStoreTests", dependencies: ["ReplicatedStore", "TestSupport"]),
        .testTarget(name: "KeyCryptoTests", dependencies: ["KeyCrypto", "SecretMemory"]),
        // Cross-checks tokens with an independent implementation (Debian's /usr/bin/python3).
        .testTarget(name: "TokenFormatTests", dependencies: ["TokenFormat", "KeyCrypto", "SecretMemory"]),
        .testTarget(name: "MembershipTests", dependencies: ["Membership"]),
        // A few seeds of the cluster simulation at 100 nodes (CI), judged by its invariants.
        .testTarget(name: "SimulationTests", dependencies: ["ClusterSimulation"]),
        .testTarget(name: "ReplicationTests", dependencies: ["Replication", "ReplicatedStore", "Membership", "TestSupport"]),
        .testTarget(name: "PeerWireTests", dependencies: [
            "PeerWire", "SecretMemory", "ReplicatedStore", "Membership", "Replication", "TestSupport",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .testTarget(name: "PeerTLSTests", dependencies: [
            "PeerTLS", "TestSupport",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ]),
        .testTarget(name: "LocalAPITests", dependencies: [
            "LocalAPI", "KeystoreNode", "KeystoreAPI", "RegistryDatabase", "PeerWire",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        .testTarget(name: "KeystoreClientTests", dependencies: ["KeystoreClient", "KeystoreAPI", "KeystoreJSON", "keystorectl"]),
        // Spawns real keystored processes (single node and clusters) and talks to their sockets.
        .testTarget(name: "IntegrationTests", dependencies: ["KeystoreClient", "KeystoreAPI", "keystored", "keystorectl", "TestSupport"]),
        // End to end with Debian's Prosody running integrations/prosody and slixmpp clients, against
        // real keystored nodes. NodeHarness.swift is a symlink to the IntegrationTests file (one
        // harness, compiled into both targets).
        .testTarget(name: "ProsodyIntegrationTests", dependencies: ["KeystoreClient", "keystored", "keystorectl", "TestSupport"]),
        // The test-support helpers themselves, and that no test leaves key material in /tmp.
        .testTarget(name: "TestSupportTests", dependencies: ["TestSupport"]),
    ]
)
