-- Guarded stream transition and its `stream` event, in one atomic step: two transitions at once (a
-- start and an end) leave the meta hash on the state the last event in the log announced, and no
-- transition is made without its event.
-- KEYS[1] stream meta hash, KEYS[2] seq counter, KEYS[3] log stream; ARGV[1] action name, ARGV[2] new
-- status, ARGV[3] comma-separated allowed current states, ARGV[4] timestamp field, ARGV[5] timestamp,
-- ARGV[6] channel, ARGV[7] event JSON without its closing brace, ARGV[8] max log length.
-- Returns {1, seq} or {0, current}; current is false when the stream does not exist.
-- The event goes out through append_log (livesale/bus_log.lua), as bus_publish.lua's do.
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, false} end
for s in string.gmatch(ARGV[3], '[^,]+') do
  if s == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[4], ARGV[5])
    return {1, append_log(KEYS[2], KEYS[3], ARGV[6], ARGV[7], ARGV[8])}
  end
end
return {0, cur}
