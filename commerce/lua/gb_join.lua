-- Open a group (ARGV[3] = '') or join group ARGV[3], holding one unit for the caller, in one step.
-- ARGV: 1 user, 2 idempotency key, 3 group id or '', 4 payment method, 5 ref or '', 6 new order id,
-- 7 new group id (used when opening).
-- Returns {0, order id, group id}: a new member, `pending` (a unit held, to be charged);
-- {1, order id, group id, status, method}: this key's member already (a retry);
-- {-1} unknown group-buy or group; {2, why}: refused (group_closed, group_full, already_in_group,
-- sold_out, idempotency_conflict).
local user, key, gid, method, ref, oid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local gb = redis.call('HMGET', KEYS[1], 'status', 'available', 'ttl_ms', 'max_size')
if not gb[1] then return {-1} end
local ikey = user .. '\0' .. key
local existing = redis.call('HGET', KEYS[4], ikey)
if existing then
  local o = redis.call('HMGET', KEYS[5], 'g:' .. existing, 's:' .. existing, 'm:' .. existing, 'k2:' .. existing)
  if o[4] ~= (gid == '' and 'open' or 'join') or (gid ~= '' and o[1] ~= gid) or o[3] ~= method then
    return {2, 'idempotency_conflict', existing}
  end
  return {1, existing, o[1], o[2], o[3]}
end
local now = now_ms()
if gid == '' then
  if gb[1] ~= 'active' then return {2, 'groupbuy_not_active'} end
else
  local g = redis.call('HMGET', KEYS[2], 's:' .. gid, 'n:' .. gid, 'x:' .. gid)
  if not g[1] then return {-1} end
  if g[1] ~= 'open' or now >= tonumber(g[3]) or gb[1] ~= 'active' then return {2, 'group_closed'} end
  if tonumber(g[2]) >= tonumber(gb[4]) then return {2, 'group_full'} end
end
if redis.call('HEXISTS', KEYS[3], user) == 1 then return {2, 'already_in_group'} end
if tonumber(gb[2]) < 1 then return {2, 'sold_out'} end
if gid == '' then
  gid = ARGV[7]
  local expires = now + tonumber(gb[3])
  redis.call('HSET', KEYS[2], 's:' .. gid, 'open', 'l:' .. gid, user, 'n:' .. gid, 1, 'j:' .. gid, 0,
    'x:' .. gid, expires, 'c:' .. gid, now, 'm:' .. gid, oid)
  redis.call('ZADD', KEYS[6], expires, gid)
else
  redis.call('HINCRBY', KEYS[2], 'n:' .. gid, 1)
  local m = redis.call('HGET', KEYS[2], 'm:' .. gid)
  redis.call('HSET', KEYS[2], 'm:' .. gid, (m == '' or not m) and oid or (m .. ',' .. oid))
end
redis.call('HSET', KEYS[3], user, gid)
redis.call('HSET', KEYS[4], ikey, oid)
redis.call('HSET', KEYS[5], 's:' .. oid, 'pending', 'u:' .. oid, user, 'g:' .. oid, gid, 'k:' .. oid, key,
  'c:' .. oid, now, 'm:' .. oid, method, 'r:' .. oid, ref, 'k2:' .. oid, ARGV[3] == '' and 'open' or 'join',
  'ch:' .. oid, 0, 'rf:' .. oid, 0)
redis.call('ZADD', KEYS[7], now, oid)
redis.call('HINCRBY', KEYS[1], 'available', -1)
redis.call('HINCRBY', KEYS[1], 'in_groups', 1)
return {0, oid, gid}
