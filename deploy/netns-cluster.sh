#!/usr/bin/env bash
# Starts N keystored nodes, each in its own network namespace with its own address (10.232.0.X),
# joined by a bridge: a multi-host cluster on one machine. Needs root and iproute2.
#
#   deploy/netns-cluster.sh start [N]      # default N=3; certs and config under run/netns/
#   deploy/netns-cluster.sh partition NODE...   # cut NODEs off from the rest
#   deploy/netns-cluster.sh heal
#   deploy/netns-cluster.sh status
#   deploy/netns-cluster.sh stop
#
# Sockets are in /tmp/keystore-netns/NODE.sock (the filesystem is shared by all namespaces).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
run="$root/run/netns"
sockdir=/tmp/keystore-netns
prefix=ksn
ip=$(command -v ip)
. "$root/deploy/common.sh"

[ "$(id -u)" -eq 0 ] || { echo "netns-cluster.sh: needs root (network namespaces)" >&2; exit 1; }

nodes() { cat "$run/nodes" 2>/dev/null; }

start() {
    local n="${1:-3}"
    mkdir -p "$run/logs" "$run/psk" "$sockdir"
    build_products "$root" keystored keystorectl
    local names=()
    for i in $(seq 1 "$n"); do names+=("node$i"); done
    printf '%s\n' "${names[@]}" > "$run/nodes"
    "$root/deploy/gen-certs.sh" "$run/certs" "${names[@]}" >/dev/null
    ( umask 077; [ -s "$run/psk/first_provision" ] || openssl rand -hex 32 > "$run/psk/first_provision" )
    $ip link add ${prefix}b0 type bridge 2>/dev/null || true
    $ip link add ${prefix}b1 type bridge 2>/dev/null || true
    $ip link set ${prefix}b0 up; $ip link set ${prefix}b1 up
    local entries=""
    for i in $(seq 1 "$n"); do
        local node="node$i" ns="${prefix}-node$i"
        $ip netns add "$ns" 2>/dev/null || true
        if ! $ip link show ${prefix}h$i >/dev/null 2>&1; then
            $ip link add ${prefix}h$i type veth peer name ${prefix}n$i
            $ip link set ${prefix}n$i netns "$ns"
            $ip netns exec "$ns" $ip addr add 10.232.0.$i/24 dev ${prefix}n$i
            $ip netns exec "$ns" $ip link set ${prefix}n$i up
            $ip netns exec "$ns" $ip link set lo up
        fi
        $ip link set ${prefix}h$i master ${prefix}b0
        $ip link set ${prefix}h$i up
        entries+="\"$node\": { \"peer\": \"10.232.0.$i:7400\", \"socket\": \"$sockdir/{node}.sock\", \"data_dir\": \"data/{node}\" },"
    done
    cat > "$run/cluster.json" <<JSON
{ "cluster": "netns-demo",
  "tls": { "ca": "certs/ca.pem", "cert": "certs/{node}.pem", "key": "certs/{node}.key" },
  "join_timeout_ms": 3000,
  "nodes": { ${entries%,} },
  "domains": { "first.com": { "keys": [ { "name": "token_secret", "type": "ram" },
                                        { "name": "provision_pre_shared", "type": "file", "path": "psk/first_provision" } ] } },
  "clients": [ { "uid": 0, "domains": ["*"], "allow": ["*"] } ] }
JSON
    for node in "${names[@]}"; do
        $ip netns exec "${prefix}-$node" "$root/.build/debug/keystored" --config "$run/cluster.json" --node "$node" \
            >"$run/logs/$node.log" 2>&1 &
        echo $! > "$run/$node.pid"
    done
    for node in "${names[@]}"; do
        for _ in $(seq 1 100); do
            curl -sf --unix-socket "$sockdir/$node.sock" http://localhost/v1/health 2>/dev/null | grep -q '"ready":true' && break
            sleep 0.1
        done
    done
    status
}

partition() {
    for node in "$@"; do $ip link set ${prefix}h${node#node} master ${prefix}b1; done
    echo "partitioned: $* | the rest"
}

heal() {
    for node in $(nodes); do $ip link set ${prefix}h${node#node} master ${prefix}b0; done
    echo "healed"
}

status() {
    for node in $(nodes); do
        echo "== $node (10.232.0.${node#node})"
        "$root/.build/debug/keystorectl" --socket "$sockdir/$node.sock" cluster status || true
    done
}

stop() {
    # Nodes first, and only once they have exited: their namespaces and links go next.
    local names
    mapfile -t names < <(nodes)
    stop_nodes "$run" "${names[@]}"
    for node in $(nodes); do
        $ip netns del "${prefix}-$node" 2>/dev/null || true
        $ip link del ${prefix}h${node#node} 2>/dev/null || true
    done
    $ip link del ${prefix}b0 2>/dev/null || true
    $ip link del ${prefix}b1 2>/dev/null || true
    echo "removed the namespaces and links"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    partition) shift; partition "$@" ;;
    heal) heal ;;
    status) status ;;
    stop) stop ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
