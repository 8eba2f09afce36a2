#!/usr/bin/env bash
# Builds the libFuzzer harnesses (release, -sanitize=fuzzer,address) and runs each for a bounded
# time. Usage: Fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s, all targets)
# Targets: peer-frames http config certificate. Exits non-zero if any target crashed, leaving
# the reproducer in Fuzz/crashes/<target>/ and printing it in base64.
# Env: FUZZ_SCRATCH (build dir, default Fuzz/.build), FUZZ_JOBS (build jobs, default 2),
#      FUZZ_ARGS (extra libFuzzer flags, e.g. "-seed=1 -only_ascii=1").
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${1:-60}"
shift || true
case "$seconds" in ''|*[!0-9]*) echo "run.sh: SECONDS_PER_TARGET must be a whole number, got '$seconds'" >&2; exit 2;; esac

all_targets=(peer-frames http config certificate)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

# target -> executable, max_len, dictionary
executable() { case "$1" in
    peer-frames) echo FuzzPeerFrames;; http) echo FuzzHTTP;; config) echo FuzzConfig;; certificate) echo FuzzCertificate;;
    *) return 1;; esac; }
max_len() { case "$1" in
    peer-frames) echo 16384;; http) echo 4096;; config) echo 8192;; certificate) echo 8192;; esac; }
dictionary() { case "$1" in
    http) echo "$here/dict/http.dict";; config) echo "$here/dict/config.dict";; certificate) echo "$here/dict/certificate.dict";; esac; }

for t in "${targets[@]}"; do
    executable "$t" >/dev/null || { echo "run.sh: unknown target '$t'; known: ${all_targets[*]}" >&2; exit 2; }
done

scratch="${FUZZ_SCRATCH:-$here/.build}"
echo "== building fuzz harnesses (release, fuzzer+address) in $scratch"
# -enable-testing: the HTTP harness drives LocalAPI's internal connection handler (@testable).
if ! (cd "$here" && swift build -c release --scratch-path "$scratch" -j "${FUZZ_JOBS:-2}" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing 2>&1 \
        | grep -v "warning: Cannot export local symbol"); then
    echo "run.sh: build failed" >&2
    exit 2
fi
bin="$scratch/release"

status=0
summary=()
for t in "${targets[@]}"; do
    exe="$bin/$(executable "$t")"
    work="$scratch/corpus/$t"      # grows as the fuzzer finds new inputs; not committed
    crashes="$here/crashes/$t"
    log="$scratch/logs/$t.log"
    mkdir -p "$work" "$crashes" "$(dirname "$log")"
    args=(-max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=20 -rss_limit_mb=3072
          -print_final_stats=1 -artifact_prefix="$crashes/")
    dict="$(dictionary "$t")"
    [ -n "$dict" ] && [ -f "$dict" ] && args+=(-dict="$dict")
    # shellcheck disable=SC2206 # FUZZ_ARGS is a list of flags
    [ -n "${FUZZ_ARGS:-}" ] && args+=(${FUZZ_ARGS})
    echo "== $t: ${seconds}s"
    before=$(ls -1 "$crashes" | wc -l)
    "$exe" "${args[@]}" "$work" "$here/corpus/$t" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
    after=$(ls -1 "$crashes" | wc -l)
    found=$((after - before))
    line="$t: ${execs:-?} execs, ${rate:-?} exec/s, ${cov:-no coverage line}, exit $rc, crashes $found"
    summary+=("$line")
    echo "   $line"
    if [ $rc -ne 0 ] || [ $found -gt 0 ]; then
        status=1
        echo "   !! $t failed; log: $log"
        grep -E -m 12 'ERROR: |Fatal error|fuzz: |SUMMARY: |panic|Deadly|==[0-9]+==' "$log" | sed 's/^/   | /'
        [ $found -eq 0 ] && echo "   (libFuzzer wrote no reproducer; see the log)"
        for f in $(ls -1t "$crashes" | head -n "$found"); do
            echo "   reproducer $crashes/$f ($(stat -c %s "$crashes/$f") bytes), base64:"
            base64 -w 76 "$crashes/$f" | head -n 40 | sed 's/^/     /'
            echo "   replay: $exe $crashes/$f"
        done
    fi
done

echo "== fuzz summary (${seconds}s per target)"
printf '   %s\n' "${summary[@]}"
exit $status
