#!/usr/bin/env bash
# Build leaktrace, trace a bundled leaking service for a few seconds, and report it.
# Usage: scripts/demo.sh [seconds]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/demo"
seconds=${1:-8}
mkdir -p "$out"
rm -f "$out"/*.lt
cargo build --release --manifest-path "$root/Cargo.toml" -p leaktrace-preload -p leak-analyze
cc -g -O1 -fno-omit-frame-pointer -o "$out/leaky_service" "$root/scripts/demo/leaky_service.c"
echo "== tracing leaky_service for ${seconds}s"
LD_PRELOAD="$root/target/release/libleaktrace.so" \
LEAKTRACE_FILE="$out/leaky_service.%p.lt" LEAKTRACE_RSS_MS=200 \
    "$out/leaky_service" "$seconds"
trace=$(ls -t "$out"/leaky_service.*.lt | head -n 1)
echo "== leak-analyze report $trace"
"$root/target/release/leak-analyze" report "$trace" --top 5
