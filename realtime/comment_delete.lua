-- Delete a comment once: append and publish its `comment_deleted` event (append_log,
-- livesale/bus_log.lua) unless the stream's log already holds one for that comment, in one atomic
-- step, so that deletes arriving together (two moderators, a double tap) publish a single event.
-- KEYS[1] seq counter, KEYS[2] log stream; ARGV[1] channel, ARGV[2] event JSON without its closing
-- brace, which begins with ARGV[4] (`{"type":"comment_deleted","id":"<id>",`), ARGV[3] max log
-- length, ARGV[5] how many of the newest log entries to look through.
-- Returns {1, seq} for a new deletion, {0, seq} for the earlier one (a log entry's id is `seq-0`).
local prefix = ARGV[4]
for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[5])) do
  if string.sub(entry[2][2], 1, #prefix) == prefix then
    return {0, tonumber(string.match(entry[1], '^(%d+)-'))}
  end
end
return {1, append_log(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])}
