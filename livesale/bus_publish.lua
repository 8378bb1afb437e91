-- Stream-log event (append_log, bus_log.lua), in one atomic step.
-- KEYS[1] seq counter, KEYS[2] log stream; ARGV[1] channel, ARGV[2] event JSON without its
-- closing brace, ARGV[3] max log length. With KEYS[3], ARGV[4], ARGV[5]: also HSET that field of
-- that hash (the state the event announces), so that concurrent writers leave the hash holding what
-- the last event said.
if KEYS[3] then redis.call('HSET', KEYS[3], ARGV[4], ARGV[5]) end
return append_log(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
