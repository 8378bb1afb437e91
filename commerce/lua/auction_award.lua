-- The winner's order, once (idempotent by its order id, chosen when the auction was created): a
-- one-unit sale-shaped record on the inventory KEYS (common.lua), held for hold_ms, so that pay,
-- cancel, expiry, the order writer and the reconciler treat it as any flash-sale order. Its stored
-- status is `ended`: nobody can reserve from it.
-- ARGV 1 order id, 2 winner, 3 price, 4 hold ms, 5 now ms or '', 6 stream, 7 sku, 8 title,
-- 9 currency, 10 idempotency key, 11 writer group.
-- Returns {0, 'reserved', expires} made now, or {1, status, expires} made before.
local oid, user = ARGV[1], ARGV[2]
local o = redis.call('HMGET', KEYS[4], 's:' .. oid, 'e:' .. oid)
if o[1] then return {1, o[1], tonumber(o[2])} end
local now = now_ms()
if ARGV[5] ~= '' then now = tonumber(ARGV[5]) end
local price, expires = tonumber(ARGV[3]), now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'stream', ARGV[6], 'sku', ARGV[7], 'title', ARGV[8], 'currency', ARGV[9],
  'price_cents', ARGV[3], 'stock', 1, 'available', 0, 'held', 1, 'sold', 0, 'limit', 1, 'hold_ms', ARGV[4],
  'duration_ms', 0, 'status', 'ended', 'starts_at', now, 'ends_at', now)
redis.call('HINCRBY', KEYS[2], user, 1)
redis.call('HSET', KEYS[3], user .. '\0' .. ARGV[10], oid)
redis.call('HSET', KEYS[4], 's:' .. oid, 'reserved', 'u:' .. oid, user, 'q:' .. oid, 1, 'e:' .. oid, expires,
  'k:' .. oid, ARGV[10], 'c:' .. oid, now)
redis.call('ZADD', KEYS[5], expires, oid)
-- The group before the first entry: the writer reads from 0 either way; this saves it the create.
redis.pcall('XGROUP', 'CREATE', KEYS[6], ARGV[11], '0', 'MKSTREAM')
order_event('reserved', oid, user, 1, price, ARGV[10], now, expires, 1, now)
return {0, 'reserved', expires}
