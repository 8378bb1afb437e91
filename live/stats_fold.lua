-- Fold a sale's order events (commerce's {sale:ID}:events stream, written by the inventory scripts in
-- the same step as each transition) into its order figures, from where the last fold stopped; any
-- process may run it at any time, and each event is counted exactly once (docs/api.md "Stream analytics").
-- KEYS[1] events stream, KEYS[2] figures hash (cursor, orders, paid_orders, units_sold, gmv_cents),
-- KEYS[3] set of users with a paid order, KEYS[4] per-minute hash ("<minute>:o" orders created,
-- "<minute>:g" GMV of the orders paid that minute). ARGV[1] most events to fold in this call.
-- Returns the number of events folded.
local cursor = redis.call('HGET', KEYS[2], 'cursor') or '0-0'
local entries = redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', ARGV[1])
local orders, paid, units, gmv = 0, 0, 0, 0
for _, entry in ipairs(entries) do
  local f = {}
  local kv = entry[2]
  for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
  if f.e == 'reserved' then
    orders = orders + 1
    redis.call('HINCRBY', KEYS[4], math.floor(tonumber(f.c) / 60000) .. ':o', 1)
  elseif f.e == 'paid' then
    paid = paid + 1
    units = units + tonumber(f.q)
    gmv = gmv + tonumber(f.a)
    redis.call('SADD', KEYS[3], f.u)
    redis.call('HINCRBY', KEYS[4], math.floor(tonumber(f.t) / 60000) .. ':g', f.a)
  end
end
if #entries > 0 then
  redis.call('HSET', KEYS[2], 'cursor', entries[#entries][1])
  redis.call('HINCRBY', KEYS[2], 'orders', orders)
  redis.call('HINCRBY', KEYS[2], 'paid_orders', paid)
  redis.call('HINCRBY', KEYS[2], 'units_sold', units)
  redis.call('HINCRBY', KEYS[2], 'gmv_cents', gmv)
end
return #entries
