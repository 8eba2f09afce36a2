#!/usr/bin/env bash
# Creates the cluster CA and per-node certificates for keystored peer TLS (DESIGN.md "Cluster" 1).
#
# Usage: gen-certs.sh [--force] OUT_DIR NODE [NODE...]
#
#   OUT_DIR/ca.pem, ca.key    cluster CA; created if ca.pem is absent, reused (never replaced) otherwise,
#                             because replacing it would silently split an existing cluster.
#   OUT_DIR/NODE.pem, .key    node certificate with subjectAltName DNS:NODE, IP:127.0.0.1; kept if both files
#                             exist, so re-running the script for a new node does not rotate everyone else.
#   --force                   re-issue the listed node certificates (new keys) even if they exist.
#
# Environment (mainly for tests): KEYSTORE_CERT_DAYS (node validity, default 825),
# KEYSTORE_CA_DAYS (CA validity, default 3650), OPENSSL (binary, default "openssl").
set -euo pipefail

OPENSSL="${OPENSSL:-openssl}"
CERT_DAYS="${KEYSTORE_CERT_DAYS:-825}"
CA_DAYS="${KEYSTORE_CA_DAYS:-3650}"

die() { echo "gen-certs.sh: $*" >&2; exit 1; }
usage() { echo "usage: gen-certs.sh [--force] OUT_DIR NODE [NODE...]" >&2; exit 2; }

force=0
args=()
for a in "$@"; do
    case "$a" in
        --force) force=1 ;;
        -h|--help) usage ;;
        -*) die "unknown option '$a'; the only option is --force" ;;
        *) args+=("$a") ;;
    esac
done
[ "${#args[@]}" -ge 2 ] || usage
out="${args[0]}"
nodes=("${args[@]:1}")

[[ "$CERT_DAYS" =~ ^[1-9][0-9]*$ ]] || die "KEYSTORE_CERT_DAYS must be a positive integer, got '$CERT_DAYS'"
[[ "$CA_DAYS" =~ ^[1-9][0-9]*$ ]] || die "KEYSTORE_CA_DAYS must be a positive integer, got '$CA_DAYS'"
command -v "$OPENSSL" >/dev/null 2>&1 || die "'$OPENSSL' not found; install the openssl CLI or set OPENSSL"

# Node ids become DNS names and file names: restrict them to DNS label characters so neither the
# certificate extension nor the path can be subverted.
for n in "${nodes[@]}"; do
    [[ "$n" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$ ]] \
        || die "node name '$n' is not a valid DNS name (use letters, digits, '-', '.'; at most 63 chars)"
    [[ "$n" != "ca" ]] || die "node name 'ca' would overwrite the CA files; pick another node name"
done

umask 077
mkdir -p "$out"
tmp="$(mktemp -d "$out/.gen-certs.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

new_ec_key() { "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve -out "$1" 2>/dev/null; }
pubkey_of_key() { "$OPENSSL" pkey -in "$1" -pubout 2>/dev/null; }
pubkey_of_cert() { "$OPENSSL" x509 -in "$1" -noout -pubkey 2>/dev/null; }
random_serial() { echo "0x$("$OPENSSL" rand -hex 16)"; }

# --- cluster CA ---------------------------------------------------------------------------------
if [ -f "$out/ca.pem" ]; then
    echo "keeping existing CA $out/ca.pem"
    ca_present_key=0
    [ -f "$out/ca.key" ] && ca_present_key=1
else
    [ ! -e "$out/ca.key" ] || die "$out/ca.key exists without ca.pem; restore ca.pem or remove ca.key to create a new CA"
    new_ec_key "$tmp/ca.key" || die "cannot generate the CA key"
    cat > "$tmp/ca.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = keystore cluster CA
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF
    "$OPENSSL" req -x509 -new -config "$tmp/ca.cnf" -key "$tmp/ca.key" -sha256 -days "$CA_DAYS" \
        -set_serial "$(random_serial)" -out "$tmp/ca.pem" 2>"$tmp/err" \
        || die "cannot create the CA certificate: $(tail -n 3 "$tmp/err")"
    chmod 600 "$tmp/ca.key"; chmod 644 "$tmp/ca.pem"
    mv "$tmp/ca.key" "$out/ca.key"
    mv "$tmp/ca.pem" "$out/ca.pem"
    ca_present_key=1
    echo "created CA $out/ca.pem"
fi

# --- node certificates --------------------------------------------------------------------------
ca_checked=0
for n in "${nodes[@]}"; do
    if [ "$force" -eq 0 ] && [ -f "$out/$n.pem" ] && [ -f "$out/$n.key" ]; then
        if ! "$OPENSSL" verify -CAfile "$out/ca.pem" "$out/$n.pem" >/dev/null 2>&1; then
            echo "warning: kept $out/$n.pem does not verify against $out/ca.pem (other CA or expired); re-run with --force to re-issue it" >&2
        fi
        echo "keeping existing $out/$n.pem"
        continue
    fi
    if [ "$ca_checked" -eq 0 ]; then
        [ "$ca_present_key" -eq 1 ] || die "$out/ca.key is missing; it is needed to sign '$n' (restore it from backup)"
        [ "$(pubkey_of_key "$out/ca.key")" = "$(pubkey_of_cert "$out/ca.pem")" ] \
            || die "$out/ca.key does not match $out/ca.pem; restore the matching pair"
        ca_checked=1
    fi
    new_ec_key "$tmp/$n.key" || die "cannot generate the key for '$n'"
    "$OPENSSL" req -new -key "$tmp/$n.key" -subj "/CN=$n" -out "$tmp/$n.csr" 2>"$tmp/err" \
        || die "cannot create the request for '$n': $(tail -n 3 "$tmp/err")"
    cat > "$tmp/$n.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:$n, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
    "$OPENSSL" x509 -req -in "$tmp/$n.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -sha256 \
        -days "$CERT_DAYS" -set_serial "$(random_serial)" -extfile "$tmp/$n.ext" -out "$tmp/$n.pem" 2>"$tmp/err" \
        || die "cannot sign the certificate for '$n': $(tail -n 3 "$tmp/err")"
    chmod 600 "$tmp/$n.key"; chmod 644 "$tmp/$n.pem"
    # Key first: a crash between the two moves leaves a pair that the next run re-issues, never a
    # certificate whose key is missing being kept.
    mv -f "$tmp/$n.key" "$out/$n.key"
    mv -f "$tmp/$n.pem" "$out/$n.pem"
    echo "issued $out/$n.pem (DNS:$n, valid $CERT_DAYS days)"
done
