-- Prelude of the scripts that write a stream-log event (bus_publish.lua, live/stream_cas.lua): the
-- next seq, the bounded log entry and the publish, so that a viewer resuming with `since=` sees
-- exactly what live viewers saw, in the same order.
local function append_log(seq_key, log_key, channel, head, maxlen)
  local seq = redis.call('INCR', seq_key)
  local payload = head .. ',"seq":' .. seq .. '}'
  redis.call('XADD', log_key, 'MAXLEN', '~', maxlen, seq .. '-0', 'd', payload)
  redis.call('PUBLISH', channel, payload)
  return seq
end
