-- release: give back up to ARGV[4] unused tokens of one reservation, as if
-- they had never been reserved. Only tokens whose place in the bucket's
-- timeline is still ahead of NOW can go back: the reservation moved the TAT
-- to T1 = ARGV[5] us + ARGV[6] ticks, and a token returned at NOW must
-- satisfy T1 - returned*P >= NOW. Later takes only move the TAT up, so the
-- bucket is then exactly as if the reservation had been smaller; a token
-- past that point has refilled already and returning it would over-admit.
--   KEYS[1]   a bucket
--   ARGV[1-3] P, D, TAU (see the prelude)
--   ARGV[4]   tokens to give back, an integer >= 1
--   ARGV[5]   the reservation's NOW in server microseconds (reserve's 5th)
--   ARGV[6]   the reservation's reset_after in ticks (reserve's 4th)
-- Reply: {tokens given back, remaining whole tokens after}.
-- Exact: |ARGV[5] - NOW| is compared with TAU_US before it is scaled by D.
local n = tonumber(ARGV[4])
local since = NOW - tonumber(ARGV[5])
local a = ahead(KEYS[1])
if since > TAU_US or since < -TAU_US then
  return {0, (idiv(TAU - a, P))}
end
local left = tonumber(ARGV[6]) - since * D
if left < P then
  return {0, (idiv(TAU - a, P))}
end
local back = idiv(left, P)
local held = idiv(a, P)
if back > n then
  back = n
end
if back > held then
  back = held
end
if back == 0 then
  return {0, (idiv(TAU - a, P))}
end
local na = a - back * P
if na == 0 then
  redis.call('DEL', KEYS[1])
else
  store(KEYS[1], na)
end
return {back, (idiv(TAU - na, P))}
