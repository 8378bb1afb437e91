-- One process's tick of a stream's audience figures (realtime/analytics.py, docs/api.md "Stream
-- analytics"), in one atomic step: its open viewer sockets (proc_total.lua), the peak of the total
-- over all processes, the minute's viewers_max, and the increments counted since its last tick.
-- KEYS[1] figures hash, KEYS[2] hash proc -> "count:expires_ms", KEYS[3] HyperLogLog of identities,
-- KEYS[4] per-minute hash ("<minute>:v|c|l"), KEYS[5] the stream's meta hash (for its status).
-- ARGV[1] proc, ARGV[2] open sockets, ARGV[3] expires_ms, ARGV[4] now ms, ARGV[5] views,
-- ARGV[6] watch ms, ARGV[7] n, then n triples (minute, comments, likes), then identities.
-- Returns {total of open viewer sockets, the stream's status}.
local now = tonumber(ARGV[4])
local total = proc_total(KEYS[2], ARGV[1], ARGV[2], ARGV[3], now)
if total > tonumber(redis.call('HGET', KEYS[1], 'peak') or '0') then
  redis.call('HSET', KEYS[1], 'peak', total)
end
local vfield = math.floor(now / 60000) .. ':v'
local vmax = redis.call('HGET', KEYS[4], vfield)
if vmax == false or total > tonumber(vmax) then
  redis.call('HSET', KEYS[4], vfield, total)
end
if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[1], 'views', ARGV[5]) end
if ARGV[6] ~= '0' then redis.call('HINCRBY', KEYS[1], 'watch_ms', ARGV[6]) end
local n = tonumber(ARGV[7])
for i = 0, n - 1 do
  local minute, comments, likes = ARGV[8 + i * 3], ARGV[9 + i * 3], ARGV[10 + i * 3]
  if comments ~= '0' then
    redis.call('HINCRBY', KEYS[4], minute .. ':c', comments)
    redis.call('HINCRBY', KEYS[1], 'comments', comments)
  end
  if likes ~= '0' then redis.call('HINCRBY', KEYS[4], minute .. ':l', likes) end
end
-- PFADD in chunks: unpack() of a very long list overflows Lua's C stack.
local first = 8 + n * 3
for i = first, #ARGV, 1000 do
  redis.call('PFADD', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return {total, redis.call('HGET', KEYS[5], 'status') or ''}
