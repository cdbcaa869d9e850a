-- reserve: take up to ARGV[4] tokens from one bucket, as many as it holds
-- now (for local leases: the batching backend serves them itself), but
-- nothing unless at least ARGV[5] (the cost of the check that asks) fit.
--   KEYS[1]   a bucket
--   ARGV[1-3] P, D, TAU (see the prelude)
--   ARGV[4]   tokens wanted, an integer >= 1
--   ARGV[5]   tokens needed, 1 <= needed <= capacity (optional, 1; raises
--             ARGV[4] when above it)
-- Reply: {granted tokens (0, or needed..wanted), remaining whole tokens,
--         retry_after in ticks until the needed tokens are available (0
--         when granted > 0), reset_after in ticks, NOW in server
--         microseconds}.
-- NOW and reset_after (= TAT - NOW) tell release.lua which of the granted
-- tokens may still be given back.
local a = ahead(KEYS[1])
local avail = idiv(TAU - a, P)
local n = tonumber(ARGV[4])
local need = tonumber(ARGV[5] or '1')
if n < need then
  n = need
end
if n > avail then
  n = avail
end
if n >= need and n > 0 then
  local new = a + n * P
  store(KEYS[1], new)
  return {n, avail - n, 0, new, NOW}
end
return {0, avail, a + need * P - TAU, a, NOW}
