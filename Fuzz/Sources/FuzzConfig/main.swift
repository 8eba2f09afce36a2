import FuzzSupport
import KeystoreConfig

// Fuzz target 3: the config parser (`keystored --config`): JSON syntax, `{node}` substitution,
// validation and the file checks, against a fixture directory that has the files the seed
// configs name, so mutated configs also reach the success path.
//
// Oracles beyond "does not crash": every error renders as one line (operators read it in a
// journal), and a config that parses yields an access-control table that answers queries.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    do {
        let config = try ClusterConfig.parse(json: bytes, configDirectory: Fixture.directory, node: Fixture.nodeName)
        let acl = config.accessControl(daemonUID: 0)
        for domain in config.domains.keys {
            _ = acl.permits(uid: 1001, gids: [1001], permission: .keysRead, domain: domain)
        }
        _ = acl.permits(uid: 1002, gids: [1002], permission: .admin, domain: nil)
    } catch {
        let message = error.description
        if message.contains("\n") || message.contains("\r") {
            fatalError("fuzz: config error message spans several lines: \(message.debugDescription)")
        }
    }
    return 0
}

@_cdecl("FuzzConfig_main")
public func fuzzConfigMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzConfig)
}
