-- Put a hold's messages back on the queue key it was filled from (holding.py): a dead consumer's hold, or one
-- a failed write may have filled. Only the caller that deletes the hold pushes, so concurrent sweepers never
-- restore a message twice; a hold that changed since the caller read it is left for another try.
--
-- KEYS[1]  the hold list
-- KEYS[2]  fastq.holds (the registry of holds)
-- KEYS[3]  the queue key to push back to
-- ARGV[1]  how many messages the caller read from the hold
-- ARGV[2..] the messages to push (RPUSH, in this order: the last is served first)
-- Returns how many were pushed back, or -1 when the hold's length is not what the caller read.
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[1]) then
  return -1
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
for first = 2, #ARGV, 2000 do
  redis.call('RPUSH', KEYS[3], unpack(ARGV, first, math.min(first + 1999, #ARGV)))
end
return #ARGV - 1
