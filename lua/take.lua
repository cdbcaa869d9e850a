-- take: GCRA admission of ARGV[4] tokens from each bucket in KEYS, all at
-- one server instant (one key for a single check; many for take_many, all
-- in one hash slot on Redis Cluster). Denials change nothing. One MGET
-- reads every TAT; only admitted keys are written; a key listed twice sees
-- its earlier admissions in this call.
--   KEYS[i]   a bucket ("<prefix>:{<key>}")
--   ARGV[1-3] P, D, TAU (see the prelude; units are ticks of 1/D us)
--   ARGV[4]   cost in whole tokens, 1 <= cost <= capacity
-- Reply: one integer per key, in KEYS order (the client derives remaining,
-- retry_after and reset_after from it and the cost):
--   allowed: the new TAT ahead of NOW in ticks (>= cost*P >= 1);
--   denied:  minus the TAT ahead of NOW in ticks, unchanged (<= 0).
local inc = tonumber(ARGV[4]) * P
local values = redis.call('MGET', unpack(KEYS))
-- Every value is read before any is written: a foreign one fails the call
-- with nothing taken.
local aheads = {}
for i = 1, #KEYS do
  aheads[i] = ahead_of(KEYS[i], values[i])
end
local out = {}
local taken = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local a = taken[key]
  local fresh = false
  if not a then
    a = aheads[i]
    fresh = not values[i]
  end
  local new = a + inc
  if new <= TAU then
    store(key, new, fresh)
    taken[key] = new
    out[i] = new
  else
    out[i] = -a
  end
end
return out
