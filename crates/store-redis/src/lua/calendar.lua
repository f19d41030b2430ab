-- Shared by every script (prepended when the scripts are built): UTC calendar
-- windows, the same arithmetic as tollgate_core::calendar.
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

-- [start, end) of the UTC calendar window (d: day, M: month) containing t.
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
