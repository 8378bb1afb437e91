-- pending -> declined: the card was declined (or the charge never came). The member leaves the
-- group, its unit goes back, its idempotency key is free again: nothing stays held.
-- ARGV 1 order id. Returns {0, group} when released, {-2, status} when not pending.
local oid = ARGV[1]
local o = redis.call('HMGET', KEYS[5], 's:' .. oid, 'g:' .. oid, 'u:' .. oid, 'k:' .. oid)
if not o[1] then return {-1} end
if o[1] ~= 'pending' then return {-2, o[1]} end
local gid, user = o[2], o[3]
redis.call('HSET', KEYS[5], 's:' .. oid, 'declined')
redis.call('ZREM', KEYS[7], oid)
redis.call('HDEL', KEYS[4], user .. '\0' .. o[4])
if redis.call('HGET', KEYS[3], user) == gid then redis.call('HDEL', KEYS[3], user) end
local kept = {}
for _, m in ipairs(split(redis.call('HGET', KEYS[2], 'm:' .. gid))) do
  if m ~= oid then kept[#kept + 1] = m end
end
redis.call('HSET', KEYS[2], 'm:' .. gid, table.concat(kept, ','))
local n = redis.call('HINCRBY', KEYS[2], 'n:' .. gid, -1)
if n == 0 and redis.call('HGET', KEYS[2], 's:' .. gid) == 'open' then
  -- The leader's card was declined: the group never had a member. It fails with nothing to refund.
  redis.call('HSET', KEYS[2], 's:' .. gid, 'failed', 'p:' .. gid, 0)
  redis.call('ZREM', KEYS[6], gid)
end
redis.call('HINCRBY', KEYS[1], 'available', 1)
redis.call('HINCRBY', KEYS[1], 'in_groups', -1)
return {0, gid}
