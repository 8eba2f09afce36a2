#include "COpenSSLShims.h"
int ks_openssl_shims_placeholder(void) { return 0; }
