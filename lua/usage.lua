-- usage: tokens of a bucket in use now (capacity minus whole tokens
-- available; 0 for a full bucket or an absent key). Changes nothing.
--   KEYS[1]   a bucket
--   ARGV[1-3] P, D, TAU (see the prelude)
-- Reply: an integer, 0 <= usage <= capacity.
return TAU / P - idiv(TAU - ahead(KEYS[1]), P)
