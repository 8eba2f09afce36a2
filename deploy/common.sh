# shellcheck shell=bash
# Shared by deploy/local-cluster.sh and deploy/netns-cluster.sh (sourced, not run).

# Seconds stop_nodes waits for a node before SIGKILL (the systemd unit's TimeoutStopSec).
stop_timeout="${stop_timeout:-15}"

# Builds the given products (debug). No redirection: SwiftPM prints compiler errors on stdout,
# and a failed build must show them.
build_products() {
    local root="$1"; shift
    local p
    echo "building $* (debug)..."
    for p in "$@"; do
        (cd "$root" && swift build --product "$p") || { echo "$(basename "$0"): the build failed (errors above)" >&2; exit 1; }
    done
}

# True if PID is a live keystored: not exited, not a zombie, not a recycled pid now running
# something else (a stale pid file must never make us signal an unrelated process).
node_running() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1 | grep -q 'keystored$' || return 1
    state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)"
    [ -n "$state" ] && [ "$state" != Z ]
}

# stop_nodes RUN_DIR NODE...: SIGTERM to every node with a live RUN_DIR/NODE.pid, then waits
# until each has exited (graceful shutdown closes peers and removes the socket), SIGKILL after
# $stop_timeout s. Returns only when none of them runs, so "stopped" is true and an immediate
# start does not race the old processes for ports and sockets. Prints what it did.
stop_nodes() {
    local run="$1"; shift
    local n pid i stopping=() names=()
    for n in "$@"; do
        [ -f "$run/$n.pid" ] || continue
        pid="$(cat "$run/$n.pid")"
        if node_running "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            stopping+=("$pid"); names+=("$n")
        else
            echo "$n was not running"
            rm -f "$run/$n.pid"
        fi
    done
    local deadline=$((SECONDS + stop_timeout))
    for i in "${!stopping[@]}"; do
        pid="${stopping[$i]}"; n="${names[$i]}"
        while node_running "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
        if node_running "$pid"; then
            echo "$n (pid $pid) still running after ${stop_timeout}s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            while node_running "$pid"; do sleep 0.05; done
        fi
        rm -f "$run/$n.pid"
    done
    if [ "${#names[@]}" -gt 0 ]; then echo "stopped ${names[*]}"; else echo "no node was running"; fi
}
