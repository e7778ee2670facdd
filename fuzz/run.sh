#!/usr/bin/env bash
# Runs Augur's cargo-fuzz targets, one after another, each for SECONDS (default 300).
#
#   fuzz/run.sh [SECONDS] [TARGET...]        e.g. nice -n 19 fuzz/run.sh 300 entry_codec range
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Not run in
# CI: CI runs the proptest cases of the same properties. Every run is bounded in memory:
# `-rss_limit_mb` and `-malloc_limit_mb` (FUZZ_RSS_MB / FUZZ_MALLOC_MB, default 512) make an
# allocation above the bound a crash, the "no allocation over the bound" check. New inputs go
# to corpus/<target> (committed: the next run starts from it); seeds/<target> and
# dicts/<target>.dict are read when present. A crash stops the script with the reproducer in
# artifacts/<target>/ (`cargo +nightly fuzz run <target> <file>` replays it). When a corpus
# grows past a few MB, minimise it before committing: `cargo +nightly fuzz cmin <target>`.
set -euo pipefail
cd "$(dirname "$0")"

seconds=300
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
rss=${FUZZ_RSS_MB:-512}
malloc=${FUZZ_MALLOC_MB:-512}

mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    [[ -d seeds/$t ]] && dirs+=("seeds/$t")
    extra=()
    [[ -f dicts/$t.dict ]] && extra+=("-dict=dicts/$t.dict")
    echo "== $t: ${seconds}s, rss ${rss} MB, malloc ${malloc} MB" >&2
    cargo +nightly fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss" -malloc_limit_mb="$malloc" \
        -print_final_stats=1 "${extra[@]}" 2>&1 | tee "logs/$t.log"
    # libFuzzer's own summary line: runs, seconds, and (absent any crash) no failure.
    grep -E '^Done [0-9]+ runs' "logs/$t.log" | sed "s/^/$t: /" | tee -a logs/summary.txt
done
