-- Reserve up to ARGV[1] messages: pop each from the right end of its queue list and record it in kombu's
-- unacked structures in the same atomic step, so no message ever exists only in a worker's memory.
--
-- KEYS[1]  unacked         hash  delivery_tag -> [envelope, exchange, routing_key] (kombu's format)
-- KEYS[2]  unacked_index   zset  delivery_tag -> reservation time
-- KEYS[3..] queue lists, in the order to serve them (step-major, rotated by the caller)
-- ARGV[1]  limit
-- ARGV[2]  now (unix time, the caller's clock, as kombu uses)
-- Returns a flat array: key index (1-based among the queue keys), delivery_tag, envelope, ...
local limit = tonumber(ARGV[1])
local now = ARGV[2]
local out = {}
local taken = 0
for i = 3, #KEYS do
  while taken < limit do
    local m = redis.call('RPOP', KEYS[i])
    if not m then break end
    local tag, exchange, routing_key
    local ok, env = pcall(cjson.decode, m)
    if ok and type(env) == 'table' and type(env.properties) == 'table' then
      tag = env.properties.delivery_tag
      local info = env.properties.delivery_info
      if type(info) == 'table' then
        exchange = info.exchange
        routing_key = info.routing_key
      end
    end
    local record
    if type(tag) == 'string' and tag ~= '' then
      if type(exchange) ~= 'string' then exchange = '' end
      if type(routing_key) ~= 'string' then routing_key = '' end
      record = '[' .. m .. ', ' .. cjson.encode(exchange) .. ', ' .. cjson.encode(routing_key) .. ']'
    else
      -- Not an envelope: keep it (as a JSON string) under a tag of its own so it can be dead-lettered.
      tag = 'fastq-malformed-' .. redis.sha1hex(m)
      record = '[' .. cjson.encode(m) .. ', "", ""]'
    end
    redis.call('HSET', KEYS[1], tag, record)
    redis.call('ZADD', KEYS[2], now, tag)
    out[#out + 1] = i - 2
    out[#out + 1] = tag
    out[#out + 1] = m
    taken = taken + 1
  end
  if taken >= limit then break end
end
return out
