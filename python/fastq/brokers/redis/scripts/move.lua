-- Move one reserved message out of the unacked structures and, when a destination is given, push a
-- (rewritten) envelope onto a queue list. Only the caller that removes the tag pushes, so a message is
-- restored once even when several workers (fastq or kombu) sweep at the same time.
--
-- KEYS[1]  unacked
-- KEYS[2]  unacked_index
-- KEYS[3]  destination list (optional)
-- ARGV[1]  delivery_tag
-- ARGV[2]  envelope to push (when KEYS[3] is given)
-- ARGV[3]  'R' to RPUSH (front: consumed next, as kombu restores) or 'L' to LPUSH (back, as kombu requeues)
-- Returns 1 when the tag was reserved (and moved), 0 when it was already gone.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
if KEYS[3] then
  if ARGV[3] == 'R' then
    redis.call('RPUSH', KEYS[3], ARGV[2])
  else
    redis.call('LPUSH', KEYS[3], ARGV[2])
  end
end
return 1
