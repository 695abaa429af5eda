-- wrk script for `loop-bench run`: drives one Loop route and prints one
-- machine-readable result line.
--
-- It is configured through environment variables, not script arguments,
-- because wrk decides whether a script is dynamic (defines `request`) right
-- after loading it, before any argument reaches `init`:
--   LOOP_BENCH_METHOD        GET or POST
--   LOOP_BENCH_BODY          request body (optional)
--   LOOP_BENCH_CONTENT_TYPE  Content-Type of the body (optional)
--   LOOP_BENCH_SIGNED        prefix of the pre-signed Hawk header files, one
--                            per wrk thread (`<prefix>.<thread index>`), one
--                            Authorization value per line (optional)
--
-- Hawk servers reject a reused nonce, so a signed header is sent at most once.
-- When a thread runs out, it sends the request unsigned: the server answers
-- 401, the run counts non-2xx responses and `exhausted`, and loop-bench
-- reports the run as failed instead of silently replaying nonces.

local method = os.getenv("LOOP_BENCH_METHOD") or "GET"
local body = os.getenv("LOOP_BENCH_BODY")
local content_type = os.getenv("LOOP_BENCH_CONTENT_TYPE")
local signed = os.getenv("LOOP_BENCH_SIGNED")
if signed == "" then
   signed = nil
end

-- Main state only: the threads, for `done`.
local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

-- Per-thread state.
local headers_loaded = 0
local headers_used = 0
exhausted = 0
local authorizations = {}
local prefix, suffix, unsigned_request

function init(args)
   wrk.method = method
   if body and body ~= "" then
      wrk.body = body
   end
   if content_type and content_type ~= "" then
      wrk.headers["Content-Type"] = content_type
   end
   if not signed then
      return
   end
   local file = signed .. "." .. thread_index
   for line in io.lines(file) do
      headers_loaded = headers_loaded + 1
      authorizations[headers_loaded] = line
   end
   -- The request is fixed except for its Authorization value: format it once
   -- around a marker and splice each signed value in.
   local marker = "@@LOOP-BENCH-HAWK@@"
   local headers = {}
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   headers["Authorization"] = marker
   local template = wrk.format(nil, nil, headers)
   local first, last = template:find(marker, 1, true)
   prefix = template:sub(1, first - 1)
   suffix = template:sub(last + 1)
   unsigned_request = wrk.format()
end

if signed then
   function request()
      headers_used = headers_used + 1
      local authorization = authorizations[headers_used]
      if authorization == nil then
         exhausted = exhausted + 1
         return unsigned_request
      end
      authorizations[headers_used] = nil
      return prefix .. authorization .. suffix
   end
end

function done(summary, latency, requests)
   local ran_out = 0
   for _, thread in ipairs(threads) do
      ran_out = ran_out + (thread:get("exhausted") or 0)
   end
   local errors = summary.errors
   io.write(string.format(
      'LOOP_BENCH_RESULT {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,'
         .. '"connect_errors":%.0f,"read_errors":%.0f,"write_errors":%.0f,'
         .. '"status_errors":%.0f,"timeouts":%.0f,'
         .. '"p50_us":%.0f,"p75_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,'
         .. '"max_us":%.0f,"mean_us":%.1f,"exhausted":%.0f}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean, ran_out))
end
