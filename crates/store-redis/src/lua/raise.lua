-- tollgate: raise calendar counters to at least what the ledger says was used in
-- their window (the counter rebuild job). Never lowers a counter: what Redis counted
-- beyond the ledger (reservations in flight, records not yet written) stays.
--
-- KEYS[i]  the counter base key of item i ({partition}:c:<counter id>)
-- ARGV[1]  "1": use ARGV[2] as the time; "0": use the server's TIME
-- ARGV[2]  the caller's time in Unix ms
-- ARGV[3 + 3(i-1) ..]  per item: window start and end (Unix ms, computed by the caller
--                      in the limit's time zone), amount
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


local raised = 0
for i = 1, #KEYS do
  local o = 2 + (i - 1) * 3
  local start, stop, amount = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  -- Only the window that is current by this clock: a total computed just before
  -- midnight must not land in the next day.
  if start <= now and now < stop and amount > 0 then
    local key = KEYS[i] .. ':' .. string.format('%d', start)
    local used = tonumber(redis.call('GET', key) or '0')
    if used < amount then
      redis.call('SET', key, string.format('%d', amount), 'PX', string.format('%d', stop - now))
      raised = raised + 1
    end
  end
end
return raised
