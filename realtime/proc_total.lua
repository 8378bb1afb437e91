-- Prelude of viewers_report.lua and analytics_report.lua: a hash of process id -> "count:expires_ms"
-- where each process reports its own count; entries of processes that stopped reporting expire, so
-- dead processes drop out of the total. Sets this process's entry (a count of 0 removes it) and
-- returns the total over the live entries.
local function proc_total(key, proc, count, expires, now)
  if tonumber(count) > 0 then
    redis.call('HSET', key, proc, count .. ':' .. expires)
  else
    redis.call('HDEL', key, proc)
  end
  local total = 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local c, e = string.match(all[i + 1], '^(%d+):(%d+)$')
    if c == nil or tonumber(e) < now then
      redis.call('HDEL', key, all[i])
    else
      total = total + tonumber(c)
    end
  end
  return total
end
