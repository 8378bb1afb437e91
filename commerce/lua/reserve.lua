-- Reserve for a batch of buyers of one sale, each one an atomic check-and-hold:
-- idempotency key, sale active, per-user limit, stock, then decrement, hold and order event.
-- ARGV[1] n, then n times: user, idempotency key, quantity, new order id.
-- Returns {available, held, r1, ..., rn}; ri = {code, order id, quantity, status, expires ms, created ms}
-- code 0 reserved, 1 same key retried (existing order), 2 sold_out, 3 limit_reached,
-- 4 sale_not_active, 5 idempotency_conflict; {-1} for an unknown sale.
local m = redis.call('HMGET', KEYS[1], 'available', 'limit', 'hold_ms', 'status', 'starts_at', 'ends_at', 'price_cents', 'held')
if not m[1] then return {-1} end
local now = now_ms()
local available, limit, hold_ms = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
local status = effective_status(m[4], tonumber(m[5]), tonumber(m[6]), now)
local price = tonumber(m[7])
local n = tonumber(ARGV[1])
local out = {0, 0}
local taken = 0
local swept = false
for i = 0, n - 1 do
  local user, key, qty, oid = ARGV[2 + i * 4], ARGV[3 + i * 4], tonumber(ARGV[4 + i * 4]), ARGV[5 + i * 4]
  local ikey = user .. '\0' .. key
  local existing = redis.call('HGET', KEYS[3], ikey)
  if existing then
    local o = redis.call('HMGET', KEYS[4], 'q:' .. existing, 's:' .. existing, 'e:' .. existing, 'c:' .. existing)
    if not o[1] then
      -- The order is gone but its key is not (the retention EXPIREs of an ended sale's keys land in
      -- different milliseconds): the sale is over.
      out[#out + 1] = {4}
    elseif tonumber(o[1]) ~= qty then
      out[#out + 1] = {5, existing, tonumber(o[1])}
    else
      out[#out + 1] = {1, existing, qty, o[2], tonumber(o[3]), tonumber(o[4])}
    end
  elseif status ~= 'active' then
    out[#out + 1] = {4}
  else
    local have = tonumber(redis.call('HGET', KEYS[2], user) or '0')
    if have + qty > limit then
      out[#out + 1] = {3}
    else
      if available - taken < qty and not swept then
        -- Units held by lapsed buyers go back before we say sold out.
        swept = true
        local r = expire_due(price, now, 200)
        available = available + r[2]
      end
      if available - taken < qty then
        out[#out + 1] = {2}
      else
        taken = taken + qty
        local expires = now + hold_ms
        redis.call('HINCRBY', KEYS[2], user, qty)
        redis.call('HSET', KEYS[3], ikey, oid)
        redis.call('HSET', KEYS[4], 's:' .. oid, 'reserved', 'u:' .. oid, user, 'q:' .. oid, qty,
          'e:' .. oid, expires, 'k:' .. oid, key, 'c:' .. oid, now)
        redis.call('ZADD', KEYS[5], expires, oid)
        order_event('reserved', oid, user, qty, qty * price, key, now, expires, 1, now)
        out[#out + 1] = {0, oid, qty, 'reserved', expires, now}
      end
    end
  end
end
if taken > 0 then
  redis.call('HINCRBY', KEYS[1], 'available', -taken)
  redis.call('HINCRBY', KEYS[1], 'held', taken)
end
out[1] = available - taken
out[2] = tonumber(redis.call('HGET', KEYS[1], 'held'))
return out
