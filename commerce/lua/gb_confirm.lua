-- pending -> joined: the member's charge went through. ARGV 1 order id, 2 charge id, 3 cents charged.
-- Returns {0, group, members charged, members holding a unit, max size} when this call confirmed;
-- {1, group, ...} when the order was confirmed already with this charge; {-2, status} when it is no
-- longer pending (released as stuck, or confirmed with another charge): the caller refunds its charge.
local oid, cid = ARGV[1], ARGV[2]
local o = redis.call('HMGET', KEYS[5], 's:' .. oid, 'g:' .. oid, 'cid:' .. oid)
if not o[1] then return {-1} end
local gid = o[2]
local max = tonumber(redis.call('HGET', KEYS[1], 'max_size'))
if o[1] ~= 'pending' then
  if o[3] == cid then
    local g = redis.call('HMGET', KEYS[2], 'j:' .. gid, 'n:' .. gid)
    return {1, gid, tonumber(g[1]), tonumber(g[2]), max}
  end
  return {-2, o[1]}
end
redis.call('HSET', KEYS[5], 's:' .. oid, 'joined', 'cid:' .. oid, cid, 'ch:' .. oid, ARGV[3], 'a:' .. oid, ARGV[3])
redis.call('ZREM', KEYS[7], oid)
local j = redis.call('HINCRBY', KEYS[2], 'j:' .. gid, 1)
local n = tonumber(redis.call('HGET', KEYS[2], 'n:' .. gid))
if j >= max and redis.call('HGET', KEYS[2], 's:' .. gid) == 'open' then
  redis.call('ZADD', KEYS[6], 0, gid)  -- full: due to close now, by whichever process comes first
end
return {0, gid, j, n, max}
