-- Fleet-wide rate limit (GCRA): grant one unit at ARGV[2] per second, or say how long to wait.
--
-- KEYS[1]  fastq.rate:<name>  string: theoretical arrival time (unix seconds) of the next unit
-- ARGV[1]  now (unix seconds, the caller's clock)
-- ARGV[2]  rate (units per second)
-- Returns "0" when granted, else the seconds to wait (as a string, to keep the fraction).
local now = tonumber(ARGV[1])
local interval = 1 / tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > 0 then
  return tostring(tat - now)
end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((interval + 1) * 1000))
return '0'
