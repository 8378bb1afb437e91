-- reserved -> paid. ARGV[1] order id, ARGV[2] user, ARGV[3] 'check' (validate only) or 'commit',
-- ARGV[4] (commit) the provider's charge id, kept with the order.
-- Returns {0, 'paid'|'ok'}, {-1} unknown or not the user's order, {-2, status[, charge id that paid it]}.
-- A hold past its expiry is expired here and then, even if the sweeper has not come by yet.
local oid, user = ARGV[1], ARGV[2]
local o = redis.call('HMGET', KEYS[4], 's:' .. oid, 'u:' .. oid, 'q:' .. oid, 'e:' .. oid, 'k:' .. oid, 'c:' .. oid)
if not o[1] or o[2] ~= user then return {-1} end
if o[1] ~= 'reserved' then
  if o[1] == 'paid' then return {-2, 'paid', redis.call('HGET', KEYS[4], 'ch:' .. oid) or ''} end
  return {-2, o[1]}
end
local now = now_ms()
local price = tonumber(redis.call('HGET', KEYS[1], 'price_cents'))
if expire_if_lapsed(oid, o[4], price, now) then return {-2, 'expired'} end
if ARGV[3] == 'check' then return {0, 'ok'} end
local qty = tonumber(o[3])
redis.call('HSET', KEYS[4], 's:' .. oid, 'paid', 'ch:' .. oid, ARGV[4] or '')
redis.call('ZREM', KEYS[5], oid)
redis.call('HINCRBY', KEYS[1], 'held', -qty)
redis.call('HINCRBY', KEYS[1], 'sold', qty)
order_event('paid', oid, user, qty, qty * price, o[5], o[6], o[4], 2, now)
return {0, 'paid'}
