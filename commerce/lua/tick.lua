-- Periodic step for one sale, run by every process (idempotent): move the stored status to what the
-- clock says, and expire due holds. ARGV[1] max holds to expire, ARGV[2] 'start' | 'end' | '' to
-- start (scheduled, no start time yet) or end the sale now.
-- Returns {status, changed 0/1, orders expired, available, held, sold, stock, starts_at, ends_at}
-- or {false} for an unknown sale.
local m = redis.call('HMGET', KEYS[1], 'status', 'starts_at', 'ends_at', 'duration_ms', 'price_cents')
if not m[1] then return {false} end
local now = now_ms()
local prev = m[1]
local stored = prev
local starts_at, ends_at = tonumber(m[2]), tonumber(m[3])
if ARGV[2] == 'start' and prev == 'scheduled' and (starts_at == 0 or starts_at > now) then
  starts_at, ends_at = now, now + tonumber(m[4])
  redis.call('HSET', KEYS[1], 'starts_at', starts_at, 'ends_at', ends_at)
elseif ARGV[2] == 'end' and prev ~= 'ended' then
  stored, ends_at = 'ended', math.min(ends_at > 0 and ends_at or now, now)
  redis.call('HSET', KEYS[1], 'ends_at', ends_at)
end
local status = effective_status(stored, starts_at, ends_at, now)
local changed = 0
if status ~= prev then
  redis.call('HSET', KEYS[1], 'status', status)
  changed = 1
end
local r = expire_due(tonumber(m[5]), now, tonumber(ARGV[1]))
local s = redis.call('HMGET', KEYS[1], 'available', 'held', 'sold', 'stock')
return {status, changed, r[1], tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), starts_at, ends_at}
