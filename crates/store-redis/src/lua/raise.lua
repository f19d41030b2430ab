-- tollgate: raise calendar counters to at least what the ledger says was used in
-- their window (the counter rebuild job). Never lowers a counter: what Redis counted
-- beyond the ledger (reservations in flight, records not yet written) stays.
--
-- KEYS[i]  the counter base key of item i ({partition}:c:<counter id>)
-- ARGV[1]  "1": use ARGV[2] as the time; "0": use the server's TIME
-- ARGV[2]  the caller's time in Unix ms
-- ARGV[3 + 3(i-1) ..]  per item: window code (d M), window start (Unix ms), amount
--
-- Returns how many counters were raised.

if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local now
if ARGV[1] == '1' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local DAY = 86400000

local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month
  if mp < 10 then month = mp + 3 else month = mp - 9 end
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  return year, month
end

local function days_from_civil(year, month, day)
  local y = year
  if month <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local m
  if month > 2 then m = month - 3 else m = month + 9 end
  local doy = math.floor((153 * m + 2) / 5) + day - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function calendar(code, t)
  local day = math.floor(t / DAY)
  if code == 'd' then
    return day * DAY, (day + 1) * DAY
  end
  local y, m = civil_from_days(day)
  local start = days_from_civil(y, m, 1) * DAY
  if m == 12 then
    y = y + 1
    m = 1
  else
    m = m + 1
  end
  return start, days_from_civil(y, m, 1) * DAY
end

local raised = 0
for i = 1, #KEYS do
  local o = 2 + (i - 1) * 3
  local code, start, amount = ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local current_start, stop = calendar(code, now)
  -- Only the window that is current by this clock: a total computed just before
  -- midnight must not land in the next day.
  if current_start == start and amount > 0 then
    local key = KEYS[i] .. ':' .. string.format('%d', start)
    local used = tonumber(redis.call('GET', key) or '0')
    if used < amount then
      redis.call('SET', key, string.format('%d', amount), 'PX', string.format('%d', stop - now))
      raised = raised + 1
    end
  end
end
return raised
