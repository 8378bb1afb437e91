-- Shared by every inventory script (prepended at load time). Every script gets the same KEYS:
-- 1 sale hash, 2 users, 3 idem, 4 orders, 5 holds, 6 events (all tagged {sale:ID}).
-- Rule: validate everything before the first write, so a refused call changes nothing.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A sale is active from starts_at for its duration; `ended` in the hash is an early end.
local function effective_status(stored, starts_at, ends_at, now)
  if stored == 'ended' then return 'ended' end
  if starts_at > 0 and now >= starts_at then
    if now < ends_at then return 'active' end
    return 'ended'
  end
  return 'scheduled'
end

local function order_event(status, oid, user, qty, amount, key, created, expires, version, now)
  redis.call('XADD', KEYS[6], '*', 'e', status, 'o', oid, 'u', user, 'q', qty, 'a', amount,
    'k', key, 'c', created, 'x', expires, 'v', version, 't', now)
end

-- reserved -> cancelled | expired. Returns units returned (0 if the order was not reserved).
-- The caller moves those units from held to available in the sale hash.
local function release(oid, new_status, price, now)
  local o = redis.call('HMGET', KEYS[4], 's:' .. oid, 'u:' .. oid, 'q:' .. oid, 'k:' .. oid, 'c:' .. oid, 'e:' .. oid)
  if o[1] ~= 'reserved' then
    redis.call('ZREM', KEYS[5], oid)
    return 0
  end
  local qty = tonumber(o[3])
  redis.call('HSET', KEYS[4], 's:' .. oid, new_status)
  if redis.call('HINCRBY', KEYS[2], o[2], -qty) <= 0 then redis.call('HDEL', KEYS[2], o[2]) end
  redis.call('ZREM', KEYS[5], oid)
  order_event(new_status, oid, o[2], qty, qty * price, o[4], o[5], o[6], 2, now)
  return qty
end

-- Expire up to `limit` holds that are due; returns {orders expired, units returned}.
-- A reserved order whose hold is past its expiry is expired here and then (pay and cancel do not
-- wait for the sweeper). Returns true when it was.
local function expire_if_lapsed(oid, expires, price, now)
  if now < tonumber(expires) then return false end
  local units = release(oid, 'expired', price, now)
  redis.call('HINCRBY', KEYS[1], 'available', units)
  redis.call('HINCRBY', KEYS[1], 'held', -units)
  return true
end

local function expire_due(price, now, limit)
  local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, limit)
  local units = 0
  for _, oid in ipairs(due) do units = units + release(oid, 'expired', price, now) end
  if units > 0 then
    redis.call('HINCRBY', KEYS[1], 'available', units)
    redis.call('HINCRBY', KEYS[1], 'held', -units)
  end
  return {#due, units}
end
