#!/usr/bin/env bash
# Soak (issue 11): mixed traffic for DURATION seconds against a release Augur with Redis as L2
# (a secret, so values are sealed) and prefetching on, while Redis is killed and restarted
# twice. Samples Augur's RSS every 5 s and checks, at the end:
#   - RSS after warm-up (the first fifth of the run, by which the 16 MiB cache is full) stays
#     within 10 % of its first sample;
#   - 0 failed requests (the origin never fails, so every request had an answer to give);
#   - 0 personal responses (/me, no caching headers, route ttl 30s) served to another client
#     (the origin echoes the caller's cookie).
#   usage (repo root): benches/soak/run.sh      knobs: DURATION=600 THREADS=8 AUGUR_BIN=path
# Loopback only; bounded by DURATION; needs python3, curl and redis-server. Not a timed test:
# it checks memory and correctness under load, never speed. Exits non-zero when a check fails.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
duration=${DURATION:-600}
export DURATION=$duration THREADS=${THREADS:-8}
if [ -z "${AUGUR_BIN:-}" ]; then
  # Release without LTO: minutes less to build, the same code paths.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo build --release --locked --manifest-path "$root/Cargo.toml" >&2
  bin=$root/target/release/augur
else
  bin=$AUGUR_BIN
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; redis-cli -p 28379 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
redis() { redis-server --port 28379 --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null 2>&1 & }
redis
python3 "$root/benches/soak/origin.py" 28380 &
token=soak-purge-token-$RANDOM$RANDOM$RANDOM
printf 'purge:%s\n' "$token" >"$work/tokens"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secret"
cat >"$work/augur.toml" <<TOML
[server]
listen = "127.0.0.1:28381"
admin_listen = "127.0.0.1:28382"
log_level = "error"
[admin]
token_file = "$work/tokens"
[cache]
memory = "16MiB"
[redis]
url = "redis://127.0.0.1:28379"
secret_file = "$work/secret"
key_prefix = "soak:"
[prefetch]
client_cookie = "session"
[[route]]
name = "users"
path_prefix = "/users/"
upstream = "http://127.0.0.1:28380"
prefetch = true
[[route]]
name = "api"
upstream = "http://127.0.0.1:28380"
ttl = "30s"
TOML
"$bin" --config "$work/augur.toml" &
pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:28381/pub/0 && break; sleep 0.1; done
(
  while kill -0 "$pid" 2>/dev/null; do
    awk -v t="$(date +%s)" '/^VmRSS:/ { print t, $2 * 1024 }' "/proc/$pid/status"
    sleep 5
  done
) >"$work/rss" &
(
  # Kill Redis a third and two thirds of the way through; bring it back 10 s later.
  for _ in 1 2; do
    sleep $((duration / 3))
    redis-cli -p 28379 shutdown nosave >/dev/null 2>&1 || true
    echo "redis killed at $(date +%T)" >&2
    sleep 10
    redis
    echo "redis restarted at $(date +%T)" >&2
  done
) &
python3 "$root/benches/soak/drive.py" 28381 28382 "$token" >"$work/stats"
alive=yes
kill -0 "$pid" 2>/dev/null || alive=no
metrics=$(curl -s http://127.0.0.1:28382/metrics)
issued=$(awk '/^augur_prefetch_issued_total / { print $2 }' <<<"$metrics")
used=$(awk '/^augur_prefetch_used_total / { print $2 }' <<<"$metrics")
python3 - "$work/stats" "$work/rss" "$duration" "$alive" "${issued:-0}" "${used:-0}" <<'PY'
import json, sys
stats = json.load(open(sys.argv[1]))
samples = [tuple(map(float, l.split())) for l in open(sys.argv[2]) if l.strip()]
duration, alive = float(sys.argv[3]), sys.argv[4]
t0 = samples[0][0]
after = [rss for t, rss in samples if t - t0 >= duration / 5]
base, peak = after[0], max(after)
growth = (peak - base) / base
print(f"requests {stats['requests']}  failed {stats['failed']}  leaked {stats['leaked']}  "
      f"purges {stats['purges']}  x-cache {stats['by_cache']}")
print(f"prefetch issued {sys.argv[5]} used {sys.argv[6]}  process alive at the end: {alive}")
print(f"RSS after warm-up: first {base/1e6:.1f} MB, peak {peak/1e6:.1f} MB, growth {growth*100:.1f} %"
      f"  ({len(samples)} samples over {samples[-1][0]-t0:.0f} s)")
ok = stats["failed"] == 0 and stats["leaked"] == 0 and growth <= 0.10 and alive == "yes"
print("soak:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
