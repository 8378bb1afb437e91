-- Close group ARGV[1] if it is due: full (every unit holder charged, at the largest size), past its
-- expiry, or its group-buy ended. ARGV[2] '1' closes it now whatever the clock (the group-buy ended).
-- Members still being charged hold the close back (their charge settles within seconds; stuck ones
-- are settled by the sweeper first). Succeeded: every member `paid` at the tier reached, units sold.
-- Failed: every member `refunded`, units back. Money moves afterwards (the group waits in `settle`).
-- Returns {0, status, price, members} when this call closed it; {1, status} already closed;
-- {2} members still being charged; {3} not due; {-1} unknown group.
local gid = ARGV[1]
local g = redis.call('HMGET', KEYS[2], 's:' .. gid, 'n:' .. gid, 'j:' .. gid, 'x:' .. gid, 'm:' .. gid)
if not g[1] then return {-1} end
if g[1] ~= 'open' then return {1, g[1]} end
local gb = redis.call('HMGET', KEYS[1], 'tiers', 'max_size', 'status')
local n, j = tonumber(g[2]), tonumber(g[3])
if n > j then return {2} end
local now = now_ms()
if not (j >= tonumber(gb[2]) or now >= tonumber(g[4]) or ARGV[2] == '1' or gb[3] ~= 'active') then return {3} end
local price = tier_price(gb[1], j)
local status = price and 'succeeded' or 'failed'
for _, oid in ipairs(split(g[5])) do
  local o = redis.call('HMGET', KEYS[5], 's:' .. oid, 'u:' .. oid)
  if o[1] == 'joined' then
    redis.call('HSET', KEYS[5], 's:' .. oid, price and 'paid' or 'refunded', 'a:' .. oid, price or 0)
    if redis.call('HGET', KEYS[3], o[2]) == gid then redis.call('HDEL', KEYS[3], o[2]) end
  end
end
redis.call('HSET', KEYS[2], 's:' .. gid, status, 'p:' .. gid, price or 0, 'cl:' .. gid, now)
redis.call('ZREM', KEYS[6], gid)
redis.call('SADD', KEYS[8], gid)
redis.call('HINCRBY', KEYS[1], 'in_groups', -j)
if price then
  redis.call('HINCRBY', KEYS[1], 'sold', j)
else
  redis.call('HINCRBY', KEYS[1], 'available', j)
end
return {0, status, price or 0, j}
