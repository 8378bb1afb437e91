-- Shared by the auction scripts (prepended after livesale/bus_log.lua's append_log). Every auction
-- script's KEYS start: 1 auction hash, then the stream's seq counter and log, all tagged {stream:ID}.
-- Rule: validate everything before the first write, so a refused call changes nothing.

-- `now` is the caller's epoch ms when given (tests drive the clock), else Redis's own clock: every
-- process then closes and refuses bids by the same clock.
local function clock(arg)
  if arg and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The increment over a current price p (docs/auctions.md), as commerce/auction_rules.py.
local function increment(p)
  if p < 3000 then return 100 elseif p < 5000 then return 200 elseif p < 10000 then return 300
  elseif p < 30000 then return 500 elseif p < 100000 then return 1000 elseif p < 200000 then return 2000 end
  return 5000
end

local function int(x) return string.format('%d', x) end

-- Epoch ms as the API's time format, 2026-11-24T17:01:10.460Z (livesale/times.py iso_ms), so events
-- carry the same `ends_at` text as GET. Days to civil date: H. Hinnant's algorithm (days >= 0).
local function iso_ms(ms)
  local s = math.floor(ms / 1000)
  local milli = ms - s * 1000
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, math.floor(rem / 3600),
    math.floor(rem % 3600 / 60), rem % 60, milli)
end

-- An `auction` stream-log event's JSON without its closing brace (append_log adds "seq").
local function auction_event(id, status, winner, price, order, ends_at, now)
  return '{"type":"auction","auction":"' .. id .. '","status":"' .. status .. '","winner":'
    .. (winner ~= '' and cjson.encode(winner) or 'null') .. ',"price_cents":' .. int(price)
    .. ',"order":' .. (order ~= '' and ('"' .. order .. '"') or 'null') .. ',"ends_at":"' .. iso_ms(ends_at)
    .. '","ts":' .. int(now)
end
