-- Shared by every group-buy script (prepended at load time). KEYS (commerce/keys.py groupbuy_keys):
-- 1 group-buy hash, 2 groups, 3 users (user -> open group), 4 idem, 5 orders, 6 open (zset), 7 pending
-- (zset), 8 settle (set); all tagged {gb:ID}. Validate everything before the first write.
-- Units: every member of a group that is not closed holds one unit (`in_groups`), from the join
-- (before the charge) until the close or a declined card; so available + in_groups + sold == stock.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The price of the largest tier whose size `members` reaches, or nil below the smallest.
local function tier_price(tiers, members)
  local price = nil
  for size, p in string.gmatch(tiers, '(%d+):(%d+)') do
    if members >= tonumber(size) then price = tonumber(p) end
  end
  return price
end

local function split(list)
  local out = {}
  for oid in string.gmatch(list or '', '[^,]+') do out[#out + 1] = oid end
  return out
end
