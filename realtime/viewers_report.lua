-- One process reports its local viewer count of a stream (proc_total.lua). Publishes `viewers` when
-- the total changed. A total of 0 is kept as no key at all (a stream nobody watches leaves nothing behind).
-- KEYS[1] hash proc -> "count:expires_ms", KEYS[2] total;
-- ARGV[1] proc id, ARGV[2] local count, ARGV[3] expires_ms, ARGV[4] now ms, ARGV[5] channel.
local total = proc_total(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))
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
