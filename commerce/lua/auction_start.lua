-- scheduled -> active, ends_at = now + duration, and the `auction` event, in one step.
-- KEYS 1 auction hash, 2 stream seq, 3 stream log. ARGV 1 now ms or '', 2 channel, 3 log max length,
-- 4 auction id. Returns {-1} unknown, {0, current status} not scheduled, {1, ends_at, seq}.
local a = redis.call('HMGET', KEYS[1], 'status', 'duration_ms')
if not a[1] then return {-1} end
if a[1] ~= 'scheduled' then return {0, a[1]} end
local now = clock(ARGV[1])
local ends_at = now + tonumber(a[2])
redis.call('HSET', KEYS[1], 'status', 'active', 'started_at', int(now), 'ends_at', int(ends_at))
local seq = append_log(KEYS[2], KEYS[3], ARGV[2], auction_event(ARGV[4], 'active', '', 0, '', ends_at, now), ARGV[3])
return {1, ends_at, seq}
