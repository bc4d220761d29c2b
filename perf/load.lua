-- wrk script for `make perf`: replays prepared requests over keep-alive connections and prints
-- its figures as one JSON line prefixed "PERF_RESULT ", which perf/wrk.py reads.
--
--   wrk ... -s perf/load.lua URL -- REQUESTS_FILE [RATE_PER_THREAD] [classify]
--
-- REQUESTS_FILE: first line "METHOD PATH", then one request body per line (none for a GET).
-- Bodies are rotated, so the forest walks different paths as it would in production. The first
-- line may add headers ("Name:value", no spaces) and end with "RAW": then the rest of the file is
-- one body of raw bytes (binary tensor data may hold newlines).
-- The API key comes from the environment (PERF_API_KEY), so it never shows in `ps`.
--
-- Without a rate (or with rate 0), wrk runs closed loop: each connection sends its next request as
-- soon as the previous answer arrives, and wrk's own histogram gives the latencies. wrk counts every
-- status from 400 up as an error; with "classify" the script also sorts the answers (below).
--
-- Answers are sorted into kinds: ok (2xx), deadline (503 deadline_exceeded, the app's refusal of a
-- request that waited its budget out), unavailable (nginx's 503: no worker could take it), other_5xx,
-- other (any other status) and store (503 feature_store_unavailable: the by-id routes' answer when the
-- store did not answer within FEATURE_STORE_TIMEOUT_MS). At a fixed rate every answer's kind and time
-- are recorded too.
--
-- With a rate, sends follow a fixed schedule (one slot every 1/RATE s per thread), whatever the
-- server does. A connection that comes free takes the next slot and waits for it; if it comes
-- free late, it sends at once and its latency still counts from the slot. Latency is measured from
-- the earlier of the scheduled and the actual send time, so queueing behind a slow answer is not
-- hidden (no coordinated omission) and a send that wrk's millisecond timer let out a little early
-- is not flattered. Each request carries its start time in X-Request-ID, which the service
-- echoes, because wrk does not tell response() which connection (hence which request) answered.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } perf_timespec;
  int clock_gettime(int clock_id, perf_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("perf_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000000 + math.floor(tonumber(timespec.tv_nsec) / 1000)
end

-- Per-thread state (each wrk thread runs its own copy of this script).
local requests, method, path, headers = {}, nil, nil, {}
local n_requests, next_request = 0, 0
local interval_us = nil         -- open loop only
local next_slot = nil           -- µs of the next slot not yet given to a connection
local waiting = {}              -- slots given to connections that have not sent yet (FIFO)
local wait_head, wait_tail = 1, 0
latencies = {}                  -- open loop: µs per answer, read by done() via thread:get
kinds = {}                      -- open loop: each answer's kind (an index into KINDS)
answered = {}                   -- open loop: each answer's arrival (µs, monotonic)
kind_counts = {0, 0, 0, 0, 0, 0}  -- answers by kind
non_2xx, unmatched, sent = 0, 0, 0
first_send, last_answer, final_slot = 0, 0, 0

local KINDS = { "ok", "deadline", "unavailable", "other_5xx", "other", "store" }

local function kind_of(status, body)
  if status >= 200 and status <= 299 then return 1 end
  if status == 503 and body then
    if body:find("deadline_exceeded", 1, true) then return 2 end
    if body:find('"unavailable"', 1, true) then return 3 end
    if body:find('"feature_store_unavailable"', 1, true) then return 6 end
  end
  if status >= 500 then return 4 end
  return 5
end

local function classify(status, _, body)
  local kind = kind_of(status, body)
  kind_counts[kind] = kind_counts[kind] + 1
end

function init(args)
  local file = assert(io.open(args[1]), "cannot open " .. tostring(args[1]))
  local first, rest = file:read("*l"), nil
  method, path, rest = first:match("^(%u+) (%S+)%s*(.*)$")
  local key = os.getenv("PERF_API_KEY")
  if key and key ~= "" then headers["X-API-Key"] = key end
  local raw, given = false, {}
  for token in rest:gmatch("%S+") do
    if token == "RAW" then raw = true else
      local name, value = token:match("^([%w-]+):(.+)$")
      given[name] = value
    end
  end
  if raw then
    requests[1] = file:read("*a")
  else
    for body in file:lines() do
      if body ~= "" then requests[#requests + 1] = body end
    end
  end
  file:close()
  if #requests > 0 then headers["Content-Type"] = "application/json" end
  for name, value in pairs(given) do headers[name] = value end
  n_requests = #requests
  if args[2] and tonumber(args[2]) > 0 then
    interval_us = 1000000 / tonumber(args[2])
  else
    -- Closed loop: format every request once; request() only picks the next one.
    if n_requests == 0 then requests[1] = wrk.format(method, path, headers) n_requests = 1
    else for i = 1, n_requests do requests[i] = wrk.format(method, path, headers, requests[i]) end end
    -- Without classify, wrk then skips parsing answers' headers and bodies.
    response = args[3] == "classify" and classify or nil
    delay = nil
  end
end

function delay()
  local now = now_us()
  if not next_slot then next_slot = now end
  local slot = next_slot
  next_slot = next_slot + interval_us
  wait_tail = wait_tail + 1
  waiting[wait_tail] = slot
  local wait_ms = math.floor((slot - now) / 1000)
  return wait_ms > 0 and wait_ms or 0
end

function request()
  next_request = next_request % n_requests + 1
  if not interval_us then return requests[next_request] end
  local slot = waiting[wait_head]
  if not slot then
    -- wrk calls request() once before the run to check the script; with a rate, wrk always asks
    -- delay() before a connection sends, so a request without a slot is that check.
    return wrk.format(method, path, headers, requests[next_request])
  end
  waiting[wait_head] = nil
  wait_head = wait_head + 1
  local now = now_us()
  local start = slot < now and slot or now
  if sent == 0 then first_send = start end
  sent = sent + 1
  final_slot = slot
  headers["X-Request-ID"] = "perf-" .. string.format("%d", start)
  return wrk.format(method, path, headers, requests[next_request])
end

function response(status, answer_headers, body)
  local now = now_us()
  if status < 200 or status > 299 then non_2xx = non_2xx + 1 end
  local kind = kind_of(status, body)
  kind_counts[kind] = kind_counts[kind] + 1
  local id = answer_headers["X-Request-ID"] or answer_headers["x-request-id"] or ""
  local start = tonumber(id:match("^perf%-(%d+)$"))
  if start then
    local n = #latencies + 1
    latencies[n], kinds[n], answered[n] = now - start, kind, now
  else
    unmatched = unmatched + 1
  end
  last_answer = now
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

local function json_array(values)
  local parts = {}
  for i = 1, #values do parts[i] = string.format("%d", values[i]) end
  return "[" .. table.concat(parts, ",") .. "]"
end

function done(summary, latency, _)
  local e = summary.errors
  local fields = {
    string.format('"duration_us":%d,"requests":%d,"bytes":%d', summary.duration, summary.requests, summary.bytes),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                  e.connect, e.read, e.write, e.status, e.timeout),
  }
  local percentiles = {}
  for _, p in ipairs({ 50, 75, 90, 99, 99.9, 99.99 }) do
    percentiles[#percentiles + 1] = string.format('"%s":%d', tostring(p), latency:percentile(p))
  end
  fields[#fields + 1] = '"wrk_latency_us":{' .. table.concat(percentiles, ",") ..
      string.format(',"min":%d,"max":%d,"mean":%.1f}', latency.min, latency.max, latency.mean)
  local counts = { 0, 0, 0, 0, 0, 0 }
  for _, thread in ipairs(threads) do
    local c = thread:get("kind_counts")
    for k = 1, #KINDS do counts[k] = counts[k] + c[k] end
  end
  local by_kind = {}
  for k, name in ipairs(KINDS) do by_kind[k] = string.format('"%s":%d', name, counts[k]) end
  fields[#fields + 1] = '"kinds":{' .. table.concat(by_kind, ",") .. "}"
  if threads[1] and threads[1]:get("latencies") and threads[1]:get("sent") > 0 then
    local per_thread = {}
    for i, thread in ipairs(threads) do
      per_thread[i] = string.format(
        '{"sent":%d,"non_2xx":%d,"unmatched":%d,"first_send_us":%d,"last_answer_us":%d,"final_slot_us":%d,' ..
        '"latencies_us":%s,"kinds":%s,"answered_us":%s}',
        thread:get("sent"), thread:get("non_2xx"), thread:get("unmatched"), thread:get("first_send"),
        thread:get("last_answer"), thread:get("final_slot"), json_array(thread:get("latencies")),
        json_array(thread:get("kinds")), json_array(thread:get("answered")))
    end
    fields[#fields + 1] = '"open_loop":[' .. table.concat(per_thread, ",") .. "]"
  end
  io.write("PERF_RESULT {" .. table.concat(fields, ",") .. "}\n")
end
