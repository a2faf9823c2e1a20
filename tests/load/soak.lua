-- Mixed traffic for the soak test: health, cached repositories, announcement reads and bad inputs.
-- done() prints the totals the test reads.
fives = 0
responses = 0
local threads = {}
local requests = {}
local n = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local json = { ["Content-Type"] = "application/json" }
  requests = {
    wrk.format("GET", "/health"),
    wrk.format("GET", "/github/repos"),
    wrk.format("GET", "/github/repos?sort=stars&limit=5"),
    wrk.format("GET", "/announcements"),
    wrk.format("GET", "/announcements?limit=0"),
    wrk.format("POST", "/announcements", json, '{"title": "x", "body": "y"}'),
    wrk.format("POST", "/announcements", json, '{"title": '),
    wrk.format("GET", "/announcements/abc"),
    wrk.format("GET", "/github/repos/..%2Fusers"),
    wrk.format("GET", "/nope"),
  }
end

function request()
  n = n + 1
  return requests[(n % #requests) + 1]
end

function response(status, headers, body)
  responses = responses + 1
  if status >= 500 then
    fives = fives + 1
  end
end

function done(summary, latency, requests)
  local total_fives, total = 0, 0
  for _, thread in ipairs(threads) do
    total_fives = total_fives + thread:get("fives")
    total = total + thread:get("responses")
  end
  io.write(string.format("SOAK fives=%d responses=%d errors=%d\n", total_fives, total,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
