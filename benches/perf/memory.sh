#!/usr/bin/env bash
# Does the [cache] memory budget bound real memory? Fills a small budget with unique 1 KiB
# entries and prints the process's RSS growth next to the weight Augur reports.
#   usage (repo root): benches/perf/memory.sh        knobs: BUDGET=32MiB SECONDS_LOAD=25
# Loopback only; bounded by SECONDS_LOAD; needs wrk, python3, curl and a release build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
shared=${SHARED:-$root/../shared}
budget=${BUDGET:-32MiB}
secs=${SECONDS_LOAD:-25}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
bash "$shared/perf/gen-bodies.sh" "$work/json" 1k=1024 >/dev/null
python3 -m http.server 28190 --bind 127.0.0.1 -d "$work" >/dev/null 2>&1 &
cat >"$work/augur.toml" <<TOML
[server]
listen = "127.0.0.1:28191"
admin_listen = "127.0.0.1:28192"
worker_threads = 1
log_level = "error"
[cache]
memory = "$budget"
[[route]]
name = "mem"
upstream = "http://127.0.0.1:28190"
ttl = "1h"
TOML
"$root/target/release/augur" --config "$work/augur.toml" &
pid=$!
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:28191/json/1k.json && break; sleep 0.1; done
rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$pid/status"; }
before=$(rss)
wrk -t1 -c16 -d"${secs}s" -s "$shared/perf/wrk-miss.lua" http://127.0.0.1:28191 -- "/json/1k.json?u=" | grep "requests in"
after=$(rss)
weight=$(curl -s http://127.0.0.1:28192/metrics | awk '/^augur_cache_bytes / { print $2 }')
entries=$(curl -s http://127.0.0.1:28192/metrics | awk '/^augur_cache_entries / { print $2 }')
awk -v b="$before" -v a="$after" -v w="$weight" -v e="$entries" -v budget="$budget" 'BEGIN {
  printf "budget %s  entries %d  weight %.1f MB  RSS growth %.1f MB  growth/weight %.2f\n",
    budget, e, w / 1e6, (a - b) / 1e6, (a - b) / w }'
