#ifndef KEYSTORE_COPENSSLSHIMS_H
#define KEYSTORE_COPENSSLSHIMS_H
// placeholder: filled in by the PeerTLS work
int ks_openssl_shims_placeholder(void);
#endif
