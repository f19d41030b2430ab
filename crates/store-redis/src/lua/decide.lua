-- tollgate: one decision over every limit of a request (reserve), or a read (peek),
-- or an unchecked charge (apply). The arithmetic mirrors tollgate_core::counter.
--
-- KEYS[1]      the reservation key ({partition}:r:<request id>)
-- KEYS[1 + i]  the counter base key of item i ({partition}:c:<counter id>)
-- ARGV[1]      op: "reserve" | "peek" | "apply"
-- ARGV[2]      "1": use ARGV[3] as the time; "0": use the server's TIME
-- ARGV[3]      the caller's time in Unix ms (apply: the time the charge belongs to)
-- ARGV[4]      "1": hold the reservation for settle
-- ARGV[5]      how long a held reservation lives, ms
-- ARGV[6]      number of items n
-- ARGV[7 + 5(i-1) ..]  per item: window code (m h d M), limit, amount, metric code,
--              and for a day or month four window edges "e0,e1,e2,e3" (Unix ms,
--              computed by the caller in the limit's time zone: [e1, e2) holds the
--              caller's time, [e0, e1) and [e2, e3) the windows around it), or ""
--
-- Returns {flag, refused index (0-based, -1), retry_at (-1: never), used_1, reset_1, ...}
-- with flag 0 refused, 1 admitted (or applied), 2 a repeat of a held reservation;
-- or {-1, t} when this clock's time t is outside the windows the caller computed
-- edges for (its clock is more than a window off): the caller retries with edges
-- around t. Nothing is read or written before that check.

-- Effects replication (the default since Redis 7) lets a script that read TIME write.
if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local op = ARGV[1]
local now
if ARGV[2] == '1' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local at = now
if op == 'apply' then
  at = tonumber(ARGV[3])
end
local hold = ARGV[4] == '1'
local reservation_ttl = tonumber(ARGV[5])
local n = tonumber(ARGV[6])

local BUCKETS = 60
local SLOTS = BUCKETS + 1
local SLIDING = { m = 60000, h = 3600000 }

local function fmt(x)
  return string.format('%d', x)
end

-- The state of one counter at time t, loaded once per script run.
local counters = {}
-- The calendar window holding t among the edges the caller computed: its own
-- window, or the one before or after when this clock is a little off the caller's;
-- nil when t is outside all three.
local function calendar(edges, t)
  local e = {}
  for x in string.gmatch(edges, '[^,]+') do
    e[#e + 1] = tonumber(x)
  end
  for k = 1, 3 do
    if e[k] <= t and t < e[k + 1] then
      return e[k], e[k + 1]
    end
  end
  return nil
end

local function load(base, code, t, edges)
  local c = counters[base]
  if c then
    return c
  end
  local window_ms = SLIDING[code]
  if window_ms then
    local bucket_ms = window_ms / BUCKETS
    -- The ring's head never moves back (a clock stepping back never un-counts).
    local head = math.floor(t / bucket_ms)
    local raw = redis.call('HGETALL', base)
    local slots = {}
    for j = 1, #raw, 2 do
      local b = tonumber(raw[j])
      slots[b] = tonumber(raw[j + 1])
      if b > head then
        head = b
      end
    end
    local total = 0
    local stale = {}
    for b, v in pairs(slots) do
      if b > head - SLOTS then
        total = total + v
      else
        stale[#stale + 1] = fmt(b)
      end
    end
    c = { sliding = true, bucket_ms = bucket_ms, head = head, slots = slots, used = total, stale = stale }
  else
    local start, stop = calendar(edges, t)
    local key = base .. ':' .. fmt(start)
    c = { sliding = false, start = start, stop = stop, key = key, used = tonumber(redis.call('GET', key) or '0') }
  end
  counters[base] = c
  return c
end

-- When everything counted now has left the window (SlidingWindow::clear_at).
local function reset_at(c)
  if not c.sliding then
    return c.stop
  end
  for back = 0, SLOTS - 1 do
    local b = c.head - back
    if (c.slots[b] or 0) > 0 then
      return (b + SLOTS) * c.bucket_ms
    end
  end
  return c.head * c.bucket_ms
end

-- The earliest time `amount` more fits under `limit` (SlidingWindow::retry_at);
-- the caller has checked amount <= limit.
local function sliding_retry_at(c, amount, limit)
  local total = c.used
  if total + amount <= limit then
    return c.head * c.bucket_ms
  end
  for j = 0, SLOTS - 1 do
    total = total - (c.slots[c.head - BUCKETS + j] or 0)
    if total + amount <= limit then
      return (c.head + j + 1) * c.bucket_ms
    end
  end
  return (c.head + SLOTS) * c.bucket_ms
end

-- Charges `amount` to the counter's current window at time t; returns the window id.
-- Keys expire when nothing in them counts any more.
local function charge(base, c, amount)
  if c.sliding then
    local id = c.head
    if amount > 0 then
      redis.call('HINCRBY', base, fmt(id), fmt(amount))
      c.slots[id] = (c.slots[id] or 0) + amount
      c.used = c.used + amount
    end
    if #c.stale > 0 then
      redis.call('HDEL', base, unpack(c.stale))
      c.stale = {}
    end
    local ttl = reset_at(c) - now
    if ttl > 0 then
      redis.call('PEXPIRE', base, fmt(ttl))
    end
    return id
  end
  if amount > 0 then
    redis.call('INCRBY', c.key, fmt(amount))
    redis.call('PEXPIRE', c.key, fmt(c.stop - now))
    c.used = c.used + amount
  end
  return c.start
end

local function item(i)
  local o = 6 + (i - 1) * 5
  return KEYS[i + 1], ARGV[o + 1], tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), ARGV[o + 4], ARGV[o + 5]
end

for i = 1, n do
  local edges = ARGV[6 + (i - 1) * 5 + 5]
  if edges ~= '' and calendar(edges, at) == nil then
    return { -1, at }
  end
end

local function statuses(out)
  for i = 1, n do
    local base, code, _, _, _, edges = item(i)
    local c = load(base, code, at, edges)
    out[#out + 1] = c.used
    out[#out + 1] = reset_at(c)
  end
  return out
end

if op == 'apply' then
  for i = 1, n do
    local base, code, _, amount, _, edges = item(i)
    local c = load(base, code, at, edges)
    -- A charge whose window has already closed would count nowhere.
    local open
    if c.sliding then
      open = (c.head + SLOTS) * c.bucket_ms > now
    else
      open = c.stop > now
    end
    if open then
      charge(base, c, amount)
    end
  end
  return { 1, -1, -1 }
end

if op == 'reserve' and hold and redis.call('EXISTS', KEYS[1]) == 1 then
  -- A retry of a request whose reservation is still held: charged already.
  return statuses({ 2, -1, -1 })
end

-- Phase 1: check every item, charging nothing. Items sharing a counter would each be
-- charged, so earlier items' amounts count against later ones.
local refused = false
local refused_index = -1
local refused_retry = nil
local pending = {}
local out = { 0, -1, -1 }
for i = 1, n do
  local base, code, limit, amount, _, edges = item(i)
  local c = load(base, code, at, edges)
  local earlier = pending[base] or 0
  out[#out + 1] = c.used
  out[#out + 1] = reset_at(c)
  if c.used + earlier + amount > limit then
    local need = earlier + amount
    local retry = nil
    if need <= limit then
      if c.sliding then
        retry = sliding_retry_at(c, need, limit)
      else
        retry = c.stop
      end
    end
    -- Refusal::binding: never-fits wins, then the later retry; ties keep the first.
    if not refused then
      refused, refused_index, refused_retry = true, i - 1, retry
    elseif refused_retry ~= nil and (retry == nil or retry > refused_retry) then
      refused_index, refused_retry = i - 1, retry
    end
  end
  pending[base] = earlier + amount
end

if refused then
  out[2] = refused_index
  if refused_retry ~= nil then
    out[3] = refused_retry
  end
  return out
end
if op == 'peek' then
  out[1] = 1
  return out
end

-- Phase 2: everything fits; charge every item and remember where.
local record = {}
for i = 1, n do
  local base, code, _, amount, metric = item(i)
  local id = charge(base, counters[base], amount)
  if hold then
    record[#record + 1] = base
    -- A calendar window's end travels with its code ("d:<end ms>"), so settle knows
    -- whether the window still counts without any calendar arithmetic.
    if counters[base].sliding then
      record[#record + 1] = code
    else
      record[#record + 1] = code .. ':' .. fmt(counters[base].stop)
    end
    record[#record + 1] = fmt(id)
    record[#record + 1] = metric
    record[#record + 1] = fmt(amount)
  end
end
if hold then
  redis.call('DEL', KEYS[1])
  if #record > 0 then
    redis.call('RPUSH', KEYS[1], unpack(record))
  else
    redis.call('RPUSH', KEYS[1], '')
  end
  redis.call('PEXPIRE', KEYS[1], fmt(reservation_ttl))
end
return statuses({ 1, -1, -1 })
