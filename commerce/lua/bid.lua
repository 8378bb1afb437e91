-- Bids on one auction, each an atomic step in arrival order (docs/auctions.md "Bids"): the
-- idempotency key, the auction active by the clock, the minimum, the leader's own bid, then the
-- proxy rules, the anti-snipe extension, and the `bid` stream-log event.
-- KEYS 1 auction hash, 2 idem hash, 3 stream seq, 4 stream log.
-- ARGV 1 now ms or '' (Redis TIME), 2 channel, 3 log max length, 4 auction id, 5 n, then n times:
-- user, idempotency key, max cents.
-- Returns {-1} for an unknown auction, else one reply per bid:
-- {0 leading | 1 outbid | 2 raised, price, ends_at}, {3, first code, price, ends_at} (same key again),
-- {4} not active, {5, min bid}, {6} already leading, {7} same key with another max.
local a = redis.call('HMGET', KEYS[1], 'status', 'ends_at', 'price', 'leader', 'leader_max', 'starting_bid',
  'extend_window_ms', 'extend_to_ms', 'sudden_death', 'bids')
if not a[1] then return {-1} end
local now = clock(ARGV[1])
local status, ends_at, price, leader, leader_max = a[1], tonumber(a[2]), tonumber(a[3]), a[4], tonumber(a[5])
local starting, window, extend_to = tonumber(a[6]), tonumber(a[7]), tonumber(a[8])
local sudden, bids = a[9] == '1', tonumber(a[10])
local changed = false
local out = {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local user, key, max = ARGV[6 + 3 * i], ARGV[7 + 3 * i], tonumber(ARGV[8 + 3 * i])
  local ikey = user .. '\0' .. key
  local prior = redis.call('HGET', KEYS[2], ikey)
  local r
  if prior then
    local pmax, pcode, pprice, pends = string.match(prior, '^(%d+):(%d+):(%d+):(%d+)$')
    if tonumber(pmax) ~= max then r = {7} else r = {3, tonumber(pcode), tonumber(pprice), tonumber(pends)} end
  elseif status ~= 'active' or now >= ends_at then
    r = {4}
  else
    local floor = starting
    if leader ~= '' then floor = price + increment(price) end
    if max < floor then
      r = {5, floor}
    elseif leader == user then
      if max <= leader_max then
        r = {6}
      else
        leader_max, changed = max, true
        r = {2, price, ends_at}
      end
    else
      local code = 0
      if leader == '' then
        leader, price, leader_max = user, starting, max
      elseif max > leader_max then
        price = math.min(max, leader_max + increment(leader_max))
        leader, leader_max = user, max
      else  -- the earlier maximum wins a tie
        price = math.min(leader_max, max + increment(max))
        code = 1
      end
      bids = bids + 1
      if not sudden and ends_at - now <= window and now + extend_to > ends_at then ends_at = now + extend_to end
      changed = true
      append_log(KEYS[3], KEYS[4], ARGV[2], '{"type":"bid","auction":"' .. ARGV[4] .. '","price_cents":'
        .. int(price) .. ',"leader":' .. cjson.encode(leader) .. ',"ends_at":"' .. iso_ms(ends_at)
        .. '","bids":' .. int(bids) .. ',"ts":' .. int(now), ARGV[3])
      r = {code, price, ends_at}
    end
    if r[1] <= 2 then
      redis.call('HSET', KEYS[2], ikey, int(max) .. ':' .. r[1] .. ':' .. int(r[2]) .. ':' .. int(r[3]))
    end
  end
  out[#out + 1] = r
end
if changed then
  redis.call('HSET', KEYS[1], 'price', int(price), 'leader', leader, 'leader_max', int(leader_max),
    'ends_at', int(ends_at), 'bids', int(bids))
end
return out
