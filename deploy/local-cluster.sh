#!/usr/bin/env bash
# Brings up (or stops) a real 3-node keystore cluster on loopback from cluster.example.json:
# certificates from deploy/gen-certs.sh, random PSK files, one keystored per node, then shows
# the nodes serving the same RAM key over their Unix sockets.
#
# Usage: deploy/local-cluster.sh start|stop|status
#
#   start   installs missing Debian packages (as root), creates the example's socket_group
#           (keystore-clients, as root), builds (debug), starts node1..node3, shows them.
#   stop    sends SIGTERM and returns once every node has exited (SIGKILL after 15 s).
#
# Environment: KEYSTORE_BIN_DIR=DIR uses keystored/keystorectl from DIR instead of building.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
config="$root/cluster.example.json"
run="$root/run"
nodes=(node1 node2 node3)
sockdir=/tmp/keystore-example
. "$root/deploy/common.sh"

need_packages() {
    local missing=()
    for p in libssl-dev libsodium-dev libsqlite3-dev openssl curl; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" -eq 0 ]; then
            echo "installing ${missing[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            echo "missing packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
            exit 1
        fi
    fi
}

# The example hands its sockets to a group (socket_group): its members may connect, and the
# config's "clients" rules decide what each uid may do. The daemon must belong to the group to
# give the socket to it (root always can).
socket_group() { sed -n 's/.*"socket_group": *"\([^"]*\)".*/\1/p' "$config" | head -n 1; }

need_socket_group() {
    local group
    group="$(socket_group)"
    [ -n "$group" ] || return 0
    if ! getent group "$group" >/dev/null; then
        if [ "$(id -u)" -eq 0 ]; then
            groupadd --system "$group"
            echo "created group $group (the example's socket_group: members may connect to the node sockets)"
        else
            echo "cluster.example.json gives the node sockets to group '$group', which does not exist:" >&2
            echo "  sudo groupadd --system $group && sudo usermod -aG $group $(id -un)   # then log in again" >&2
            exit 1
        fi
    elif [ "$(id -u)" -ne 0 ] && ! id -nG | tr ' ' '\n' | grep -qx "$group"; then
        echo "the nodes run as $(id -un), who must be in group '$group' (cluster.example.json's socket_group):" >&2
        echo "  sudo usermod -aG $group $(id -un)   # then log in again" >&2
        exit 1
    fi
}

bindir() {
    if [ -n "${KEYSTORE_BIN_DIR:-}" ]; then echo "$KEYSTORE_BIN_DIR"; else echo "$root/.build/debug"; fi
}
bin() { echo "$(bindir)/$1"; }

build() {
    [ -n "${KEYSTORE_BIN_DIR:-}" ] || build_products "$root" keystored keystorectl
}

start() {
    need_packages
    need_socket_group
    build
    mkdir -p "$run/psk" "$run/logs" "$sockdir"
    "$root/deploy/gen-certs.sh" "$run/certs" "${nodes[@]}" >/dev/null
    ( umask 077
      [ -s "$run/psk/first_provision" ] || openssl rand -hex 32 > "$run/psk/first_provision"
      [ -s "$run/psk/second_provision" ] || openssl rand -hex 32 > "$run/psk/second_provision" )
    for n in "${nodes[@]}"; do
        if [ -f "$run/$n.pid" ] && node_running "$(cat "$run/$n.pid")"; then
            echo "$n already running (pid $(cat "$run/$n.pid"))"; continue
        fi
        "$(bin keystored)" --config "$config" --node "$n" >"$run/logs/$n.log" 2>&1 &
        echo $! > "$run/$n.pid"
    done
    for n in "${nodes[@]}"; do
        for _ in $(seq 1 100); do
            if curl -sf --unix-socket "$sockdir/$n.sock" http://localhost/v1/health 2>/dev/null | grep -q '"ready":true'; then break; fi
            if ! kill -0 "$(cat "$run/$n.pid")" 2>/dev/null; then echo "$n exited:"; cat "$run/logs/$n.log"; exit 1; fi
            sleep 0.1
        done
    done
    status
    echo
    echo "The same RAM key from every node (first 40 base64 characters):"
    for n in "${nodes[@]}"; do
        printf '  %s: ' "$n"
        curl -s --unix-socket "$sockdir/$n.sock" http://localhost/v1/domains/first.com/keys/token_secret \
            | sed -E 's/.*"key":"([^"]{40}).*/\1/'
    done
    echo
    echo "Try:"
    echo "  curl -s --unix-socket $sockdir/node1.sock http://localhost/v1/domains/first.com/keys/token_secret"
    echo "  $(bin keystorectl) --socket $sockdir/node2.sock keys get first.com provision_pre_shared"
    echo "  $(bin keystorectl) --socket $sockdir/node3.sock keys rotate first.com token_secret"
    local group gid
    group="$(socket_group)"
    if [ -n "$group" ] && [ "$(id -u)" -eq 0 ]; then
        gid="$(getent group "$group" | cut -d: -f3)"
        echo "  # uid 1001 in group $group: may read first.com's keys, nothing of second.com (the \"clients\" rules)"
        echo "  setpriv --reuid=1001 --regid=1001 --groups=$gid $(bin keystorectl) --socket $sockdir/node1.sock keys get first.com token_secret"
    fi
    echo "  deploy/local-cluster.sh stop"
}

status() {
    "$(bin keystorectl)" --socket "$sockdir/node1.sock" cluster status
    echo
    "$(bin keystorectl)" --socket "$sockdir/node1.sock" keys list first.com
}

stop() {
    stop_nodes "$run" "${nodes[@]}"
    echo "(the RAM keys are gone with the last node, by design)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
