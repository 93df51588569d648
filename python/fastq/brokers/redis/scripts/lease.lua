-- Take a named lease for a holder, or extend it when that holder already has it; never take it from another
-- holder while it lives (the key's TTL is the lease: a holder that stops extending it loses it).
--
-- KEYS[1]  fastq.lease.<name>
-- ARGV[1]  holder (a token unique to one process and lock)
-- ARGV[2]  lease length in milliseconds
-- Returns 1 when the holder holds the lease afterwards, 0 when another holder does.
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
