-- take: GCRA admission of ARGV[4] tokens from each bucket in KEYS, all at
-- one server instant (one key for a single check; many for take_many, all
-- in one hash slot on Redis Cluster). Denials change nothing.
--   KEYS[i]   a bucket ("<prefix>:{<key>}")
--   ARGV[1-3] P, D, TAU (see the prelude; units are ticks of 1/D us)
--   ARGV[4]   cost in whole tokens, 1 <= cost <= capacity
-- Reply: a flat array of 4 integers per key, in KEYS order:
--   allowed (1 or 0), remaining whole tokens,
--   retry_after in ticks (0 when allowed), reset_after in ticks.
local inc = tonumber(ARGV[4]) * P
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local a = ahead(key)
  local new = a + inc
  local n = #out
  if new <= TAU then
    store(key, new)
    out[n + 1] = 1
    out[n + 2] = idiv(TAU - new, P)
    out[n + 3] = 0
    out[n + 4] = new
  else
    out[n + 1] = 0
    out[n + 2] = idiv(TAU - a, P)
    out[n + 3] = new - TAU
    out[n + 4] = a
  end
end
return out
