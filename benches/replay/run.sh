#!/usr/bin/env bash
# Replays the shared traces through Augur (release build) with prefetch off and on, at the same
# memory budget and origin latency, paced, and prints one table. From the repo root:
#
#   benches/replay/run.sh                      # NASA and EDGAR at 5% of unique bytes as stored
#   PCTS="1 5 10" TRACES=nasa benches/replay/run.sh
#
# Knobs (environment): SHARED (default ../shared), TRACES ("nasa edgar"), PCTS ("5"),
# NASA_LIMIT/NASA_SPEEDUP (10000 / 150), EDGAR_LIMIT/EDGAR_SPEEDUP (10000 / 40),
# LATENCY_MS (20), PF_TOP_K (1), PF_THRESHOLD (0.3), PF_FLOOR (0.3) and PF_USE_WINDOW (60s, the
# shipped default) ([prefetch] top_k, threshold, precision_floor, use_window), OUT (target/replay/<time>), MODES ("off on": which prefetch settings to run;
# two invocations with the same OUT may split them), MAX_SECONDS (900, per replay), BIN (an
# already-built augur binary; default: build target/release/augur here). An OUT that already
# holds a calibration reuses it, so two invocations run at the same budgets.
#
# "As stored": a first unpaced run with a huge cache measures the bytes Augur holds once every
# object of the replayed part of the trace is stored (zstd-compressed); the budget is PCT% of
# that. Every server is started here and stopped by its PID.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
shared=${SHARED:-$root/../shared}
replay=$shared/replay
TRACES=${TRACES:-"nasa edgar"}
PCTS=${PCTS:-5}
LATENCY_MS=${LATENCY_MS:-20}
OUT=${OUT:-$root/target/replay/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
MODES=${MODES:-"off on"}
PF_TOP_K=${PF_TOP_K:-1}
PF_THRESHOLD=${PF_THRESHOLD:-0.3}
PF_FLOOR=${PF_FLOOR:-0.3}
PF_USE_WINDOW=${PF_USE_WINDOW:-60s}
MAX_SECONDS=${MAX_SECONDS:-900}
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  bin=$root/target/release/augur
  cargo build --release --locked --manifest-path "$root/Cargo.toml" >&2
fi

pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }

# run TRACE_FILE LIMIT SPEEDUP MEMORY_BYTES PREFETCH(on|off) LABEL
run() {
  local trace=$1 limit=$2 speedup=$3 memory=$4 pf=$5 label=$6
  local oport pport aport
  oport=$(free_port); pport=$(free_port); aport=$(free_port)
  python3 "$replay/origin.py" --port "$oport" --trace "$trace" --latency-ms "$LATENCY_MS" \
    --max-age 3600 >"$OUT/$label.origin.log" 2>&1 &
  local opid=$!; pids+=("$opid")
  wait_http "http://127.0.0.1:$oport/__origin_stats"
  local max_entry=$(( memory < 8388608 ? memory : 8388608 ))
  cat >"$OUT/$label.toml" <<TOML
[server]
listen = "127.0.0.1:$pport"
admin_listen = "127.0.0.1:$aport"
log_level = "warn"

[cache]
memory = $memory
max_entry_size = $max_entry

[prefetch]
client_header = "X-Client-Id"
top_k = $PF_TOP_K
threshold = $PF_THRESHOLD
precision_floor = $PF_FLOOR
min_samples = 3
budget = 0.25
max_concurrency = 16
idle_gap = "15s"
use_window = "$PF_USE_WINDOW"

[[route]]
name = "origin"
upstream = "http://127.0.0.1:$oport"
prefetch = $([ "$pf" = on ] && echo true || echo false)
TOML
  "$bin" --config "$OUT/$label.toml" >"$OUT/$label.augur.log" 2>&1 &
  local apid=$!; pids+=("$apid")
  wait_http "http://127.0.0.1:$aport/healthz"
  python3 "$replay/replay.py" --trace "$trace" --base "http://127.0.0.1:$pport" \
    --limit "$limit" --speedup "$speedup" --origin "http://127.0.0.1:$oport" \
    --json "$OUT/$label.json" --out "$OUT/$label.requests.csv" --max-seconds "$MAX_SECONDS" >"$OUT/$label.replay.txt" 2>&1 || true
  curl -fsS "http://127.0.0.1:$aport/metrics" >"$OUT/$label.metrics.txt"
  curl -fsS "http://127.0.0.1:$aport/prefetch/transitions?limit=20" >"$OUT/$label.transitions.json" || true
  kill "$apid" "$opid" 2>/dev/null || true
  wait "$apid" "$opid" 2>/dev/null || true
  tail -1 "$OUT/$label.replay.txt" >&2
}

for t in $TRACES; do
  case $t in
    nasa) trace=$shared/traces/nasa-19950801.csv.gz; limit=${NASA_LIMIT:-10000}; speedup=${NASA_SPEEDUP:-150} ;;
    edgar) trace=$shared/traces/edgar-20170101-sample.csv.gz; limit=${EDGAR_LIMIT:-10000}; speedup=${EDGAR_SPEEDUP:-40} ;;
    *) echo "unknown trace $t" >&2; exit 1 ;;
  esac
  if [ -s "$OUT/$t-calibrate.metrics.txt" ]; then
    echo "== $t: reusing the calibration already in $OUT (same budgets for both halves)" >&2
  else
    echo "== $t: calibrating stored bytes (unpaced, 8GiB cache)" >&2
    run "$trace" "$limit" 0 $((8 << 30)) off "$t-calibrate"
    python3 "$replay/analyze.py" --trace "$trace" --limit "$limit" >"$OUT/$t-analyze.txt" 2>&1
  fi
  stored=$(awk '$1=="augur_cache_bytes" {print $2}' "$OUT/$t-calibrate.metrics.txt")
  for pct in $PCTS; do
    memory=$(python3 -c "print(max(1<<20, int(float('$stored') * $pct / 100)))")
    echo "== $t at $pct% (memory $memory bytes of $stored stored)" >&2
    for pf in $MODES; do
      run "$trace" "$limit" "$speedup" "$memory" "$pf" "$t-$pct-$pf"
    done
  done
done
case $MODES in
  *off*on*|*on*off*) python3 "$root/benches/replay/table.py" "$OUT" $TRACES -- $PCTS | tee "$OUT/table.txt" ;;
esac
