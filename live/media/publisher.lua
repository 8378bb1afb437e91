-- A stream's publisher claim (one publisher per stream, across processes) and its `video` event, in one
-- atomic step: the stream's `video` field (the claim exists) and the last `video` event agree.
-- KEYS[1] claim key, KEYS[2] seq counter, KEYS[3] log stream; ARGV[1] op (claim|refresh|release),
-- ARGV[2] owner (process:session), ARGV[3] ttl ms, ARGV[4] channel, ARGV[5] event JSON without its
-- closing brace, ARGV[6] max log length. Returns 1 when done, 0 when the claim is another owner's
-- (or, for claim, taken).
local op = ARGV[1]
if op == 'claim' then
  if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then return 0 end
  append_log(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6])
  return 1
end
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
if op == 'refresh' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
redis.call('DEL', KEYS[1])
append_log(KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6])
return 1
