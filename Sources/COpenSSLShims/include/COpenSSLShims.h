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
/// Bytes waiting in a memory BIO (BIO_ctrl_pending is a function, but kept here for symmetry).
size_t ks_BIO_pending(BIO *bio);

/// subjectAltName access; the returned list must be freed with ks_general_names_free.
GENERAL_NAMES *ks_X509_get_subject_alt_names(X509 *cert);
int ks_general_names_count(const GENERAL_NAMES *names);
/// Returns 1 and sets data/len if entry i is a dNSName, 0 otherwise.
int ks_general_name_dns_at(const GENERAL_NAMES *names, int i, const unsigned char **data, int *len);
void ks_general_names_free(GENERAL_NAMES *names);

/// First certificate of the peer's chain as received (the leaf, on the client side) even when
/// verification failed; NULL if none. Not owned by the caller.
X509 *ks_SSL_peer_chain_leaf(const SSL *ssl);
/// not-after of a certificate as seconds since the epoch; returns 0 on failure, 1 on success.
int ks_X509_not_after_epoch(const X509 *cert, int64_t *out);
#endif
