-- The `auction` sold event, once: run after the winner's order exists (auction_award.lua).
-- KEYS 1 auction hash, 2 stream seq, 3 stream log. ARGV 1 now ms or '', 2 channel, 3 log max length,
-- 4 auction id. Returns the event's seq, or 0 when there is nothing (more) to announce.
local a = redis.call('HMGET', KEYS[1], 'status', 'announced', 'winner', 'price', 'order', 'ends_at')
if a[1] ~= 'sold' or a[2] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'announced', 1)
return append_log(KEYS[2], KEYS[3], ARGV[2],
  auction_event(ARGV[4], 'sold', a[3], tonumber(a[4]), a[5], tonumber(a[6]), clock(ARGV[1])), ARGV[3])
