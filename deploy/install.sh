#!/usr/bin/env bash
# Builds keystore in release mode and installs it as a systemd service.
#
# Usage: deploy/install.sh [--prefix DIR] [--sysconfdir DIR] [--scratch-path DIR]
#        DESTDIR=/tmp/stage deploy/install.sh       # stage into a directory (packaging, tests)
#
#   --prefix DIR        binaries, unit, sysusers.d, tmpfiles.d and docs go under DIR (default /usr/local):
#                         DIR/bin/keystored, DIR/bin/keystorectl                          0755
#                         DIR/lib/systemd/system/keystored@.service                        0644
#                         DIR/lib/sysusers.d/keystore.conf   (user keystore, group keystore-clients)
#                         DIR/lib/tmpfiles.d/keystore.conf   (/etc/keystore, /run/keystore, /var/lib/keystore)
#                         DIR/share/doc/keystore/  README.md SECURITY.md operations.md
#                                                  cluster.production.json grafana-dashboard.json
#   --sysconfdir DIR    the config goes to DIR/keystore/cluster.json (default /etc). An existing
#                       cluster.json is never overwritten: the example then goes beside it as
#                       cluster.json.example.
#   --scratch-path DIR  SwiftPM build directory (default: the package's .build).
#   DESTDIR             staging root prepended to every path (default /). With DESTDIR=/ (as root)
#                       the script also creates the user and directories (systemd-sysusers,
#                       systemd-tmpfiles) and reloads systemd; with a staging root it prints those
#                       steps for whoever installs the staged tree.
#
# Safe to run again (an upgrade): binaries, unit and docs are replaced, the config is kept.
# docs/operations.md describes the installed layout, the first start and upgrades.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/usr/local
sysconfdir=/etc
scratch=""

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix) [ "$#" -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift ;;
        --prefix=*) prefix="${1#--prefix=}" ;;
        --sysconfdir) [ "$#" -ge 2 ] || die "--sysconfdir needs a directory"; sysconfdir="$2"; shift ;;
        --sysconfdir=*) sysconfdir="${1#--sysconfdir=}" ;;
        --scratch-path) [ "$#" -ge 2 ] || die "--scratch-path needs a directory"; scratch="$2"; shift ;;
        --scratch-path=*) scratch="${1#--scratch-path=}" ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
for d in "$prefix" "$sysconfdir"; do
    [[ "$d" == /* ]] || die "'$d' is not an absolute path; --prefix and --sysconfdir name paths on the target system"
done
prefix="${prefix%/}"; sysconfdir="${sysconfdir%/}"
destdir="${DESTDIR:-/}"
[[ "$destdir" == /* ]] || destdir="$(pwd)/$destdir"
destdir="${destdir%/}"   # "" for the real root
if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    die "installing into / needs root (or set DESTDIR=DIR to stage the files)"
fi

bindir="$prefix/bin"
unitdir="$prefix/lib/systemd/system"
sysusersdir="$prefix/lib/sysusers.d"
tmpfilesdir="$prefix/lib/tmpfiles.d"
docdir="$prefix/share/doc/keystore"
confdir="$sysconfdir/keystore"

# --- build ---------------------------------------------------------------------------------------
# No redirection: SwiftPM prints compiler errors on stdout. DESTDIR is not the build's business
# (and SwiftPM re-plans the build, ~15 s, whenever its environment changes).
build_args=(-c release)
[ -z "$scratch" ] || build_args+=(--scratch-path "$scratch")
echo "building keystored and keystorectl (release)..."
for product in keystored keystorectl; do
    (cd "$root" && env -u DESTDIR swift build "${build_args[@]}" --product "$product") \
        || die "the release build failed (errors above); nothing was installed"
done
products="$(cd "$root" && env -u DESTDIR swift build "${build_args[@]}" --show-bin-path)"

# --- install -------------------------------------------------------------------------------------
# install(1) replaces a file by writing a new one and renaming it, so a running keystored keeps
# its old binary until it restarts.
put() { # put MODE SOURCE TARGET (TARGET relative to the target root)
    install -D -m "$1" "$2" "$destdir$3"
    echo "installed $3"
}
# The unit and tmpfiles.d name the default paths; other --prefix/--sysconfdir values are
# substituted so the installed files agree with where things went.
rewrite() {
    sed -e "s|/usr/local/|$prefix/|g" -e "s|/etc/keystore|$confdir|g" "$1"
}
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

put 0755 "$products/keystored" "$bindir/keystored"
put 0755 "$products/keystorectl" "$bindir/keystorectl"
rewrite "$root/deploy/keystored@.service" > "$tmp/keystored@.service"
put 0644 "$tmp/keystored@.service" "$unitdir/keystored@.service"
put 0644 "$root/deploy/sysusers.d/keystore.conf" "$sysusersdir/keystore.conf"
rewrite "$root/deploy/tmpfiles.d/keystore.conf" > "$tmp/tmpfiles.conf"
put 0644 "$tmp/tmpfiles.conf" "$tmpfilesdir/keystore.conf"
for doc in README.md SECURITY.md docs/operations.md; do
    put 0644 "$root/$doc" "$docdir/$(basename "$doc")"
done
put 0644 "$root/deploy/cluster.production.json" "$docdir/cluster.production.json"
put 0644 "$root/deploy/grafana/keystore.json" "$docdir/grafana-dashboard.json"

# The config: never overwrite the operator's. It holds no secrets (those are in certs/ and psk/),
# and keystored runs as keystore, hence root:keystore 0640 (tmpfiles.d applies the group).
[ -d "$destdir$confdir" ] || install -d -m 0750 "$destdir$confdir"
config="$confdir/cluster.json"
if [ ! -e "$destdir$config" ]; then
    install -m 0640 "$root/deploy/cluster.production.json" "$destdir$config"
    echo "installed $config (the annotated example: edit it before the first start)"
elif cmp -s "$root/deploy/cluster.production.json" "$destdir$config"; then
    echo "kept $config (still the unedited example)"
else
    install -m 0640 "$root/deploy/cluster.production.json" "$destdir$config.example"
    echo "kept your $config; installed the current example beside it as $config.example"
fi

# --- users, directories, systemd -----------------------------------------------------------------
steps=(
    "systemd-sysusers $sysusersdir/keystore.conf"
    "systemd-tmpfiles --create $tmpfilesdir/keystore.conf"
    "systemctl daemon-reload"
)
if [ -n "$destdir" ]; then
    echo
    echo "Staged into $destdir. On the target system, after copying the tree, run as root:"
    printf '  %s\n' "${steps[@]}"
else
    if ! command -v systemd-sysusers >/dev/null || ! command -v systemd-tmpfiles >/dev/null; then
        die "systemd-sysusers/systemd-tmpfiles not found; create the keystore user and directories by hand (see $sysusersdir/keystore.conf and $tmpfilesdir/keystore.conf)"
    fi
    systemd-sysusers "$sysusersdir/keystore.conf"
    systemd-tmpfiles --create "$tmpfilesdir/keystore.conf"
    echo "created the keystore user and keystore-clients group, $confdir, /run/keystore, /var/lib/keystore"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        echo "reloaded systemd"
    fi
fi
echo
echo "Next (docs/operations.md, \"First start\"): certificates into $confdir/certs, PSK files into"
echo "$confdir/psk, edit $config, add client users to keystore-clients, then on each node:"
echo "  systemctl enable --now keystored@NODE"
echo "An upgrade: run this script again, then restart one node at a time (keystored@NODE)."
