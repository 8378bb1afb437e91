-- Stream-log event: next seq, bounded log entry and publish in one atomic step, so a viewer that
-- resumes with `since=` sees exactly what live viewers saw, in the same order.
-- KEYS[1] seq counter, KEYS[2] log stream; ARGV[1] channel, ARGV[2] event JSON without its
-- closing brace, ARGV[3] max log length. With KEYS[3], ARGV[4], ARGV[5]: also HSET that field of
-- that hash (the state the event announces), so that concurrent writers leave the hash holding what
-- the last event said.
if KEYS[3] then redis.call('HSET', KEYS[3], ARGV[4], ARGV[5]) end
local seq = redis.call('INCR', KEYS[1])
local payload = ARGV[2] .. ',"seq":' .. seq .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'd', payload)
redis.call('PUBLISH', ARGV[1], payload)
return seq
