-- Likes counted by one process since its last tick: add them to the global total and publish the
-- new total as a `likes` state event, atomically (viewers keep the highest total they saw).
-- KEYS[1] likes total; ARGV[1] likes to add, ARGV[2] channel, ARGV[3] now (epoch ms).
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], '{"type":"likes","total":' .. total .. ',"ts":' .. ARGV[3] .. '}')
return total
