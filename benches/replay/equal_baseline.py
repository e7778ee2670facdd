#!/usr/bin/env python3
"""analyze.py's top-1 raw prefetch gain at the LRU size whose hit ratio equals a measured one.

  equal_baseline.py TRACE LIMIT HIT_RATIO...      (SHARED defaults to ../shared)

analyze.py compares LRU+prefetch with LRU at the same fraction of unique bytes. Augur's L1
(quick_cache, CLOCK-Pro) hits far more than LRU at that fraction, which leaves less for prefetch
to win. For each measured prefetch-off hit ratio this finds (bisection) the LRU capacity that
reaches it and prints analyze.py's own LRU and `LRU+pf raw/k=1` simulation there: gain,
precision (used / issued) and prefetches, under analyze.py's assumptions (a prefetch completes
before the next request, nothing expires).
"""
import os
import sys

shared = os.environ.get("SHARED", os.path.join(os.path.dirname(__file__), "../../../shared"))
sys.path.insert(0, os.path.join(shared, "replay"))
import analyze  # noqa: E402
from tracelib import load_trace  # noqa: E402

trace, limit, targets = sys.argv[1], int(sys.argv[2]), [float(x) for x in sys.argv[3:]]
rows = list(load_trace(trace, limit, 0))
rows.sort(key=lambda r: r["ts"])
sizes = {}
for r in rows:
    if r["bytes"] is not None:
        sizes[r["path"]] = r["bytes"]
known = sorted(sizes.values())
default_size = known[len(known) // 2] if known else 1024
for r in rows:
    sizes.setdefault(r["path"], default_size)
unique = sum(sizes.values())


def lru(cap):
    return analyze.sim_cache(rows, sizes, analyze.LRU, cap)["hit_ratio"]


for target in targets:
    lo, hi = 1, unique
    while hi - lo > max(1, unique // 100_000):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if lru(mid) < target else (lo, mid)
    base = lru(hi)
    pf = analyze.sim_prefetch(rows, sizes, hi, 1, "raw", default_size)
    print(f"off hit {target:.3f}: LRU at {hi / unique * 100:5.1f}% of unique bytes hits {base:.3f}; "
          f"LRU+pf raw/k=1 {pf['hit_ratio']:.3f} gain {pf['hit_ratio'] - base:+.3f} "
          f"precision {pf['precision']:.2f} prefetches {pf['prefetches']}")
