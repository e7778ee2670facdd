#!/usr/bin/env python3
"""Summarise a benches/replay/run.sh output folder: table.py OUT TRACE... -- PCT..."""
import json
import re
import sys

out = sys.argv[1]
sep = sys.argv.index("--")
traces, pcts = sys.argv[2:sep], sys.argv[sep + 1:]


def metrics(label):
    m = {}
    with open(f"{out}/{label}.metrics.txt") as f:
        for line in f:
            if line.startswith("#") or "{" in line:
                continue
            k, _, v = line.partition(" ")
            try:
                m[k] = float(v)
            except ValueError:
                pass
    return m


def analyze_gain(trace, pct):
    """analyze.py's LRU and LRU+pf raw/k=1 hit ratio at the same limit and budget."""
    rows = {}
    with open(f"{out}/{trace}-analyze.txt") as f:
        for line in f:
            m = re.match(r"\s+(\d+)% (LRU\+pf raw/k=1|LRU)\s+([0-9.]+)", line)
            if m:
                rows[(m.group(1), m.group(2))] = float(m.group(3))
    lru, pf = rows.get((pct, "LRU")), rows.get((pct, "LRU+pf raw/k=1"))
    return (lru, pf) if lru is not None and pf is not None else (None, None)


def used_per_issued(m):
    """analyze.py's precision: used / issued (prefetches still undecided at the end count as unused)."""
    issued = m.get("augur_prefetch_issued_total", 0)
    return m.get("augur_prefetch_used_total", 0) / issued if issued else 0.0


def evicted(m):
    """Of the wasted, gone from the cache before their window ended ('-': a build without it)."""
    v = m.get("augur_prefetch_wasted_evicted_total")
    return "-" if v is None else str(int(v))


hdr = (f"{'trace':<6} {'budget':>6} {'prefetch':>8} {'hit':>6} {'p50ms':>7} {'p99ms':>7} {'origin':>7} "
       f"{'extra':>7} {'extra%':>7} {'issued':>7} {'used':>6} {'pfhit':>6} {'wasted':>6} {'evict':>6} {'prec':>5} {'u/iss':>5} {'gain':>7} {'offline':>8}")
print(hdr)
for t in traces:
    for pct in pcts:
        res = {}
        for pf in ("off", "on"):
            label = f"{t}-{pct}-{pf}"
            with open(f"{out}/{label}.json") as f:
                res[pf] = (json.load(f), metrics(label))
        off_origin = res["off"][0]["origin"]["requests"]
        lru, pfhr = analyze_gain(t, pct)
        offline = f"{pfhr - lru:+.3f}" if lru is not None else "n/a"
        for pf in ("off", "on"):
            s, m = res[pf]
            n = s["requests"]
            origin = s["origin"]["requests"]
            extra = origin - off_origin
            gain = s["hit_ratio"] - res["off"][0]["hit_ratio"]
            print(f"{t:<6} {pct + '%':>6} {pf:>8} {s['hit_ratio']:6.3f} {s['p50_ms']:7.2f} {s['p99_ms']:7.2f} "
                  f"{origin:7d} {extra if pf == 'on' else 0:7d} {(extra / n * 100 if pf == 'on' else 0):6.1f}% "
                  f"{int(m.get('augur_prefetch_issued_total', 0)):7d} {int(m.get('augur_prefetch_used_total', 0)):6d} {int(m.get('augur_prefetch_hits_total', 0)):6d} "
                  f"{int(m.get('augur_prefetch_wasted_total', 0)):6d} {evicted(m):>6} "
                  f"{m.get('augur_prefetch_precision', 0):5.2f} {used_per_issued(m):5.2f} "
                  f"{(gain if pf == 'on' else 0):+7.3f} {offline:>8}")
