-- wrk script for bench/run.sh: sends the same request on every keep-alive connection
-- and prints one machine-readable line at the end.
--
-- Environment (read once per wrk thread):
--   BENCH_METHOD     HTTP method (default POST when a body is given, else GET)
--   BENCH_BODY_FILE  file holding the request body (optional)
--   BENCH_HEADERS    extra headers, one "Name: value" per line (optional)
--
-- Output (last line of stdout), latencies in microseconds:
--   BENCH_RESULT {"requests":N,"seconds":S,"rps":R,"non2xx":N,"errors":N,"p50":..,"p90":..,"p99":..,"p999":..,"max":..}

local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
wrk.method = os.getenv("BENCH_METHOD") or (wrk.body and "POST" or "GET")
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^%s*([^:]+):%s*(.-)%s*$")
  if name then
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"non2xx":%d,"errors":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}\n',
    summary.requests, seconds, summary.requests / seconds, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
