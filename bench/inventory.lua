-- wrk script for bench/inventory.py: a bounded spike of purchase attempts by distinct users.
-- Arguments (after `--`): tokens file, request path, total attempts, key prefix, threads, and
-- optionally `bid` (bench/auction.py): attempt i is then the bid {"max_cents": 1000 + 6000 i}, amounts
-- rising with i, so most bids top the last price and some arrive behind a higher one.
-- Thread t of n sends attempts t, t+n, t+2n, ... Attempt i is made by user (i * 7919) mod users
-- (a permutation, so the first `users` attempts are all distinct users, like a crowd tapping at
-- once) with the idempotency key <prefix>-<i>. A thread stops itself after its share of responses
-- and prints DONE, so the driver can end wrk's timer at once (wrk sleeps the whole -d otherwise).

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local tokens, path, quota, prefix, nthreads, bids
local sent, received = 0, 0
local body = '{"quantity":1}'
statuses = {}

function init(args)
  tokens = {}
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  path = args[2]
  nthreads = tonumber(args[5])
  local total = tonumber(args[3])
  quota = math.floor(total / nthreads)
  if tid < total % nthreads then quota = quota + 1 end
  prefix = args[4]
  bids = args[6] == "bid"
end

function request()
  local i = tid + sent * nthreads
  sent = sent + 1
  local user = (i * 7919) % #tokens + 1
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. tokens[user],
    ["Idempotency-Key"] = prefix .. "-" .. i,
    ["Content-Type"] = "application/json",
  }, bids and string.format('{"max_cents":%d}', 1000 + 6000 * i) or body)
end

function response(status, headers, resp_body)
  statuses[status] = (statuses[status] or 0) + 1
  received = received + 1
  if received == quota then
    io.write("DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local parts = {}
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      parts[#parts + 1] = string.format('"%d":%d', status, count)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"statuses":[%s]}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.timeout,
    "{" .. table.concat(parts, "},{") .. "}"))
end
