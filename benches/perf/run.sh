#!/usr/bin/env bash
# Augur beside nginx proxy_cache, Varnish and the bare hyper ceiling, in one run of the shared
# harness (../shared/perf). Usage, from the repo root:
#   benches/perf/run.sh [RESULTS.json]        # env knobs of the harness pass through (REPEAT=3 …)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
harness=${PERF_HARNESS:-$root/../shared/perf/run.sh}
cargo build --release --locked --manifest-path "$root/Cargo.toml"
out=${1:-$root/target/perf/run-$(date -u +%Y%m%dT%H%M%SZ).json}
mkdir -p "$(dirname "$out")"
OURS_CMD="$root/benches/perf/augur-target.sh" OURS_NAME=augur OURS_PORT=${OURS_PORT:-28084} \
  exec "$harness" "$out"
