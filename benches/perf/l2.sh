#!/usr/bin/env bash
# L2-hit (Redis) against L1-hit throughput and latency, in one run, with the shared harness's
# origin, bodies and ceiling (../shared/perf) and its method: every server pinned to SERVER_CPU,
# wrk (one thread, 64 connections) on CLIENT_CPU, warm-up then a measured run, best of REPEAT.
#
#   usage (repo root): benches/perf/l2.sh [OUT.md]      (also writes OUT.tsv with every rep)
#   knobs (env): SIZES="1k 16k" URLS=20000 REPEAT=1 DURATION=10s WARMUP=2s CONNS=64
#                SERVER_CPU=0 CLIENT_CPU=1 REDIS_CPU=$SERVER_CPU AA_CONTROL=1 BASE_PORT=28280
#                L1_MEMORY=4GiB QUIET_PCT=15 QUIET_MAX_WAIT=30 AUGUR_BIN=<another build>
#                ACCEPT_ENCODING=zstd (wrk asks for zstd: Augur then sends its stored zstd bodies
#                as they are, so no row pays for decompression; the ceiling ignores it)
#
# Targets, per size (loads interleaved: rep, then size, then target):
#   ceiling    the harness's bare hyper server, cycling URLs like l1/l2: what wrk+Lua can drive
#   l1-one     Augur, 4 GiB L1, no Redis, one URL (/json/<size>.json): the harness's hit load
#   l1         the same Augur, cycling URLS URLs /api/<size>/items/1..URLS, all in its L1
#   l2         a second Augur with the smallest L1 ([cache] memory = "1MiB", a few hundred
#              entries) and [redis] on a redis-server of its own, cycling the same URLS URLs,
#              all seeded into Redis first: in-order cycling through far more URLs than L1
#              holds means each URL has left L1 before it comes back, so each request is an L1
#              miss that Redis answers. Augur's own /metrics (L2 hits, L1 hits, misses) and the
#              origin's request counter are read around every measured run to show that.
#   ceiling-b  a second, identical ceiling (A/A noise check; AA_CONTROL=0 drops it)
# Redis is pinned to REDIS_CPU, by default the server core: the l2 row's req/s then reflects
# Augur's and Redis's CPU per request together (as the harness's miss rows do with the origin),
# and both are reported separately.
#
# Loopback only; every process this starts is stopped by its process group on exit. Needs nginx,
# redis-server, redis-cli, wrk, curl, taskset, setsid, ss, cargo. Bounded: about
# REPEAT x sizes x 5 x (WARMUP + DURATION + 2 s, + up to QUIET_MAX_WAIT while the machine is
# busy), plus start-up and seeding (at most 15 two-second wrk passes per instance and size).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$root/benches/perf
shared=${PERF_HARNESS_DIR:-$root/../shared/perf}

SIZES=${SIZES:-"1k 16k"}
URLS=${URLS:-20000}
REPEAT=${REPEAT:-1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
REDIS_CPU=${REDIS_CPU:-$SERVER_CPU}
AA_CONTROL=${AA_CONTROL:-1}
BASE_PORT=${BASE_PORT:-28280}
QUIET_PCT=${QUIET_PCT:-15}
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-30}
ORIGIN_PORT=$BASE_PORT REDIS_PORT=$((BASE_PORT + 1))
L1_PORT=$((BASE_PORT + 2)) L1_ADMIN=$((BASE_PORT + 3))
L2_PORT=$((BASE_PORT + 4)) L2_ADMIN=$((BASE_PORT + 5))
CEILING_PORT=$((BASE_PORT + 6)) CEILING_B_PORT=$((BASE_PORT + 7))

out=${1:-$root/target/perf/l2-$(date -u +%Y%m%dT%H%M%SZ).md}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
base=${out%.md}

for tool in nginx redis-server redis-cli wrk curl taskset setsid ss awk cargo; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool (apt-get install -y nginx redis-server wrk curl)" >&2; exit 1; }
done
[ -x "$shared/gen-bodies.sh" ] || { echo "shared harness not found at $shared (set PERF_HARNESS_DIR)" >&2; exit 1; }

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/augur-l2perf.XXXXXX")
chmod 755 "$work"   # nginx workers (unprivileged when started as root) read the docroot
mkdir -p "$work/logs" "$work/origin-tmp"

declare -A PID=()
pg_members() { ps -e -o pid= -o pgid= | awk -v g="$1" '$2 == g { print $1 }'; }
stop_all() {
  local name pid i
  for name in "${!PID[@]}"; do kill -TERM -- "-${PID[$name]}" 2>/dev/null || true; done
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    for i in $(seq 50); do [ -z "$(pg_members "$pid")" ] && break; sleep 0.1; done
    [ -n "$(pg_members "$pid")" ] && kill -KILL -- "-$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
  done
  PID=()
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  if [ $rc -eq 0 ]; then rm -rf "$work"; else log "work dir kept: $work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name cpu port cmd...   own process group (setsid: $! is its pid and pgid), pinned
  local name=$1 cpu=$2 port=$3; shift 3
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "port $port (for $name) is in use; pick another range with BASE_PORT" >&2; exit 1
  fi
  setsid taskset -c "$cpu" "$@" >"$work/logs/$name.out" 2>&1 </dev/null &
  PID[$name]=$!
}
wait_up() { # name url
  local i
  for i in $(seq 100); do
    curl -fs -o /dev/null --max-time 1 "$2" && return 0
    kill -0 "${PID[$1]}" 2>/dev/null || { echo "$1 exited; log:" >&2; tail -20 "$work/logs/$1.out" >&2; exit 1; }
    sleep 0.1
  done
  echo "$1 not answering $2 after 10 s; log:" >&2; tail -20 "$work/logs/$1.out" >&2; exit 1
}

# ------------------------------------------------------------------ set-up --
log "building augur (release) and the harness's ceiling"
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
augur=${AUGUR_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/augur}
ceiling_dir=${CEILING_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/perf-ceiling}
cargo build --release --quiet --manifest-path "$shared/ceiling/Cargo.toml" --target-dir "$ceiling_dir"
ceiling=$ceiling_dir/release/perf-ceiling

www=$work/www
"$shared/gen-bodies.sh" "$www/json" >/dev/null
sed -e "s#@WORK@#$work#g" -e "s#@ROOT@#$www#g" -e "s#@SENDFILE@#off#g" -e "s#@PORT@#$ORIGIN_PORT#g" \
  "$shared/conf/origin-nginx.conf.tmpl" >"$work/origin.conf"

augur_conf() { # file port admin memory max_entry_size [redis]
  cat >"$1" <<TOML
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
worker_threads = 1
log_level = "warn"

[cache]
memory = "$4"
max_entry_size = "$5"

[[route]]
name = "perf"
upstream = "http://127.0.0.1:$ORIGIN_PORT"
TOML
  if [ -n "${6:-}" ]; then printf '\n[redis]\nurl = "%s"\n' "$6" >>"$1"; fi
}
# l1 gets 4 GiB: an eighth of the budget keeps decompressed copies of hot zstd bodies, and it
# must hold all URLS of them (20000 x 16 KiB), or l1's hits would decompress as l2's do.
augur_conf "$work/l1.toml" "$L1_PORT" "$L1_ADMIN" "${L1_MEMORY:-4GiB}" 8MiB
augur_conf "$work/l2.toml" "$L2_PORT" "$L2_ADMIN" 1MiB 256KiB "redis://127.0.0.1:$REDIS_PORT"

log "starting origin, redis (CPU $REDIS_CPU), augur l1 + l2, ceilings (CPU $SERVER_CPU); wrk on CPU $CLIENT_CPU"
start origin "$SERVER_CPU" "$ORIGIN_PORT" nginx -p "$work" -c "$work/origin.conf" -g 'daemon off;'
wait_up origin "http://127.0.0.1:$ORIGIN_PORT/json/1k.json"
start redis "$REDIS_CPU" "$REDIS_PORT" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
  --save '' --appendonly no --dir "$work" --logfile ''
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
start l1 "$SERVER_CPU" "$L1_PORT" "$augur" --config "$work/l1.toml"
wait_up l1 "http://127.0.0.1:$L1_ADMIN/healthz"
start l2 "$SERVER_CPU" "$L2_PORT" "$augur" --config "$work/l2.toml"
wait_up l2 "http://127.0.0.1:$L2_ADMIN/healthz"
for _ in $(seq 50); do
  curl -fs --max-time 1 "http://127.0.0.1:$L2_ADMIN/metrics" | grep -q '^augur_l2_connected 1' && break
  sleep 0.1
done
start ceiling "$SERVER_CPU" "$CEILING_PORT" "$ceiling" "127.0.0.1:$CEILING_PORT" "$www/json"
wait_up ceiling "http://127.0.0.1:$CEILING_PORT/json/1k.json"
targets=(ceiling l1-one l1 l2)
if [ "$AA_CONTROL" = 1 ]; then
  start ceiling-b "$SERVER_CPU" "$CEILING_B_PORT" "$ceiling" "127.0.0.1:$CEILING_B_PORT" "$www/json"
  wait_up ceiling-b "http://127.0.0.1:$CEILING_B_PORT/json/1k.json"
  targets+=(ceiling-b)
fi

# ------------------------------------------------------------ measurement --
clk=$(getconf CLK_TCK)
pg_ticks() {
  local p t=0 v
  for p in $(pg_members "$1"); do
    v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
all_ticks() { local n t=0; for n in "${!PID[@]}"; do t=$((t + $(pg_ticks "${PID[$n]}"))); done; echo "$t"; }
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
origin_requests() { curl -fs --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/__origin_status" | awk 'NR == 3 { print $3 }'; }
# "HIT MISS L2hit L2other" request counters from an Augur admin port (zeros for "-")
scrape() {
  [ "$1" = - ] && { echo "0 0 0 0"; return; }
  curl -fs --max-time 2 "http://127.0.0.1:$1/metrics" | awk '
    /^augur_requests_total\{/ && /cache="HIT"/ { hit += $NF }
    /^augur_requests_total\{/ && /cache="MISS"/ { miss += $NF }
    /^augur_l2_requests_total\{/ { if (/result="hit"/) l2 += $NF; else l2x += $NF }
    END { printf "%d %d %d %d\n", hit, miss, l2, l2x }'
}
foreign_now() { # % of all cores busy outside our processes over 1 s
  local a b ta tb
  read -r -a a <<<"$(cpu_busy)"; ta=$(all_ticks); sleep 1; read -r -a b <<<"$(cpu_busy)"; tb=$(all_ticks)
  awk -v busy=$((b[0] - a[0] - (tb - ta))) -v tot=$((b[1] - a[1])) 'BEGIN { if (busy < 0) busy = 0; printf "%d\n", (tot > 0 ? 100 * busy / tot : 0) }'
}
wait_quiet() {
  local waited=0 f; f=$(foreign_now)
  while [ "$f" -gt "$QUIET_PCT" ] && [ $waited -lt "$QUIET_MAX_WAIT" ]; do
    log "  machine busy with other processes (${f}% of all cores); waiting"
    sleep 2; waited=$((waited + 3)); f=$(foreign_now)
  done
}
load() { # target size -> "pid admin url script args..." for wrk
  local port pid admin=- url script=$here/wrk-cycle.lua args=(-- "/api/$2/items/" "$URLS")
  case $1 in
    ceiling) port=$CEILING_PORT ;;
    ceiling-b) port=$CEILING_B_PORT ;;
    l1-one) port=$L1_PORT admin=$L1_ADMIN script=$shared/wrk-hit.lua args=() ;;
    l1) port=$L1_PORT admin=$L1_ADMIN ;;
    l2) port=$L2_PORT admin=$L2_ADMIN ;;
  esac
  pid=${PID[${1%-one}]}
  url=http://127.0.0.1:$port/
  [ "$1" = l1-one ] && url=http://127.0.0.1:$port/json/$2.json
  echo "$pid $admin $url $script ${args[*]}"
}
run_wrk() { # duration url script args... (pinned, bounded)
  local d=$1; shift
  timeout 120 taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$d" --latency \
    ${ACCEPT_ENCODING:+-H "Accept-Encoding: $ACCEPT_ENCODING"} -s "$2" "$1" "${@:3}"
}

# Warm every URL of a size into L1 (l1) or Redis (l2): wrk passes (each starts at URL 1, and
# doubles in length until it gets through all URLS) until one covers every URL and sends none
# of them to the origin.
warm() { # target size
  local pid admin url script args pass d=2 o0 o1 req
  read -r pid admin url script args <<<"$(load "$1" "$2")"
  for pass in $(seq 15); do
    o0=$(origin_requests)
    # shellcheck disable=SC2086
    run_wrk "${d}s" "$url" "$script" $args >"$work/logs/warm.wrk" 2>&1 || true
    o1=$(origin_requests)
    req=$(grep -o 'WRKRESULT requests=[0-9]*' "$work/logs/warm.wrk" | cut -d= -f2)
    log "  warm $1 $2 pass $pass (${d}s): ${req:-0} requests, $((o1 - o0 - 1)) to the origin"
    [ $((o1 - o0 - 1)) -eq 0 ] && [ "${req:-0}" -ge $((URLS + CONNS)) ] && return 0
    [ "${req:-0}" -lt $((URLS + CONNS)) ] && [ $d -lt 16 ] && d=$((d * 2))
    sleep 0.5   # let the write-behind SETs land
  done
  echo "warming $1 $2 did not converge" >&2; exit 1
}

tsv=$base.tsv
echo -e "rep\ttarget\tsize\trps\tp50_us\tp99_us\trequests\terrors\tsrv_us_per_req\tredis_us_per_req\tl1_hits\tl2_hits\tmisses\tl2_other\torigin_reqs\tforeign_pct" >"$tsv"
measure() { # rep target size
  local rep=$1 t=$2 s=$3 pid admin url script args tag="$1-$2-$3"
  read -r pid admin url script args <<<"$(load "$t" "$s")"
  wait_quiet
  # shellcheck disable=SC2086
  run_wrk "$WARMUP" "$url" "$script" $args >/dev/null 2>&1 || true
  local m0 m1 o0 o1 s0 s1 r0 r1 a0 a1 c0 c1 tf=$work/logs/$tag.time
  m0=$(scrape "$admin"); o0=$(origin_requests); s0=$(pg_ticks "$pid"); r0=$(pg_ticks "${PID[redis]}")
  a0=$(all_ticks); c0=$(cpu_busy)
  local TIMEFORMAT='%R %U %S'
  # shellcheck disable=SC2086
  { time run_wrk "$DURATION" "$url" "$script" $args >"$work/logs/$tag.wrk" 2>&1; } 2>"$tf" || true
  c1=$(cpu_busy); a1=$(all_ticks); s1=$(pg_ticks "$pid"); r1=$(pg_ticks "${PID[redis]}")
  o1=$(origin_requests); m1=$(scrape "$admin")
  local line; line=$(grep '^WRKRESULT' "$work/logs/$tag.wrk" || true)
  [ -n "$line" ] || { log "  wrk failed for $tag"; tail -5 "$work/logs/$tag.wrk" >&2; return 0; }
  local -A r=(); local kv
  for kv in ${line#WRKRESULT }; do r[${kv%%=*}]=${kv#*=}; done
  local wall wu ws; read -r wall wu ws <"$tf"
  read -r -a M0 <<<"$m0"; read -r -a M1 <<<"$m1"; read -r -a C0 <<<"$c0"; read -r -a C1 <<<"$c1"
  local hit=$((M1[0] - M0[0])) miss=$((M1[1] - M0[1])) l2=$((M1[2] - M0[2])) l2x=$((M1[3] - M0[3]))
  [ "$t" = l2 ] || r1=$r0   # Redis CPU is only this load's for the l2 row
  awk -v rep="$rep" -v t="$t" -v s="$s" -v req="${r[requests]}" -v dur="${r[duration_us]}" \
      -v p50="${r[lat_p50_us]}" -v p99="${r[lat_p99_us]}" \
      -v err=$((r[err_connect] + r[err_read] + r[err_write] + r[err_status] + r[err_timeout])) \
      -v sd=$((s1 - s0)) -v rd=$((r1 - r0)) -v hz="$clk" -v hit="$hit" -v miss="$miss" -v l2="$l2" -v l2x="$l2x" \
      -v o=$((${o1:-0} - ${o0:-0} - 1)) -v busy=$((C1[0] - C0[0])) -v tot=$((C1[1] - C0[1])) -v ours=$((a1 - a0)) \
      -v wrk="$(awk -v u="$wu" -v s="$ws" -v hz="$clk" 'BEGIN { print (u + s) * hz }')" '
    BEGIN {
      rps = dur > 0 ? req / (dur / 1e6) : 0
      f = busy - ours - wrk; if (f < 0) f = 0
      printf "%s\t%s\t%s\t%.0f\t%d\t%d\t%d\t%d\t%.2f\t%.2f\t%d\t%d\t%d\t%d\t%d\t%.0f\n", rep, t, s, rps, p50, p99, req, err,
        (req > 0 ? 1e6 * sd / hz / req : 0), (req > 0 ? 1e6 * rd / hz / req : 0), hit - l2, l2, miss, l2x, o, (tot > 0 ? 100 * f / tot : 0)
    }' >>"$tsv"
  tail -1 "$tsv" | awk -F'\t' '{ printf "  %-9s %-4s %7s req/s  p50 %6.3f ms  p99 %6.3f ms  err %s  server %s us/req  redis %s us/req  L1 %s  L2 %s  miss %s  origin %s  foreign %s%%\n",
    $2, $3, $4, $5 / 1000, $6 / 1000, $8, $9, $10, $11, $12, $13, $15, $16 }' >&2
}

for s in $SIZES; do
  log "warming $s: $URLS URLs into l1's L1 and into Redis through l2"
  curl -fs -o /dev/null "http://127.0.0.1:$L1_PORT/json/$s.json"
  warm l1 "$s"
  warm l2 "$s"
  log "  Redis holds $(redis-cli -p "$REDIS_PORT" dbsize) keys, used_memory $(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory_human/ { print $2 }' | tr -d '\r')"
  log "  spot check, l2 /api/$s/items/{1,$((URLS / 2)),$URLS}: x-cache[-tier] = $(for k in 1 $((URLS / 2)) "$URLS"; do
    curl -fs -D - -o /dev/null "http://127.0.0.1:$L2_PORT/api/$s/items/$k" | awk 'tolower($1) == "x-cache:" { c = $2 } tolower($1) == "x-cache-tier:" { v = "-" $2 } END { printf "%s%s ", c, v }' | tr -d '\r'; done)"
done

for rep in $(seq "$REPEAT"); do
  for s in $SIZES; do
    for t in "${targets[@]}"; do
      log "rep $rep  $t $s"
      measure "$rep" "$t" "$s"
    done
  done
done

# ------------------------------------------------------------------ report --
{
  echo "L2-hit vs L1-hit, $(date -u +%Y-%m-%dT%H:%MZ), best of $REPEAT by req/s; URLS=$URLS, wrk -t1 -c$CONNS -d$DURATION on CPU $CLIENT_CPU${ACCEPT_ENCODING:+ (Accept-Encoding: $ACCEPT_ENCODING)}, servers on CPU $SERVER_CPU, redis on CPU $REDIS_CPU"
  echo
  awk -F'\t' '
    NR == 1 { next }
    { k = $2 SUBSEP $3; if (!(k in best) || $4 > best[k]) { best[k] = $4; row[k] = $0 } }
    END {
      print "| target | size | req/s | p50 ms | p99 ms | x l1-one | x l1 | server CPU us/req | redis CPU us/req | L2-hit share | L1-hit share | upstream reqs | errors | foreign CPU % |"
      print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      n = split("ceiling l1-one l1 l2 ceiling-b", T, " ")
      ns = split(sizes, S, " ")
      for (i = 1; i <= ns; i++) for (j = 1; j <= n; j++) {
        k = T[j] SUBSEP S[i]; if (!(k in row)) continue
        split(row[k], f, "\t"); split(row["l1-one" SUBSEP S[i]], a, "\t"); split(row["l1" SUBSEP S[i]], b, "\t")
        red = (T[j] == "l2") ? f[10] : "-"
        served = f[11] + f[12] + f[13]
        l2s = (T[j] ~ /^ceiling/ || served == 0) ? "-" : sprintf("%.3f", f[12] / served)
        l1s = (T[j] ~ /^ceiling/ || served == 0) ? "-" : sprintf("%.3f", f[11] / served)
        printf "| %s | %s | %s | %.3f | %.3f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %s |\n", f[2], f[3], f[4], f[5] / 1000, f[6] / 1000,
          (a[4] > 0 ? f[4] / a[4] : 0), (b[4] > 0 ? f[4] / b[4] : 0), f[9], red, l2s, l1s, f[15], f[8], f[16]
      }
      for (i = 1; i <= ns; i++) {
        split(row["ceiling" SUBSEP S[i]], c, "\t"); split(row["ceiling-b" SUBSEP S[i]], cb, "\t")
        if (c[4] > 0 && cb[4] > 0) aa = aa sprintf(" %s %.2f;", S[i], cb[4] / c[4])
      }
      if (aa != "") { print ""; print "A/A noise check, ceiling-b / ceiling req/s:" aa }
    }' sizes="$SIZES" "$tsv"
} | tee "$out"
log "results: $out (table), $tsv (every rep)"
