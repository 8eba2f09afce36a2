import CertificateRegistry
import KeystoreAPI
import ReplicatedStore

/// Read-only questions about the registry (no change path needed).
extension NodeOperations {
    /// Live registrations of `user@domain`, or every record (`includeRemoved`), oldest first.
    func certificates(domain: String, user: JID, includeRemoved: Bool) -> [CertificateRecord] {
        includeRemoved ? state.certificates(domain: domain, user: user).filter { $0.content != nil }
                       : state.liveCertificates(domain: domain, user: user)
    }

    /// SASL EXTERNAL: which identity does the presented certificate authenticate as, right now,
    /// and which registration allowed it?
    func verifyCertificate(domain: String, certificate text: String, authzid: JID?) throws(NodeError) -> (jid: JID, record: CertificateRecord) {
        let parsed: ParsedCertificate
        do { parsed = try ParsedCertificate.parse(text) } catch { throw .unparsableCertificate(error.description) }
        let now = Int64(wallClockMillis())
        let result = CertificateRules.verify(parsed, authzid: authzid, domain: domain, nowMillis: now) { user in
            self.state.registrations(domain: domain, user: user)
        }
        switch result {
        case .failure(let failure):
            throw .verification(failure)
        case .success(let jid):
            let live = state.liveCertificates(domain: domain, user: jid.bare)
            guard let record = live.first(where: { CertificateRules.constantTimeEqual($0.id.sha256, parsed.sha256) }) else {
                throw .verification(.notRegistered)
            }
            return (jid, record)
        }
    }

    /// The state of each (user, fingerprint) now: what an XMPP server re-checks for its
    /// certificate sessions after it may have missed events.
    func certificateStatus(domain: String, of refs: [(user: JID, sha256: [UInt8])]) -> [CertificateStatus] {
        let now = Int64(wallClockMillis())
        var byUser: [JID: [CertificateRecord]] = [:]
        return refs.map { ref in
            let records = byUser[ref.user] ?? state.certificates(domain: domain, user: ref.user)
            byUser[ref.user] = records
            guard let record = records.first(where: { $0.id.sha256 == ref.sha256 }) else { return .unknown }
            switch record.removal?.kind {
            case .revoked?: return .revoked
            case .disabled?: return .disabled
            case nil:
                guard let content = record.content else { return .unknown }
                return now < content.notBeforeMillis || now > content.notAfterMillis ? .expired : .active
            }
        }
    }
}
