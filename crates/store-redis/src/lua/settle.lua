-- tollgate: settle a held reservation: apply actual - reserved to the windows it was
-- charged in, while they still count; once (the reservation is deleted).
--
-- KEYS[1]  the reservation key ({partition}:r:<request id>)
-- ARGV[1]  "1": use ARGV[2] as the time; "0": use the server's TIME
-- ARGV[2]  the caller's time in Unix ms
-- ARGV[3..6]  actual requests, input tokens, output tokens, cost in micro-dollars
--
-- Returns 1 when a reservation was settled, 0 when there was none (unknown, already
-- settled, not held, or expired).

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

local record = redis.call('LRANGE', KEYS[1], 0, -1)
if #record == 0 then
  return 0
end
redis.call('DEL', KEYS[1])

local SLOTS = 61
local SLIDING = { m = 60000, h = 3600000 }
local actual = {
  r = tonumber(ARGV[3]),
  i = tonumber(ARGV[4]),
  o = tonumber(ARGV[5]),
  c = tonumber(ARGV[6]),
}
actual.t = actual.i + actual.o

local function fmt(x)
  return string.format('%d', x)
end

for j = 1, #record - 4, 5 do
  local base, code, id, metric, reserved = record[j], record[j + 1], tonumber(record[j + 2]), record[j + 3],
    tonumber(record[j + 4])
  local delta = (actual[metric] or 0) - reserved
  if delta ~= 0 then
    local window_ms = SLIDING[code]
    if window_ms then
      local bucket_ms = window_ms / 60
      local head = math.floor(now / bucket_ms)
      local newest = id
      for _, f in ipairs(redis.call('HKEYS', base)) do
        local b = tonumber(f)
        if b > head then head = b end
        if b > newest then newest = b end
      end
      -- Only while the bucket still counts: a late settlement never leaks into a
      -- later window.
      if id <= head and id > head - SLOTS then
        if delta > 0 then
          redis.call('HINCRBY', base, fmt(id), fmt(delta))
          local ttl = (newest + SLOTS) * bucket_ms - now
          if ttl > 0 then
            redis.call('PEXPIRE', base, fmt(ttl))
          end
        else
          local current = tonumber(redis.call('HGET', base, fmt(id)) or '0')
          local take = math.min(-delta, current)
          if take > 0 then
            redis.call('HINCRBY', base, fmt(id), fmt(-take))
          end
        end
      end
    else
      -- A calendar window counts until its end, which decide.lua recorded with the
      -- code ("d:<end ms>"); a record without one (written by an older version) goes
      -- by the counter's key, which expires when its window ends.
      local key = base .. ':' .. fmt(id)
      local stop = tonumber(string.match(code, ':(%d+)$') or '')
      local open
      if stop then
        open = now < stop
      else
        open = redis.call('EXISTS', key) == 1
      end
      if open then
        if delta > 0 then
          redis.call('INCRBY', key, fmt(delta))
          if stop then
            redis.call('PEXPIRE', key, fmt(stop - now))
          end
        else
          local current = tonumber(redis.call('GET', key) or '0')
          local take = math.min(-delta, current)
          if take > 0 then
            redis.call('DECRBY', key, fmt(take))
          end
        end
      end
    end
  end
end
return 1
