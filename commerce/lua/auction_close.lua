-- Close an active auction whose time is up (idempotent; any process, any number at once): a leader
-- and price >= reserve -> sold to the leader, else unsold. An unsold close is announced here; a sale
-- is announced by auction_announce.lua once the winner's order exists.
-- KEYS 1 auction hash, 2 stream seq, 3 stream log. ARGV 1 now ms or '', 2 channel, 3 log max length,
-- 4 auction id. Returns {-1} unknown, else {status, ends_at, winner, price, order id, announced 0/1}.
local a = redis.call('HMGET', KEYS[1], 'status', 'ends_at', 'price', 'leader', 'reserve', 'order', 'announced',
  'winner')
if not a[1] then return {-1} end
local status, winner, announced = a[1], a[8] or '', a[7] or '0'
if status == 'active' then
  local now = clock(ARGV[1])
  local ends_at, price = tonumber(a[2]), tonumber(a[3])
  if now >= ends_at then
    if a[4] ~= '' and price >= tonumber(a[5]) then
      status, winner = 'sold', a[4]
      redis.call('HSET', KEYS[1], 'status', status, 'winner', winner, 'closed_at', int(now))
    else
      status, announced = 'unsold', '1'
      redis.call('HSET', KEYS[1], 'status', status, 'closed_at', int(now), 'announced', 1)
      append_log(KEYS[2], KEYS[3], ARGV[2], auction_event(ARGV[4], status, '', price, '', ends_at, now), ARGV[3])
    end
  end
end
return {status, tonumber(a[2]), winner, tonumber(a[3]), a[6], tonumber(announced)}
