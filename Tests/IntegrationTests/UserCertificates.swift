import Foundation

/// Client certificates made the way users make them: the openssl CLI with a client.cnf whose
/// subjectAltName carries otherName id-on-xmppAddr (1.3.6.1.5.5.7.8.5) as a UTF8String.
enum UserCertificates {
    static func make(jids: [String], in directory: String, name: String, days: Int = 30) throws -> String {
        var altNames = ""
        for (i, jid) in jids.enumerated() { altNames += "otherName.\(i) = 1.3.6.1.5.5.7.8.5;FORMAT:UTF8,UTF8:\(jid)\n" }
        let cnf = """
        [req]
        distinguished_name = dn
        prompt = no
        x509_extensions = ext
        [dn]
        CN = \(jids.first ?? "nobody")
        [ext]
        basicConstraints = CA:FALSE
        keyUsage = digitalSignature, keyEncipherment
        extendedKeyUsage = clientAuth
        subjectAltName = @alt_names
        [alt_names]
        \(altNames)
        """
        let cnfPath = "\(directory)/\(name).cnf"
        try cnf.write(toFile: cnfPath, atomically: true, encoding: .utf8)
        try SharedCertificates.run("/usr/bin/openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                                        "-days", String(days), "-config", cnfPath,
                                                        "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).pem"])
        return try String(contentsOfFile: "\(directory)/\(name).pem", encoding: .utf8)
    }
}
