#!/usr/bin/env bash
# OURS_CMD for ../shared/perf/run.sh: writes a config for the harness's origin into the run's
# scratch dir, then execs Augur on one worker thread (the harness pins it to one core).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${AUGUR_BIN:-$here/../../target/release/augur}
cfg=$PERF_WORK/augur-perf.toml
cat >"$cfg" <<TOML
[server]
listen = "127.0.0.1:$OURS_PORT"
admin_listen = "127.0.0.1:0"
worker_threads = 1
log_level = "warn"

[cache]
memory = "${AUGUR_PERF_MEMORY:-1GiB}"
max_entry_size = "8MiB"

[[route]]
name = "perf"
upstream = "http://127.0.0.1:$ORIGIN_PORT"
TOML
exec "$bin" --config "$cfg"
