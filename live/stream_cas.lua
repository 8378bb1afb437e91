-- Guarded stream transition: KEYS[1] stream meta hash; ARGV[1] action name, ARGV[2] new status,
-- ARGV[3] comma-separated allowed current states, ARGV[4] timestamp field, ARGV[5] timestamp.
-- Returns {1, new} or {0, current}; current is false when the stream does not exist.
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, false} end
for s in string.gmatch(ARGV[3], '[^,]+') do
  if s == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[4], ARGV[5])
    return {1, ARGV[2]}
  end
end
return {0, cur}
