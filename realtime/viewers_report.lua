-- One process reports its local viewer count of a stream; entries of processes that stopped
-- reporting expire, so dead processes drop out of the total. Publishes `viewers` when the total
-- changed. A total of 0 is kept as no key at all (a stream nobody watches leaves nothing behind).
-- KEYS[1] hash proc -> "count:expires_ms", KEYS[2] total;
-- ARGV[1] proc id, ARGV[2] local count, ARGV[3] expires_ms, ARGV[4] now ms, ARGV[5] channel.
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local now = tonumber(ARGV[4])
local total = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local count, expires = string.match(all[i + 1], '^(%d+):(%d+)$')
  if count == nil or tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    total = total + tonumber(count)
  end
end
local old = tonumber(redis.call('GET', KEYS[2]) or '0')
if total > 0 then
  redis.call('PEXPIRE', KEYS[1], 86400000)
  redis.call('SET', KEYS[2], total, 'PX', 86400000)
else
  redis.call('DEL', KEYS[1], KEYS[2])
end
if old ~= total then
  redis.call('PUBLISH', ARGV[5], '{"type":"viewers","count":' .. total .. ',"ts":' .. ARGV[4] .. '}')
end
return total
