#include "COpenSSLShims.h"
#include <time.h>

int ks_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_min_proto_version(ctx, version); }
int ks_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) { return (int)SSL_CTX_set_max_proto_version(ctx, version); }
long ks_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_session_cache_mode(ctx, mode); }
long ks_SSL_SESS_CACHE_OFF(void) { return SSL_SESS_CACHE_OFF; }
uint64_t ks_peer_ssl_options(void) {
    return (uint64_t)(SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
}
int ks_SSL_set_tlsext_host_name(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }

int ks_general_names_count(const GENERAL_NAMES *names) { return names ? sk_GENERAL_NAME_num(names) : 0; }
int ks_general_name_dns_at(const GENERAL_NAMES *names, int i, const unsigned char **data, int *len) {
    if (!names || i < 0 || i >= sk_GENERAL_NAME_num(names)) return 0;
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
    if (!gn || gn->type != GEN_DNS || !gn->d.dNSName) return 0;
    *data = ASN1_STRING_get0_data(gn->d.dNSName);
    *len = ASN1_STRING_length(gn->d.dNSName);
    return 1;
}
void ks_general_names_free(GENERAL_NAMES *names) { GENERAL_NAMES_free(names); }

X509 *ks_SSL_peer_chain_leaf(const SSL *ssl) {
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    if (!chain || sk_X509_num(chain) < 1) return NULL;
    return sk_X509_value(chain, 0);
}
int ks_X509_not_after_epoch(const X509 *cert, int64_t *out) {
    const ASN1_TIME *t = X509_get0_notAfter(cert);
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    *out = (int64_t)timegm(&tm);
    return 1;
}

// --- CertificateRegistry (X.509 for XEP-0257) ---
#include <string.h>
GENERAL_NAMES *ks_X509_get_subject_alt_names_checked(X509 *cert, int *status) {
    int crit = 0;
    GENERAL_NAMES *names = (GENERAL_NAMES *)X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
    if (names) { *status = 1; return names; }
    *status = (crit == -1) ? 0 : -1;  // -1: not present; -2: duplicated; >= 0: present but undecodable
    return NULL;
}
int ks_general_name_xmppaddr_at(const GENERAL_NAMES *names, int i, int *valueType,
                                const unsigned char **data, int *len) {
    if (!names || i < 0 || i >= sk_GENERAL_NAME_num(names)) return 0;
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
    if (!gn || gn->type != GEN_OTHERNAME || !gn->d.otherName || !gn->d.otherName->type_id) return 0;
    if (OBJ_obj2nid(gn->d.otherName->type_id) != NID_XmppAddr) return 0;
    const ASN1_TYPE *v = gn->d.otherName->value;
    *data = NULL;
    *len = 0;
    *valueType = v ? v->type : -1;
    if (v && v->type == V_ASN1_UTF8STRING && v->value.utf8string) {
        *data = ASN1_STRING_get0_data(v->value.utf8string);
        *len = ASN1_STRING_length(v->value.utf8string);
    }
    return 1;
}
int ks_X509_not_before_epoch(const X509 *cert, int64_t *out) {
    const ASN1_TIME *t = X509_get0_notBefore(cert);
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    *out = (int64_t)timegm(&tm);
    return 1;
}
int ks_X509_subject_rfc2253(const X509 *cert, char *buf, size_t cap) {
    if (!buf || cap == 0) return -1;
    buf[0] = 0;
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio) return -1;
    int result = -1;
    if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
        char *mem = NULL;
        long n = BIO_get_mem_data(bio, &mem);
        if (n >= 0 && n <= 0x7fffffff) {
            size_t copy = (size_t)n < cap - 1 ? (size_t)n : cap - 1;
            if (copy > 0 && mem) memcpy(buf, mem, copy);
            buf[copy] = 0;
            result = (int)n;
        }
    }
    BIO_free(bio);
    return result;
}
