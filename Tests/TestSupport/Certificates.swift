import Foundation

/// The cluster CA and node certificates, made the way operators make them: with deploy/gen-certs.sh.
public enum ClusterCertificates {
    /// deploy/gen-certs.sh in this checkout (found from this file's path: Tests/TestSupport/ → root).
    public static let scriptPath: String = repositoryRoot.appendingPathComponent("deploy/gen-certs.sh").path

    public static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// Runs gen-certs.sh for `nodes` into `directory`: ca.pem and `<node>.pem`/`<node>.key` there, the
    /// CA key in the sibling `<directory>-ca` (so keep `directory` inside a scratch directory, never
    /// directly in /tmp, or the CA key lands outside it).
    public static func generate(in directory: String, nodes: [String], environment: [String: String] = [:]) throws {
        try runTool("/bin/bash", [scriptPath, directory] + nodes, environment: environment)
    }

    /// Where gen-certs.sh keeps the CA key for the certificates it wrote to `directory`.
    public static func caKey(for directory: String) -> String { directory + "-ca/ca.key" }
}

/// Issues node certificates from an existing CA with explicit validity dates via `openssl ca`, which
/// (unlike `openssl x509 -req` in OpenSSL 3.0) accepts `-startdate`/`-enddate`: expired and
/// not-yet-valid certificates that gen-certs.sh deliberately cannot make.
public struct TestCertificateAuthority: Sendable {
    public let directory: String
    public let caCertificate: String
    public let caKey: String

    /// `directory` is created if needed and holds the CA database, the requests and what is issued.
    public init(directory: String, caCertificate: String, caKey: String) throws {
        self.directory = directory
        self.caCertificate = caCertificate
        self.caKey = caKey
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: directory + "/index.txt", contents: Data())
        try "01\n".write(toFile: directory + "/serial", atomically: false, encoding: .utf8)
        let config = """
            [ca]
            default_ca = testca
            [testca]
            database = \(directory)/index.txt
            new_certs_dir = \(directory)
            serial = \(directory)/serial
            default_md = sha256
            policy = anything
            unique_subject = no
            copy_extensions = none
            [anything]
            commonName = supplied

            """
        try config.write(toFile: directory + "/ca.cnf", atomically: false, encoding: .utf8)
    }

    /// Returns (certificate, key) paths for a node certificate naming `dnsName` (plus `extraNames`,
    /// e.g. `IP:127.0.0.1`), valid from `start` to `end` (`YYYYMMDDHHMMSSZ`). A new P-256 key is made
    /// unless `key` names an existing one (to pair the certificate with a key a test already uses).
    public func issue(_ label: String, dnsName: String, extraNames: [String] = [], start: String, end: String,
                      key existingKey: String? = nil) throws -> (certificate: String, key: String) {
        let key = existingKey ?? "\(directory)/\(label).key"
        let csr = "\(directory)/\(label).csr", pem = "\(directory)/\(label).pem", ext = "\(directory)/\(label).ext"
        try """
            basicConstraints = critical, CA:FALSE
            keyUsage = critical, digitalSignature
            extendedKeyUsage = serverAuth, clientAuth
            subjectAltName = \((["DNS:\(dnsName)"] + extraNames).joined(separator: ", "))

            """.write(toFile: ext, atomically: false, encoding: .utf8)
        if existingKey == nil {
            try openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
        }
        try openssl(["req", "-new", "-key", key, "-subj", "/CN=\(dnsName)", "-out", csr])
        try openssl(["ca", "-batch", "-config", "\(directory)/ca.cnf", "-cert", caCertificate, "-keyfile", caKey,
                     "-in", csr, "-out", pem, "-startdate", start, "-enddate", end, "-extfile", ext, "-notext"])
        return (pem, key)
    }
}

/// A self-signed client certificate as a user makes one for XEP-0257 with the openssl CLI.
public struct UserCertificate: Sendable {
    public let pemPath: String
    public let keyPath: String
    public let pem: String
    public let der: [UInt8]
}

public enum UserCertificates {
    /// The `[ext]` section users put in their client.cnf: id-on-xmppAddr (1.3.6.1.5.5.7.8.5) otherNames
    /// as UTF8Strings, one per JID, plus the usual client-certificate constraints.
    public static func xmppAddrExtensions(_ jids: [String]) -> String {
        var section = """
            basicConstraints = CA:FALSE
            keyUsage = digitalSignature, keyEncipherment
            extendedKeyUsage = clientAuth
            subjectAltName = @alt_names
            [alt_names]

            """
        for (i, jid) in jids.enumerated() { section += "otherName.\(i) = 1.3.6.1.5.5.7.8.5;FORMAT:UTF8,UTF8:\(jid)\n" }
        return section
    }

    /// Makes `<name>.cnf`, `<name>.key`, `<name>.pem` in `directory` with `openssl req -x509` (P-256).
    /// `extensions` is the body of the `[ext]` section (plus any sections it references), or nil for a
    /// certificate without extensions.
    public static func make(extensions: String?, commonName: String, days: Int = 30, in directory: String,
                            name: String) throws -> UserCertificate {
        var cnf = """
            [req]
            distinguished_name = dn
            prompt = no
            [dn]
            CN = \(commonName)

            """
        if let extensions { cnf += "[ext]\n" + extensions + "\n" }
        let cnfPath = "\(directory)/\(name).cnf", keyPath = "\(directory)/\(name).key", pemPath = "\(directory)/\(name).pem"
        try cnf.write(toFile: cnfPath, atomically: true, encoding: .utf8)
        var arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                         "-days", String(days), "-config", cnfPath, "-keyout", keyPath, "-out", pemPath]
        if extensions != nil { arguments += ["-extensions", "ext"] }
        try openssl(arguments)
        let derPath = "\(directory)/\(name).der"
        try openssl(["x509", "-in", pemPath, "-outform", "DER", "-out", derPath])
        let pem = try String(contentsOfFile: pemPath, encoding: .utf8)
        let der = try [UInt8](Data(contentsOf: URL(fileURLWithPath: derPath)))
        return UserCertificate(pemPath: pemPath, keyPath: keyPath, pem: pem, der: der)
    }

    /// A client certificate naming `jids` (the first is also the CN); returns its PEM text.
    public static func make(jids: [String], in directory: String, name: String, days: Int = 30) throws -> String {
        try make(extensions: xmppAddrExtensions(jids), commonName: jids.first ?? "nobody", days: days,
                 in: directory, name: name).pem
    }
}
