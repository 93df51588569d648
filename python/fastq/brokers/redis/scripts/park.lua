-- Park a reserved message until its ETA: rewrite its unacked record and score it at eta - visibility_timeout,
-- so that any restore sweep, fastq's or kombu's, puts it back on its queue when it is due. Nothing is held
-- in a worker's memory, and rolling back to Celery strands nothing.
--
-- KEYS[1]  unacked
-- KEYS[2]  unacked_index
-- KEYS[3]  fastq.parked.<node> (optional): what the parking node parked, read by its `inspect scheduled`
-- ARGV[1]  delivery_tag
-- ARGV[2]  score (eta - visibility_timeout)
-- ARGV[3]  record ([envelope, exchange, routing_key])
-- ARGV[4]  eta (with KEYS[3])
-- ARGV[5]  now (with KEYS[3]): entries whose ETA has passed are dropped, and the key expires after the last
-- Returns 1 when parked, 0 when the tag was no longer reserved.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if KEYS[3] then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  redis.call('EXPIREAT', KEYS[3], math.ceil(tonumber(last[2])) + 60)
end
return 1
