-- reserved -> cancelled, units back to available. ARGV[1] order id, ARGV[2] user.
-- Returns {0, available}, {-1} unknown or not the user's order, {-2, status} not pending.
local oid, user = ARGV[1], ARGV[2]
local o = redis.call('HMGET', KEYS[4], 's:' .. oid, 'u:' .. oid, 'e:' .. oid)
if not o[1] or o[2] ~= user then return {-1} end
if o[1] ~= 'reserved' then return {-2, o[1]} end
local now = now_ms()
local price = tonumber(redis.call('HGET', KEYS[1], 'price_cents'))
if expire_if_lapsed(oid, o[3], price, now) then return {-2, 'expired'} end  -- not cancelled
local units = release(oid, 'cancelled', price, now)
local available = redis.call('HINCRBY', KEYS[1], 'available', units)
redis.call('HINCRBY', KEYS[1], 'held', -units)
return {0, available}
