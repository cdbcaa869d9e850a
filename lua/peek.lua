-- peek: what take of ARGV[4] tokens would answer now, changing nothing
-- (the same GCRA rule as take.lua; 0 tokens reads the bucket as it is).
--   KEYS[1]   a bucket
--   ARGV[1-3] P, D, TAU (see the prelude)
--   ARGV[4]   cost in whole tokens, 0 <= cost <= capacity
-- Reply: {allowed (1 or 0), remaining whole tokens (after the take when
--         allowed), retry_after in ticks (0 when allowed), reset_after in
--         ticks (until the bucket would be full again)}.
local a = ahead(KEYS[1])
local new = a + tonumber(ARGV[4]) * P
if new <= TAU then
  return {1, (idiv(TAU - new, P)), 0, new}
end
return {0, (idiv(TAU - a, P)), new - TAU, a}
