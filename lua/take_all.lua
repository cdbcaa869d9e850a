-- take_all: several limits on one key, all or nothing: ARGV[4] tokens are
-- taken from every bucket in KEYS (one per limit, all in one hash slot on
-- Redis Cluster), or from none, at one server instant.
--   KEYS[i]   limit i's bucket
--   ARGV[1-3] P, D, TAU of limit 1 (see the prelude)
--   ARGV[4]   cost in whole tokens, 1 <= cost <= every limit's capacity
--   ARGV[5..] P, D, TAU of limits 2 .. #KEYS, three each
-- Reply: {denied_by, then for each limit i: remaining, retry_after,
--         reset_after}, times in limit i's ticks (of 1/D_i us).
--   denied_by 0: admitted; each limit's take (retry_after 0).
--   denied_by i >= 1: nothing taken; limit i has the longest wait (the
--   first such); each limit's answer is what a take of it would be now.
local cost = tonumber(ARGV[4])
local n = #KEYS
local limits = {}
for i = 1, n do
  local at = 0
  if i > 1 then
    at = 4 + 3 * (i - 2)
  end
  limits[i] = {tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])}
end
-- The prelude's functions read P, D, TAU and TAU_US: point them at limit i.
local function use(i)
  P, D, TAU = limits[i][1], limits[i][2], limits[i][3]
  TAU_US = idiv(TAU, D)
  last_new = nil
end

local values = redis.call('MGET', unpack(KEYS))
local ahead, new = {}, {}
local denied_by, longest = 0, -1
for i = 1, n do
  use(i)
  ahead[i] = ahead_of(KEYS[i], values[i])
  new[i] = ahead[i] + cost * P
  if new[i] > TAU then
    local wait = (new[i] - TAU) / D -- us; only compared
    if wait > longest then
      denied_by, longest = i, wait
    end
  end
end
-- A key MGET read as nil may hold another type: refuse before writing any
-- bucket (a script that fails half way keeps its writes).
if denied_by == 0 then
  for i = 1, n do
    if not values[i] and redis.call('EXISTS', KEYS[i]) == 1 then
      foreign(KEYS[i])
    end
  end
end
local out = {denied_by}
for i = 1, n do
  use(i)
  if denied_by == 0 then
    store(KEYS[i], new[i], not values[i])
  end
  if new[i] <= TAU then
    out[#out + 1] = (idiv(TAU - new[i], P))
    out[#out + 1] = 0
    out[#out + 1] = new[i]
  else
    out[#out + 1] = (idiv(TAU - ahead[i], P))
    out[#out + 1] = new[i] - TAU
    out[#out + 1] = ahead[i]
  end
end
return out
