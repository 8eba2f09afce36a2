#ifndef KEYSTORE_COPENSSLSHIMS_H
#define KEYSTORE_COPENSSLSHIMS_H
// OpenSSL exposes these as macros (or type-generic stack helpers) that Swift cannot import; each is a
// thin real function so PeerTLS can call it.
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

int ks_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);
int ks_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);
long ks_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode);
long ks_SSL_SESS_CACHE_OFF(void);
/// SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE
uint64_t ks_peer_ssl_options(void);
int ks_SSL_set_tlsext_host_name(SSL *ssl, const char *name);

/// subjectAltName entry access, for lists from ks_X509_get_subject_alt_names_checked.
int ks_general_names_count(const GENERAL_NAMES *names);
/// Returns 1 and sets data/len if entry i is a dNSName, 0 otherwise.
int ks_general_name_dns_at(const GENERAL_NAMES *names, int i, const unsigned char **data, int *len);
void ks_general_names_free(GENERAL_NAMES *names);

/// First certificate of the peer's chain as received (the leaf, on the client side) even when
/// verification failed; NULL if none. Not owned by the caller.
X509 *ks_SSL_peer_chain_leaf(const SSL *ssl);
/// not-after of a certificate as seconds since the epoch; returns 0 on failure, 1 on success.
int ks_X509_not_after_epoch(const X509 *cert, int64_t *out);
// --- CertificateRegistry (X.509 for XEP-0257) ---
/// subjectAltName with the decode outcome, because "no SAN" is a normal certificate while a SAN that
/// fails to decode (or appears twice) must reject it. *status: 1 decoded, 0 absent, -1 malformed or
/// duplicated. The returned list (NULL unless *status == 1) must be freed with ks_general_names_free.
GENERAL_NAMES *ks_X509_get_subject_alt_names_checked(X509 *cert, int *status);
/// Returns 1 if entry i is an otherName whose type-id is id-on-xmppAddr (1.3.6.1.5.5.7.8.5), else 0.
/// On 1, *valueType is the ASN.1 tag of the value (V_ASN1_UTF8STRING = 12 when well-formed) and, only
/// for a UTF8String, data/len point at its content bytes (otherwise data = NULL, len = 0).
int ks_general_name_xmppaddr_at(const GENERAL_NAMES *names, int i, int *valueType,
                                const unsigned char **data, int *len);
/// not-before of a certificate as seconds since the epoch; returns 0 on failure, 1 on success.
int ks_X509_not_before_epoch(const X509 *cert, int64_t *out);
/// Subject DN in RFC 2253 form (non-ASCII and control bytes escaped), written NUL-terminated into buf and
/// truncated to cap-1 bytes; returns the untruncated length, or -1 on failure.
int ks_X509_subject_rfc2253(const X509 *cert, char *buf, size_t cap);
#endif
