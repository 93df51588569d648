-- Give a named lease up, only if this holder still has it (after an expiry another holder may have it).
--
-- KEYS[1]  fastq.lease.<name>
-- ARGV[1]  holder
-- Returns 1 when the lease was released, 0 when the holder did not have it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
