-- wrk script for l2.sh: cycles through <n> URLs <prefix>1 .. <prefix><n> in order (one counter
-- per wrk thread), so with n far above what L1 holds every URL has left L1 before it comes back.
-- The requests are formatted once in init; per request Lua only picks the next one.
--   usage: wrk ... -s wrk-cycle.lua <url> -- <prefix> <n>      (e.g. /api/1k/items/ 5000)
local reqs, n, i = {}, 0, 0

init = function(args)
  local prefix = args[1] or "/api/1k/items/"
  n = tonumber(args[2] or "1000")
  for k = 1, n do
    reqs[k] = wrk.format("GET", prefix .. k)
  end
end

request = function()
  i = i % n + 1
  return reqs[i]
end

-- the same machine-readable line as ../shared/perf/wrk-*.lua
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d lat_mean_us=%.1f lat_p50_us=%d lat_p90_us=%d lat_p99_us=%d lat_p999_us=%d lat_max_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
