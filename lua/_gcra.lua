-- guardian GCRA prelude, prepended to every script when it is loaded.
--
-- Time comes from the server: redis.call('TIME'), in microseconds (NOW).
-- The emission interval T = refill_interval / refill_rate is an exact
-- fraction P/D us; arithmetic runs in integer *ticks* of 1/D us, so no
-- fraction of a token is lost at any call rate.
--   ARGV[1] P    T in ticks (integer >= 1)
--   ARGV[2] D    ticks per microsecond (integer >= 1; 1 when T is whole us)
--   ARGV[3] TAU  burst tolerance C*T in ticks (C = TAU / P, the capacity)
-- One string per key, the theoretical arrival time (TAT): "<us>" or
-- "<us>:<f>", meaning us + f/D microseconds of server time, 0 < f < D.
-- Its PX is the time until the bucket is full again, rounded up to a ms.
-- Exact range: Lua numbers are doubles, exact integers below 2^53. The
-- client guarantees TAU <= 2^52 (so TAU + cost*P < 2^53); NOW stays below
-- 2^53 us until the year 2255. Every division below is math.fmod-based,
-- which is exact on doubles.
local P = tonumber(ARGV[1])
local D = tonumber(ARGV[2])
local TAU = tonumber(ARGV[3])
local US_PER_MS = 1000
local fmod = math.fmod

-- floor(a / b) and a mod b for integers a >= 0, b >= 1, exactly.
local function idiv(a, b)
  local r = fmod(a, b)
  return (a - r) / b, r
end

local t = redis.call('TIME')
local NOW = t[1] * 1000000 + t[2]
local TAU_US = idiv(TAU, D)

local function foreign(key)
  error({err = 'GUARDIAN key ' .. key .. ' holds a value guardian did not write'})
end

-- Ticks the TAT ``v`` (the key's value, false when absent) lies ahead of
-- NOW, within [0, TAU]. A TAT beyond TAU (the server clock stepped back)
-- counts as an empty bucket.
local function ahead_of(key, v)
  if not v then
    return 0
  end
  -- Only what store() writes: digits, or digits ':' digits. tonumber()
  -- alone would take 'nan', 'inf', '1e400', '0x10' and padded numbers.
  local us, f = string.match(v, '^(%d+):(%d+)$')
  if not us then
    us, f = string.match(v, '^%d+$'), '0'
  end
  if not us or #us > 20 or #f > 20 then
    foreign(key)
  end
  us, f = tonumber(us), tonumber(f)
  if f >= D then
    foreign(key)
  end
  local d = us - NOW
  if d < 0 then
    return 0
  end
  if d > TAU_US then
    return TAU
  end
  local a = d * D + f
  if a > TAU then
    return TAU
  end
  return a
end

local function ahead(key)
  return ahead_of(key, redis.call('GET', key))
end

-- Stores TAT = NOW + new ticks (new >= 1), expiring when it is reached.
-- ``fresh``: MGET found no string there, so the key must not exist (NX;
-- MGET reads another type as nil too, and that must not be overwritten).
-- The strings of the last ``new`` are kept: in a batch, every key that
-- was full (absent) gets the same ones.
local last_new, last_v, last_ms
local function store(key, new, fresh)
  if new ~= last_new then
    local us, f = idiv(new, D)
    if f == 0 then
      last_v = string.format('%d', NOW + us)
    else
      last_v = string.format('%d:%d', NOW + us, f)
    end
    local ms, r = idiv(new, D * US_PER_MS)
    if r > 0 then
      ms = ms + 1
    end
    last_new, last_ms = new, string.format('%d', ms)
  end
  if not fresh then
    redis.call('SET', key, last_v, 'PX', last_ms)
  elseif not redis.call('SET', key, last_v, 'PX', last_ms, 'NX') then
    foreign(key)
  end
end
