#!/usr/bin/env bash
# Creates the cluster CA and per-node certificates for keystored peer TLS (docs/config.md, "tls").
#
# Usage: gen-certs.sh [--force] [--ca-dir DIR] [--ip ADDR]... OUT_DIR NODE [NODE...]
#
#   OUT_DIR/ca.pem            the cluster CA certificate (public: every node's tls.ca).
#   OUT_DIR/NODE.pem, .key    node certificate with subjectAltName DNS:NODE (plus IP:ADDR for each --ip)
#                             and its key; kept if both files exist, so re-running the script for a new
#                             node does not rotate everyone else.
#   CA_DIR/ca.key, ca.pem     the CA's private key and certificate, created if absent and reused (never
#                             replaced) otherwise, because replacing them would silently split an existing
#                             cluster. CA_DIR is kept apart from OUT_DIR so that copying OUT_DIR to the
#                             nodes never ships the CA key: nodes never need it. Default: the sibling
#                             directory OUT_DIR-ca (run/certs -> run/certs-ca), mode 0700. Keep it offline.
#   --ca-dir DIR              where the CA key lives (see above).
#   --ip ADDR                 also name ADDR (IPv4 or IPv6) in the certificates issued now. keystored only
#                             checks DNS:NODE; an IP is for other tools that check a peer by its address.
#   --force                   re-issue the listed node certificates (new keys) even if they exist.
#
# An OUT_DIR/ca.key left by an older gen-certs.sh is moved to CA_DIR.
# Environment (mainly for tests): KEYSTORE_CERT_DAYS (node validity, default 825),
# KEYSTORE_CA_DAYS (CA validity, default 3650), OPENSSL (binary, default "openssl").
set -euo pipefail

OPENSSL="${OPENSSL:-openssl}"
CERT_DAYS="${KEYSTORE_CERT_DAYS:-825}"
CA_DAYS="${KEYSTORE_CA_DAYS:-3650}"

die() { echo "gen-certs.sh: $*" >&2; exit 1; }
usage() { echo "usage: gen-certs.sh [--force] [--ca-dir DIR] [--ip ADDR]... OUT_DIR NODE [NODE...]" >&2; exit 2; }

force=0
ca_dir=""
ips=()
args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --ca-dir) [ "$#" -ge 2 ] || die "--ca-dir needs a directory"; ca_dir="$2"; shift ;;
        --ca-dir=*) ca_dir="${1#--ca-dir=}" ;;
        --ip) [ "$#" -ge 2 ] || die "--ip needs an address"; ips+=("$2"); shift ;;
        --ip=*) ips+=("${1#--ip=}") ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1'; options: --force, --ca-dir DIR, --ip ADDR" ;;
        *) args+=("$1") ;;
    esac
    shift
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
# Addresses go into the extension file: only address characters, and openssl must parse them.
san_ips=""
for ip in "${ips[@]}"; do
    [[ "$ip" =~ ^[0-9A-Fa-f.:]+$ && "$ip" =~ [.:] ]] || die "--ip '$ip' is not an IPv4 or IPv6 address"
    san_ips+=", IP:$ip"
done

umask 077
mkdir -p "$out"
out_abs="$(cd "$out" && pwd)"
[ -n "$ca_dir" ] || ca_dir="${out_abs%/}-ca"
mkdir -p "$ca_dir"
chmod 700 "$ca_dir"
[ "$(cd "$ca_dir" && pwd)" != "$out_abs" ] || die "--ca-dir must not be OUT_DIR: the CA key must not sit beside the node keys"
tmp="$(mktemp -d "$out/.gen-certs.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

new_ec_key() { "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve -out "$1" 2>/dev/null; }
pubkey_of_key() { "$OPENSSL" pkey -in "$1" -pubout 2>/dev/null; }
pubkey_of_cert() { "$OPENSSL" x509 -in "$1" -noout -pubkey 2>/dev/null; }
random_serial() { echo "0x$("$OPENSSL" rand -hex 16)"; }

# --- cluster CA ---------------------------------------------------------------------------------
# An older gen-certs.sh kept ca.key in OUT_DIR, beside the node keys: move it to CA_DIR.
if [ -f "$out/ca.key" ]; then
    [ ! -e "$ca_dir/ca.key" ] || die "$out/ca.key and $ca_dir/ca.key both exist; keep the one matching $out/ca.pem in $ca_dir and delete the other"
    [ -f "$out/ca.pem" ] || die "$out/ca.key exists without ca.pem; restore ca.pem or remove ca.key to create a new CA"
    mv "$out/ca.key" "$ca_dir/ca.key"
    cp "$out/ca.pem" "$ca_dir/ca.pem"; chmod 644 "$ca_dir/ca.pem"
    echo "moved $out/ca.key to $ca_dir/ca.key (the CA key no longer lives beside the node keys)"
fi
if [ -f "$ca_dir/ca.pem" ]; then
    if [ -f "$out/ca.pem" ]; then
        cmp -s "$ca_dir/ca.pem" "$out/ca.pem" \
            || die "$out/ca.pem is not the CA in $ca_dir; use the --ca-dir of the CA that made $out, or another OUT_DIR"
    else
        cp "$ca_dir/ca.pem" "$tmp/ca.pem"; chmod 644 "$tmp/ca.pem"; mv "$tmp/ca.pem" "$out/ca.pem"
    fi
    echo "keeping existing CA $out/ca.pem (key in $ca_dir)"
elif [ -f "$out/ca.pem" ]; then
    # A CA whose key was taken offline (or never given): existing node certificates are kept;
    # issuing a new one fails below with the missing key named.
    [ ! -e "$ca_dir/ca.key" ] || die "$ca_dir/ca.key exists without $ca_dir/ca.pem; copy the matching ca.pem there"
    echo "keeping existing CA $out/ca.pem"
else
    [ ! -e "$ca_dir/ca.key" ] || die "$ca_dir/ca.key exists without ca.pem; restore $ca_dir/ca.pem or remove ca.key to create a new CA"
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
    cp -p "$tmp/ca.pem" "$tmp/ca.pem.copy"
    # Key first, then the CA's own copy, then the public copy nodes use: a crash in between
    # leaves a state the next run accepts or names.
    mv "$tmp/ca.key" "$ca_dir/ca.key"
    mv "$tmp/ca.pem.copy" "$ca_dir/ca.pem"
    mv "$tmp/ca.pem" "$out/ca.pem"
    echo "created CA $out/ca.pem (key in $ca_dir/ca.key: keep it offline, nodes never need it)"
fi

# --- node certificates --------------------------------------------------------------------------
ca_checked=0
for n in "${nodes[@]}"; do
    if [ "$force" -eq 0 ] && [ -f "$out/$n.pem" ] && [ -f "$out/$n.key" ]; then
        if ! "$OPENSSL" verify -CAfile "$out/ca.pem" "$out/$n.pem" >/dev/null 2>&1; then
            echo "warning: kept $out/$n.pem does not verify against $out/ca.pem (other CA or expired); re-run with --force to re-issue it" >&2
        fi
        [ "${#ips[@]}" -eq 0 ] || echo "warning: --ip applies to certificates issued now; kept $out/$n.pem as it is (re-run with --force to re-issue it)" >&2
        echo "keeping existing $out/$n.pem"
        continue
    fi
    if [ "$ca_checked" -eq 0 ]; then
        [ -f "$ca_dir/ca.key" ] || die "$ca_dir/ca.key is missing; it is needed to sign '$n' (restore it from backup, or pass --ca-dir)"
        [ "$(pubkey_of_key "$ca_dir/ca.key")" = "$(pubkey_of_cert "$out/ca.pem")" ] \
            || die "$ca_dir/ca.key does not match $out/ca.pem; restore the matching pair"
        ca_checked=1
    fi
    new_ec_key "$tmp/$n.key" || die "cannot generate the key for '$n'"
    "$OPENSSL" req -new -key "$tmp/$n.key" -subj "/CN=$n" -out "$tmp/$n.csr" 2>"$tmp/err" \
        || die "cannot create the request for '$n': $(tail -n 3 "$tmp/err")"
    cat > "$tmp/$n.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:$n$san_ips
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
    "$OPENSSL" x509 -req -in "$tmp/$n.csr" -CA "$out/ca.pem" -CAkey "$ca_dir/ca.key" -sha256 \
        -days "$CERT_DAYS" -set_serial "$(random_serial)" -extfile "$tmp/$n.ext" -out "$tmp/$n.pem" 2>"$tmp/err" \
        || die "cannot sign the certificate for '$n': $(tail -n 3 "$tmp/err")"
    chmod 600 "$tmp/$n.key"; chmod 644 "$tmp/$n.pem"
    # Key first: a crash between the two moves leaves a pair that the next run re-issues, never a
    # certificate whose key is missing being kept.
    mv -f "$tmp/$n.key" "$out/$n.key"
    mv -f "$tmp/$n.pem" "$out/$n.pem"
    echo "issued $out/$n.pem (DNS:$n$san_ips, valid $CERT_DAYS days)"
done
