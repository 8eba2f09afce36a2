#!/usr/bin/env bash
# Brings up (or stops) a real 3-node keystore cluster on loopback from cluster.example.json:
# certificates from deploy/gen-certs.sh, random PSK files, one keystored per node, then shows
# the nodes serving the same RAM key over their Unix sockets.
#
# Usage: deploy/local-cluster.sh start|stop|status
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
config="$root/cluster.example.json"
run="$root/run"
nodes=(node1 node2 node3)
sockdir=/tmp/keystore-example

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

bin() { echo "$root/.build/debug/$1"; }

start() {
    need_packages
    echo "building keystored and keystorectl (debug)..."
    (cd "$root" && swift build --product keystored >/dev/null && swift build --product keystorectl >/dev/null)
    mkdir -p "$run/psk" "$run/logs" "$sockdir"
    "$root/deploy/gen-certs.sh" "$run/certs" "${nodes[@]}" >/dev/null
    ( umask 077
      [ -s "$run/psk/first_provision" ] || openssl rand -hex 32 > "$run/psk/first_provision"
      [ -s "$run/psk/second_provision" ] || openssl rand -hex 32 > "$run/psk/second_provision" )
    for n in "${nodes[@]}"; do
        if [ -f "$run/$n.pid" ] && kill -0 "$(cat "$run/$n.pid")" 2>/dev/null; then
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
    echo "  deploy/local-cluster.sh stop"
}

status() {
    "$(bin keystorectl)" --socket "$sockdir/node1.sock" cluster status
    echo
    "$(bin keystorectl)" --socket "$sockdir/node1.sock" keys list first.com
}

stop() {
    for n in "${nodes[@]}"; do
        if [ -f "$run/$n.pid" ]; then
            kill "$(cat "$run/$n.pid")" 2>/dev/null || true
            rm -f "$run/$n.pid"
        fi
    done
    echo "stopped (the RAM keys are gone with the last node, by design)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
