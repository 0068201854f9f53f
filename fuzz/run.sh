#!/usr/bin/env bash
# Runs each fuzz target for a fixed time and prints how many inputs it tried.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
#   SECONDS  time per target, default 60 (libFuzzer -max_total_time; the build is not counted)
#   TARGET   default: every target (client_hello proxy_header http_head tunnel_status)
# Environment:
#   SANITIZER  none (default; the parsers are safe Rust) or address (needs nightly features: RUSTC_BOOTSTRAP=1 is set)
#   CARGO_TARGET_DIR  where to build, default fuzz/target
#
# New corpus entries go to fuzz/corpus-generated/TARGET (not tracked); the seeds in fuzz/corpus/TARGET are only read.
# A crashing input is written to fuzz/artifacts/TARGET/ and the script exits 1 after running the other targets.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(client_hello proxy_header http_head tunnel_status)
fi
sanitizer=${SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
logs=${CARGO_TARGET_DIR:-target}/fuzz-logs
mkdir -p "$logs"

failed=0
summary=()
for target in "${targets[@]}"; do
    cargo fuzz build --debug-assertions --sanitizer "$sanitizer" "$target"
    mkdir -p "corpus-generated/$target" "artifacts/$target"
    log="$logs/$target.log"
    echo "fuzzing $target for ${secs}s (log: $log)"
    rc=0
    cargo fuzz run --debug-assertions --sanitizer "$sanitizer" "$target" \
        "corpus-generated/$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1 || true)
    if [ "$rc" -eq 0 ]; then
        line="$target: ${secs}s, ${execs:-?} execs (${rate:-?}/s), ${cov:-no coverage line}"
    else
        failed=1
        line="$target: FAILED (exit $rc) after ${execs:-?} execs, see $log and artifacts/$target/"
        grep -E -A1 'panicked at' "$log" | head -4 || true
        grep -E '^SUMMARY|Test unit written to|^Base64' "$log" | head -6 || true
    fi
    echo "$line"
    summary+=("$line")
done
printf '%s\n' "--- summary" "${summary[@]}"
exit "$failed"
