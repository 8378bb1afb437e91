-- Publish a sale's current `available` as a `stock` state event (livesale/bus.py's channel), read and
-- published in one atomic step: publishes leave in the order of the reads, so the last `stock` event
-- of a sale always carries its latest value, whichever process or batch sent it.
-- KEYS[1] sale hash; ARGV[1] channel, ARGV[2] sale id (JSON-safe: [a-z0-9]).
local a = redis.call('HGET', KEYS[1], 'available')
if not a then return false end
redis.call('PUBLISH', ARGV[1], '{"type":"stock","sale":"' .. ARGV[2] .. '","available":' .. a .. '}')
return tonumber(a)
