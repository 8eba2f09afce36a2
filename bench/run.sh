#!/usr/bin/env bash
# Runs the whole keystore benchmark table (BENCHMARKS.md): get-key, hmac and tokens/verify over the
# Unix socket vs nginx's get-key, rotation convergence for 3/10/25-node clusters on loopback, large
# state (a fresh node joining a node with 10,000 RAM keys and 100,000 certificates, its restart,
# RSS, idle peer traffic) and failure detection. Installs what is missing, builds release,
# generates certificates and configs in a temp dir, starts everything, stops everything.
#
# Usage: bench/run.sh [get-key] [converge] [sync] [detect]   (no argument: all four; certs = sync)
# Environment: DURATION (s per load row, default 3), WARMUP (1), CONNECTIONS (1,8,32,128), ROUNDS (3, get-key),
#   NGINX_WORKERS (default: keystored's event loops, min(cores, 4)), FLOOR (1: also measure a bare-NIO
#   server with the same body, the floor of any Swift NIO server; 0: skip it),
#   SIZES (3 10 25), ROTATIONS (40), SYNC_DOMAINS x SYNC_KEYS (100 x 100), CERTS (100000),
#   SYNC_RUNS (3 fresh starts, each with its restart; a summary line per kind), BASE_PORT (27400),
#   DETECT_NODES (5) x DETECT_RUNS (10) kill -9s for detect,
#   KEEP=1 keeps the temp dir (logs, configs) for inspection,
#   KEYSTORED=/path/to/keystored measures that binary instead of this tree's release build (an older
#   build against the same harness, in the same hour: this VM's speed drifts by 10-20 % over a day).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-3}"; WARMUP="${WARMUP:-1}"; CONNECTIONS="${CONNECTIONS:-1,8,32,128}"; ROUNDS="${ROUNDS:-3}"
SIZES="${SIZES:-3 10 25}"; ROTATIONS="${ROTATIONS:-40}"; BASE_PORT="${BASE_PORT:-27400}"
SYNC_DOMAINS="${SYNC_DOMAINS:-100}"; SYNC_KEYS="${SYNC_KEYS:-100}"; SYNC_RUNS="${SYNC_RUNS:-3}"; FLOOR="${FLOOR:-1}"
parts=("$@"); [ "${#parts[@]}" -gt 0 ] || parts=(get-key converge sync detect)

die() { echo "bench/run.sh: $*" >&2; exit 1; }

# --- packages and build ------------------------------------------------------------------------
missing=()
for p in nginx-light gcc libssl-dev libsodium-dev libsqlite3-dev sqlite3 openssl curl iproute2; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]} (sudo apt-get install ${missing[*]})"
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Build output is shown: SwiftPM prints compiler errors on stdout.
echo "building keystored (release)..."
(cd "$root" && swift build -c release --product keystored)
# detect needs only keystored and curl; keystore-bench drives converge, sync, certs and the NIO floor.
if [[ " ${parts[*]} " =~ " converge " || " ${parts[*]} " =~ " sync " || " ${parts[*]} " =~ " certs " || ( " ${parts[*]} " =~ " get-key " && "$FLOOR" = 1 ) ]]; then
    echo "building keystore-bench (release)..."
    (cd "$root" && swift build -c release --product keystore-bench)
fi
bindir="$(cd "$root" && swift build -c release --show-bin-path)"
keystored="${KEYSTORED:-$bindir/keystored}"; bench="$bindir/keystore-bench"
[ -x "$keystored" ] || die "KEYSTORED=$keystored is not an executable"
[ -z "${KEYSTORED:-}" ] || echo "measuring KEYSTORED=$keystored"
loadgen="$bindir/loadgen"
gcc -O2 -Wall -Wextra -o "$loadgen" "$root/bench/loadgen.c" || die "cannot build bench/loadgen.c (apt-get install gcc)"

# --- scratch dir, certificates, cleanup ----------------------------------------------------------
# Short path: Unix socket paths are limited to 107 bytes.
tmp="$(mktemp -d /tmp/ksb-XXXXXX)"
pids=()
stop_all() {
    for pid in "${pids[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
    pids=()
    if [ -f "$tmp/nginx.pid" ]; then kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true; rm -f "$tmp/nginx.pid"; fi
}
cleanup() { stop_all; if [ "${KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

all_nodes=(); for i in $(seq 1 25); do all_nodes+=("node$i"); done
"$root/deploy/gen-certs.sh" "$tmp/certs" "${all_nodes[@]}" >/dev/null

# write_config FILE NODE_COUNT FIRST_PORT DOMAIN_COUNT KEYS_PER_DOMAIN JOIN_TIMEOUT_MS
write_config() {
    local file="$1" n="$2" port="$3" ndom="$4" nkeys="$5" join="$6" i d k sep
    {
        printf '{ "cluster": "bench", "join_timeout_ms": %s, "grace_period_s": 3600, "ram_key_size": 2048,\n' "$join"
        printf '  "tls": { "ca": "%s/certs/ca.pem", "cert": "%s/certs/{node}.pem", "key": "%s/certs/{node}.key" },\n' "$tmp" "$tmp" "$tmp"
        printf '  "nodes": {\n'
        for i in $(seq 1 "$n"); do
            sep=","; [ "$i" -eq "$n" ] && sep=""
            printf '    "node%s": { "peer": "127.0.0.1:%s", "socket": "%s/{node}.sock", "data_dir": "%s/data/{node}" }%s\n' \
                "$i" $((port + i)) "$tmp" "$tmp" "$sep"
        done
        printf '  },\n  "domains": {\n'
        for d in $(seq 1 "$ndom"); do
            local dname="first.com"; [ "$d" -gt 1 ] && dname="d$d.example"
            printf '    "%s": { "keys": [' "$dname"
            for k in $(seq 1 "$nkeys"); do
                local kname="token_secret"; [ "$k" -gt 1 ] && kname="k$k"
                sep=","; [ "$k" -eq "$nkeys" ] && sep=""
                printf '{ "name": "%s", "type": "ram" }%s' "$kname" "$sep"
            done
            sep=","; [ "$d" -eq "$ndom" ] && sep=""
            printf '] }%s\n' "$sep"
        done
        printf '  }\n}\n'
    } > "$file"
}

start_node() { # CONFIG NODE
    "$keystored" --config "$1" --node "$2" >"$tmp/$2.log" 2>&1 &
    pids+=("$!")
}

wait_ready() { # SOCKET PID
    for _ in $(seq 1 600); do
        curl -sf --unix-socket "$1" http://localhost/v1/health 2>/dev/null | grep -q '"ready":true' && return 0
        kill -0 "$2" 2>/dev/null || die "node for $1 exited; log: $(tail -n 3 "${1%.sock}.log")"
        sleep 0.05
    done
    die "$1 not ready after 30 s"
}

load_note() {
    echo "load before this part: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min); busiest other processes:"
    ps -eo pcpu,comm --sort=-pcpu | sed -n '2,4p' | sed 's/^/    /'
}

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
echo "keystored: $keystored"

# --- get-key, hmac, tokens/verify: keystored vs nginx -------------------------------------------
# The client is bench/loadgen.c (one epoll thread, closed loop, keep-alive): it costs a fraction of
# what the server it measures does, so it takes little CPU from either server. Every row uses the
# same client in the same run: keystored's get-key, hmac and tokens/verify, nginx serving a body as
# long as keystored's get-key answer, and (FLOOR=1) a bare-NIO server with that body, alternating
# ROUNDS times per connection count. nginx runs as many workers as keystored has event loops
# (min(cores, 4), KeystoreDaemon.load).
summary_table() { # ROWS_FILE: per connection count and request, the medians over the rounds
    echo "| conns | server and request | req/s | p50 ms | p99 ms | p99.9 ms | **server CPU µs/req** | CPU / nginx get-key | req/s / nginx get-key |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'|' 'function median(list,   n, a, i, j, t) {
            n = split(list, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        { gsub(/^ +| +$/, "", $3); key = ($2 + 0) SUBSEP $3
          if (!(key in seen)) { seen[key] = 1; order[++count] = key }
          rps[key] = rps[key] " " $4; p50[key] = p50[key] " " $5; p99[key] = p99[key] " " $6; p999[key] = p999[key] " " $7; cpu[key] = cpu[key] " " $11 }
        END {
            for (i = 1; i <= count; i++) {
                split(order[i], k, SUBSEP); ng = k[1] SUBSEP "nginx get-key"
                r = median(rps[order[i]]); c = median(cpu[order[i]])
                rc = (ng in seen) ? sprintf("%.2f×", c / median(cpu[ng])) : "-"
                rr = (ng in seen) ? sprintf("%.2f×", r / median(rps[ng])) : "-"
                bold = (k[2] ~ /^keystored/) ? "**" : ""
                printf "| %s | %s | %.0f | %.3f | %.3f | %.3f | %s%.1f%s | %s | %s |\n", k[1], k[2], r, median(p50[order[i]]),
                       median(p99[order[i]]), median(p999[order[i]]), bold, c, bold, rc, rr
            } }' "$1"
}
run_get_key() {
    echo; echo "## get-key, hmac and tokens/verify over the Unix socket: keystored vs nginx"; load_note
    write_config "$tmp/single.json" 1 "$BASE_PORT" 2 2 200
    start_node "$tmp/single.json" node1
    local ks_pid="${pids[-1]}"
    wait_ready "$tmp/node1.sock" "$ks_pid"
    local path=/v1/domains/first.com/keys/token_secret
    local hmac_path=/v1/domains/first.com/keys/token_secret/hmac verify_path=/v1/domains/first.com/tokens/verify
    # hmac: HMAC-SHA256 of a short input; tokens/verify: an access token issued now (valid 1 day).
    printf '{"input":"%s","algorithm":"sha256"}' "$(printf 'alice@first.com 1796574386' | base64 -w0)" > "$tmp/hmac.json"
    local token
    token="$(curl -sf --unix-socket "$tmp/node1.sock" -H 'Content-Type: application/json' \
             -d '{"type":"access","jid":"alice@first.com","valid_for_s":86400}' http://localhost/v1/domains/first.com/tokens \
             | sed -E 's/.*"token":"([^"]*)".*/\1/')" || die "issuing the access token for tokens/verify failed"
    printf '{"token":"%s"}' "$token" > "$tmp/verify.json"
    curl -sf --unix-socket "$tmp/node1.sock" -H 'Content-Type: application/json' --data-binary @"$tmp/verify.json" \
        "http://localhost$verify_path" | grep -q '"valid":true' || die "the issued token does not verify"
    curl -sf --unix-socket "$tmp/node1.sock" -H 'Content-Type: application/json' --data-binary @"$tmp/hmac.json" \
        "http://localhost$hmac_path" | grep -q '"mac"' || die "hmac did not answer with a mac"
    # nginx serves a response of exactly the same length, with random base64 instead of the key so
    # no secret is ever written to disk.
    local real keylen fake body
    real="$(curl -sf --unix-socket "$tmp/node1.sock" "http://localhost$path")"
    keylen="$(printf '%s' "$real" | sed -E 's/.*"key":"([^"]*)".*/\1/' | tr -d '\n' | wc -c)"
    fake="$(openssl rand -base64 $((keylen * 3 / 4 + 3)) | tr -d '\n' | head -c "$keylen")"
    body="$(printf '%s' "$real" | sed -E "s#\"key\":\"[^\"]*\"#\"key\":\"$fake\"#")"
    [ "${#body}" -eq "${#real}" ] || die "nginx body is ${#body} bytes, keystored's ${#real}"
    local loops; loops=$(( $(nproc) < 4 ? $(nproc) : 4 ))
    mkdir -p "$tmp/nginx-tmp"
    sed -e "s#@DIR@#$tmp#g" -e "s#@SOCKET@#$tmp/nginx.sock#" -e "s#@WORKERS@#${NGINX_WORKERS:-$loops}#" \
        "$root/bench/nginx.conf.template" > "$tmp/nginx.conf.part"
    # The body contains '/', '+', '=' and '#': substitute it with awk, not sed.
    BODY="$body"$'\n' awk '{ gsub(/@BODY@/, ENVIRON["BODY"]); print }' "$tmp/nginx.conf.part" > "$tmp/nginx.conf"
    nginx -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" || die "nginx did not start; see $tmp/nginx-error.log"
    for _ in $(seq 1 100); do [ -S "$tmp/nginx.sock" ] && [ -s "$tmp/nginx.pid" ] && break; sleep 0.05; done
    local nginx_master nginx_pids
    nginx_master="$(cat "$tmp/nginx.pid")"
    for _ in $(seq 1 100); do [ "$(pgrep -c -P "$nginx_master" || true)" -ge "${NGINX_WORKERS:-$loops}" ] && break; sleep 0.05; done
    nginx_pids="$nginx_master,$(pgrep -P "$nginx_master" | paste -sd,)"
    local floor_pid=""
    if [ "$FLOOR" = 1 ]; then
        printf '%s\n' "$body" > "$tmp/body.json"
        "$bench" static-server --socket "$tmp/floor.sock" --body-file "$tmp/body.json" --threads "$loops" >/dev/null 2>"$tmp/floor.log" &
        floor_pid="$!"; pids+=("$floor_pid")
        for _ in $(seq 1 100); do [ -S "$tmp/floor.sock" ] && break; sleep 0.05; done
    fi
    # Same response length on both (headers differ by a few bytes: nginx adds Date and Server).
    local ks_len ng_len
    ks_len="$(curl -s --unix-socket "$tmp/node1.sock" -o /dev/null -w '%{size_download}' "http://localhost$path")"
    ng_len="$(curl -s --unix-socket "$tmp/nginx.sock" -o /dev/null -w '%{size_download}' "http://localhost$path")"
    [ "$ks_len" = "$ng_len" ] || die "bodies differ in length: keystored $ks_len, nginx $ng_len"
    echo "keystored: $(ls /proc/"$ks_pid"/task | wc -l) threads, $loops event loops (min(cores, 4)); nginx: $(pgrep -P "$nginx_master" | wc -l) workers;" \
         "get-key body $ks_len bytes; hmac body $(wc -c < "$tmp/hmac.json") bytes in; tokens/verify body $(wc -c < "$tmp/verify.json") bytes in;" \
         "client: bench/loadgen.c (1 thread, epoll); $ROUNDS rounds of ${WARMUP} s warm-up + ${DURATION} s per server, request and row"
    echo
    "$loadgen" --header
    local conns round rows="$tmp/get-key-rows"
    : > "$rows"
    measure() { # LABEL SOCKET PIDS PATH [LOADGEN OPTIONS...]
        local label="$1" socket="$2" server_pids="$3" request_path="$4" row; shift 4
        row="$("$loadgen" --socket "$socket" --path "$request_path" --connections "$conns" --warmup "$WARMUP" \
               --duration "$DURATION" --pids "$server_pids" --label "$label" "$@")" || echo "(errors in the row below)"
        echo "$row"; echo "$row" >> "$rows"
    }
    for conns in ${CONNECTIONS//,/ }; do
        for round in $(seq 1 "$ROUNDS"); do
            measure "keystored get-key" "$tmp/node1.sock" "$ks_pid" "$path"
            measure "nginx get-key" "$tmp/nginx.sock" "$nginx_pids" "$path"
            [ -z "$floor_pid" ] || measure "bare NIO get-key (floor)" "$tmp/floor.sock" "$floor_pid" "$path"
            measure "keystored hmac" "$tmp/node1.sock" "$ks_pid" "$hmac_path" --method POST --body-file "$tmp/hmac.json"
            measure "keystored tokens/verify" "$tmp/node1.sock" "$ks_pid" "$verify_path" --method POST --body-file "$tmp/verify.json"
        done
    done
    echo
    echo "medians over $ROUNDS rounds (each column on its own):"
    echo
    summary_table "$rows"
    echo
    echo "keystored node1 after the load: $(grep -E 'VmRSS|VmLck' /proc/"$ks_pid"/status | tr -s ' \t' ' ' | tr '\n' ' ')"
    stop_all
}

# --- convergence -------------------------------------------------------------------------------
run_converge() {
    echo; echo "## rotation convergence (rotate on one node, every node's /v1/events reports it)"; load_note
    echo
    "$bench" converge --header-only
    for n in $SIZES; do
        write_config "$tmp/c$n.json" "$n" "$BASE_PORT" 2 2 3000
        local sockets=""
        for i in $(seq 1 "$n"); do
            start_node "$tmp/c$n.json" "node$i"
            sockets+="${sockets:+,}$tmp/node$i.sock"
        done
        "$bench" converge --sockets "$sockets" --rotations "$ROTATIONS" --row-only
        stop_all
        rm -rf "$tmp/data"
    done
}

# --- large state: a fresh node joins a node holding RAM keys and certificates, then restarts ------
peer_sockets() { # "local peer bytes_sent" for every TCP socket touching the two peer ports
    ss -tinH "( sport = :$1 or dport = :$1 or sport = :$2 or dport = :$2 )" 2>/dev/null | awk '
        /^[^ \t]/ { key = $4 " " $5; next }
        { n = 0; if (match($0, /bytes_sent:[0-9]+/)) n = substr($0, RSTART + 11, RLENGTH - 11); print key, n }'
}
# Bytes sent between two peer_sockets samples, per connection: a connection closed or replaced in
# between (a total over whatever sockets exist went negative when the join's connection closed)
# counts only what its successor sent; one closed inside the window is not counted.
bytes_between() {
    awk 'NR == FNR { before[$1 " " $2] = $3; next }
         { d = $3 - (($1 " " $2) in before ? before[$1 " " $2] : 0); if (d > 0) sum += d }
         END { print sum + 0 }' <(printf '%s\n' "$1") <(printf '%s\n' "$2")
}
# The three issue-16 figures: fresh node ready (complete and persisted), restart from its own
# database ready, RSS; then idle peer traffic between the two nodes in agreement.
run_sync() {
    local keys=$((SYNC_DOMAINS * SYNC_KEYS)) n="${CERTS:-100000}" port=$((BASE_PORT + 50))
    echo; echo "## large state: a fresh node joins a node holding $keys RAM keys ($SYNC_DOMAINS domains x $SYNC_KEYS, 2048 bytes each)" \
               "and $n certificates (600-byte DER each), then restarts from its own database"; load_note
    write_config "$tmp/sync.json" 2 "$port" "$SYNC_DOMAINS" "$SYNC_KEYS" 1000
    # Seed node1's registry database directly (synthetic records: valid rows, random DER bytes; the
    # store never re-parses DER it loads), so the benchmark measures the join, not 100k fsynced appends.
    start_node "$tmp/sync.json" node1; wait_ready "$tmp/node1.sock" "${pids[-1]}"; stop_all
    if [ "$n" -gt 0 ]; then
        sqlite3 "$tmp/data/node1/registry.sqlite3" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $n)
            INSERT INTO certificates (domain, user, sha256, name, der, not_before_ms, not_after_ms, jids, no_cert_management,
                                      added_wall, added_logical, added_origin)
            SELECT 'first.com', 'u' || i || '@first.com', randomblob(32), 'device', randomblob(600), 0, 4102444800000,
                   '[\"u' || i || '@first.com\"]', 0, 1795400000000, i, 'node1' FROM n;" || die "seeding the registry failed"
    fi
    start_node "$tmp/sync.json" node1
    local ref_pid="${pids[-1]}"
    wait_ready "$tmp/node1.sock" "$ref_pid"
    echo "node1: $(grep -o 'loaded [0-9]* certificate records' "$tmp/node1.log"), ready (alone, after join_timeout_ms=1000);" \
         "$(grep -E 'VmRSS' /proc/"$ref_pid"/status | tr -s ' \t' ' ')"
    local domains="first.com"; for d in $(seq 2 "$SYNC_DOMAINS"); do domains+=",d$d.example"; done
    echo
    "$bench" sync --keystored "$keystored" --config "$tmp/sync.json" --node node2 --socket "$tmp/node2.sock" \
        --reference "$tmp/node1.sock" --reference-pid "$ref_pid" --domains "$domains" --log "$tmp/node2.log" \
        --certificates "$n" --database "$tmp/data/node2/registry.sqlite3" --restart --runs "$SYNC_RUNS" || echo "(the check above failed)"
    grep -E 'loaded [0-9]+ certificate|ready after' "$tmp/node2.log" | sed -E 's/^[^ ]+ [a-z]+ keystored: node=node2 \[KeystoreNode\]/    node2 log:/'
    # Idle traffic with replicas in agreement (anti-entropy digests + SWIM probes), both directions.
    start_node "$tmp/sync.json" node2
    wait_ready "$tmp/node2.sock" "${pids[-1]}"
    sleep 3
    local s0 s1 sent secs=10
    s0="$(peer_sockets $((port + 1)) $((port + 2)))"; sleep "$secs"; s1="$(peer_sockets $((port + 1)) $((port + 2)))"
    sent="$(bytes_between "$s0" "$s1")"
    echo
    echo "idle peer traffic, 2 nodes in agreement holding $keys keys and $n certificates: $(( sent / secs )) bytes/s both directions" \
         "(TCP payload incl. TLS; anti-entropy every 500 ms per node + SWIM) ≈ $(( sent / secs / 2 )) bytes per anti-entropy round"
    stop_all
    rm -rf "$tmp/data"
}

now_ms() { date +%s%3N; }

# --- failure detection: kill -9 → dead on every other member ----------------------------------
member_state() { # SOCKET NODE: NODE's state as the node behind SOCKET reports it (any key order)
    curl -sf --max-time 1 --unix-socket "$1" http://localhost/v1/cluster 2>/dev/null | tr '{' '\n' \
        | grep "\"node\":\"$2\"" | grep -o '"state":"[a-z]*"' | head -n 1 | cut -d'"' -f4
}
all_see() { # STATE NODE OBSERVERS...: true when every observer reports NODE in STATE
    local state="$1" node="$2" o; shift 2
    for o in "$@"; do [ "$(member_state "$tmp/$o.sock" "$node")" = "$state" ] || return 1; done
}
percentile() { # P < sorted numbers (one a line): nearest-rank percentile
    awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int((p / 100) * NR + 0.999999); if (i < 1) i = 1; print v[i] }'
}
run_detect() {
    local n="${DETECT_NODES:-5}" runs="${DETECT_RUNS:-10}" port=$((BASE_PORT + 90)) i r
    echo; echo "## failure detection: kill -9 of a member → \`dead\` on every other member ($n nodes, $runs kills)"; load_note
    write_config "$tmp/detect.json" "$n" "$port" 1 1 1000
    local -a names=() node_pid=()
    for i in $(seq 1 "$n"); do names+=("node$i"); start_node "$tmp/detect.json" "node$i"; node_pid[$i]="${pids[-1]}"; done
    for i in $(seq 1 "$n"); do wait_ready "$tmp/node$i.sock" "${node_pid[$i]}"; done
    local t0
    t0="$(now_ms)"
    for node in "${names[@]}"; do
        until all_see alive "$node" $(printf '%s\n' "${names[@]}" | grep -vx "$node"); do
            [ $(( $(now_ms) - t0 )) -lt 30000 ] || die "$node not alive everywhere after 30 s"
            sleep 0.1
        done
    done
    echo
    echo "| run | killed | kill → dead on every other member ms | per member ms |"
    echo "|---:|---|---:|---|"
    local results=() victim vi observers o kill_at first dead_at all_at per
    for r in $(seq 1 "$runs"); do
        vi=$(( (r - 1) % n + 1 )); victim="node$vi"
        observers=(); for o in "${names[@]}"; do [ "$o" != "$victim" ] && observers+=("$o"); done
        declare -A seen=()
        kill_at="$(now_ms)"
        kill -9 "${node_pid[$vi]}"; wait "${node_pid[$vi]}" 2>/dev/null || true
        while :; do
            for o in "${observers[@]}"; do
                [ -n "${seen[$o]:-}" ] && continue
                [ "$(member_state "$tmp/$o.sock" "$victim")" = dead ] && seen[$o]=$(( $(now_ms) - kill_at ))
            done
            [ "${#seen[@]}" -eq "${#observers[@]}" ] && break
            [ $(( $(now_ms) - kill_at )) -lt 30000 ] || die "$victim not dead everywhere after 30 s"
        done
        all_at=0; per=""
        for o in "${observers[@]}"; do
            [ "${seen[$o]}" -gt "$all_at" ] && all_at="${seen[$o]}"
            per+="${per:+, }$o ${seen[$o]}"
        done
        unset seen
        results+=("$all_at")
        echo "| $r | $victim | $all_at | $per |"
        # Restart the victim (same data dir) and wait until everyone sees it alive again.
        start_node "$tmp/detect.json" "$victim"; node_pid[$vi]="${pids[-1]}"
        wait_ready "$tmp/$victim.sock" "${node_pid[$vi]}"
        t0="$(now_ms)"
        until all_see alive "$victim" "${observers[@]}"; do
            [ $(( $(now_ms) - t0 )) -lt 30000 ] || die "$victim not alive again after 30 s"
            sleep 0.1
        done
        sleep 2
    done
    local sorted
    sorted="$(printf '%s\n' "${results[@]}" | sort -n)"
    echo
    echo "kill → dead everywhere over $runs kills ($n nodes): p50 $(percentile 50 <<<"$sorted") ms," \
         "p90 $(percentile 90 <<<"$sorted") ms, max $(tail -n 1 <<<"$sorted") ms (polling /v1/cluster: ±~20 ms)"
    stop_all
    rm -rf "$tmp/data"
}

for part in "${parts[@]}"; do
    case "$part" in
        get-key) run_get_key ;;
        converge) run_converge ;;
        sync) run_sync ;;
        certs) run_sync ;; # the large-state part used to be two (certs, sync)
        detect) run_detect ;;
        *) die "unknown part '$part'; use get-key, converge, sync or detect" ;;
    esac
done
