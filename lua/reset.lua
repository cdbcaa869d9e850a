-- reset: refill a bucket (an absent key is a full bucket).
--   KEYS[1]   a bucket
--   ARGV[1-3] P, D, TAU (see the prelude; unused, passed for uniformity)
-- Reply: 1 when the bucket was not full, else 0.
return redis.call('DEL', KEYS[1])
