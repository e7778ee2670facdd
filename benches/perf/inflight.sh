#!/usr/bin/env bash
# Does transient memory during misses stay bounded (security review M2)? Fires N concurrent
# misses for distinct URLs of one SIZE body at a fresh Augur and prints its peak RSS (VmHWM)
# next to the cache budget and upstream.max_inflight_bytes.
#   usage (repo root): benches/perf/inflight.sh     knobs: N=96 SIZE_MIB=8 MEMORY=256MiB
#   INFLIGHT=64MiB sets upstream.max_inflight_bytes (unset: the default, and old builds work)
#   AUGUR_BIN=path to compare another build (default target/release/augur)
# Loopback only; bounded (one round of N requests, each with a 60 s curl timeout); needs
# python3 and curl. Not a timed test: it measures memory, never speed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=${AUGUR_BIN:-$root/target/release/augur}
n=${N:-96}
size_mib=${SIZE_MIB:-8}
memory=${MEMORY:-256MiB}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# Compressible JSON-ish text, so the store's zstd step runs as it would on an API body.
python3 - "$work/big.json" "$size_mib" <<'PY'
import sys
n = int(sys.argv[2]) << 20
row = b'{"id":12345,"name":"user","active":true},'
with open(sys.argv[1], "wb") as f:
    f.write((row * (n // len(row) + 1))[:n])
PY
python3 -m http.server 28290 --bind 127.0.0.1 -d "$work" >/dev/null 2>&1 &
inflight=""
[ -n "${INFLIGHT:-}" ] && inflight=$(printf '[upstream]\nmax_inflight_bytes = "%s"' "$INFLIGHT")
cat >"$work/augur.toml" <<TOML
[server]
listen = "127.0.0.1:28291"
admin_listen = "127.0.0.1:28292"
log_level = "error"
[cache]
memory = "$memory"
max_entry_size = "${size_mib}MiB"
$inflight
[[route]]
name = "mem"
upstream = "http://127.0.0.1:28290"
ttl = "1h"
TOML
"$bin" --config "$work/augur.toml" &
pid=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:28291/big.json?warm" && break; sleep 0.1; done
hwm() { awk '/^VmHWM:/ { print $2 * 1024 }' "/proc/$pid/status"; }
before=$(hwm)
curls=()
for i in $(seq "$n"); do
  curl -s -m 60 -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:28291/big.json?u=$i" >>"$work/codes" &
  curls+=($!)
done
wait "${curls[@]}" || true
after=$(hwm)
ok=$(grep -c '^200$' "$work/codes" || true)
sleep 6 # the L1 gauges are refreshed every 5 s
metrics=$(curl -s http://127.0.0.1:28292/metrics)
weight=$(awk '/^augur_cache_bytes / { print $2 }' <<<"$metrics")
skipped=$(awk '/^augur_upstream_store_skipped_total / { print $2 }' <<<"$metrics")
awk -v b="$before" -v a="$after" -v w="${weight:-0}" -v ok="$ok" -v n="$n" -v m="$memory" -v s="${skipped:-n/a}" 'BEGIN {
  printf "%d/%d ok  cache.memory %s  L1 weight %.0f MB  store skipped %s  peak RSS %.0f MB -> %.0f MB\n",
    ok, n, m, w / 1e6, s, b / 1e6, a / 1e6 }'
