-- wrk script: POSTs Alertmanager webhooks (one alert each) to the Gateway.
--   wrk ... -s webhook.lua URL -- MODE TAG [DISTINCT]
-- MODE new:      every request a new alert (a name never used before): 201, a new signal.
-- MODE repeated: DISTINCT alerts (default 100) sent over and over: after the first of each,
--                202, a repeat within the deduplication window.
-- TAG makes the names unique to this run. done() prints one line:
--   RESULT {"requests":N,"duration_us":N,"non2xx":N,"socket_errors":N,"p50_us":N,"p90_us":N,"p99_us":N,"max_us":N}

local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local mode, tag, distinct
local n = 0

function init(args)
  mode = args[1] or "new"
  tag = args[2] or "bench"
  distinct = tonumber(args[3] or "100")
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local function body(name)
  return '{"version":"4","status":"firing","receiver":"gateway",' ..
    '"groupLabels":{"alertname":"' .. name .. '"},"commonLabels":{},"commonAnnotations":{},' ..
    '"externalURL":"http://alertmanager:9093","alerts":[{"status":"firing",' ..
    '"labels":{"alertname":"' .. name .. '","namespace":"bench","severity":"warning","pod":"api-0"},' ..
    '"annotations":{"summary":"benchmark alert"},"startsAt":"2026-11-30T10:00:00Z",' ..
    '"endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus:9090/graph"}]}'
end

function request()
  n = n + 1
  local name
  if mode == "repeated" then
    name = tag .. "-r" .. (n % distinct)
  else
    name = tag .. "-t" .. id .. "-" .. n
  end
  return wrk.format(nil, nil, nil, body(name))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
