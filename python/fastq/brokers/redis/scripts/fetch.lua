-- Reserve up to ARGV[1] messages: pop each from the right end of its queue list and record it in kombu's
-- unacked structures in the same atomic step, so no message ever exists only in a worker's memory.
--
-- KEYS[1]  unacked         hash  delivery_tag -> [envelope, exchange, routing_key] (kombu's format)
-- KEYS[2]  unacked_index   zset  delivery_tag -> reservation time
-- KEYS[3..] queue lists, in the order to serve them (step-major, rotated by the caller)
-- ARGV[1]  limit
-- ARGV[2]  now (unix time, the caller's clock, as kombu uses)
-- Returns a flat array: key index (1-based among the queue keys), delivery_tag, envelope, ...

-- The tag and the delivery info are found with plain substring searches when the envelope has exactly one
-- of each key and simple values (every envelope Celery, kombu or fastq writes): a full cjson.decode costs
-- about 40 us of the server's time per message, most of the script. Anything else is decoded in full.
-- A plain search runs memchr() for its first byte and compares from each hit: the keys are searched from
-- their 'v' (five or so in an envelope) rather than their opening quote (a hundred), and the rest of the
-- key is compared where one is found: the searches' time per message 2.7 -> 1.2-1.4 us.
local TAG, INFO, LEAD = 'very_tag": "', 'very_info": {', '"deli'

-- The value of the JSON string whose text starts at `s` (just after its opening quote), when it is plain:
-- no escape, and no '}' (which would mean the search matched somewhere else than a string value).
local function plain_string(m, s)
  local e = string.find(m, '"', s, true)
  if not e then return nil end
  local v = string.sub(m, s, e - 1)
  if string.find(v, '\\', 1, true) or string.find(v, '}', 1, true) then return nil end
  return v
end

local function quoted_after(m, key, from)
  local i = string.find(m, key, from, true)
  if not i then return nil end
  return plain_string(m, i + #key), i
end

-- Where `key` (after LEAD) is, when it is there exactly once; nil otherwise. (Checked against its tail alone:
-- a second match of the tail anywhere is taken as a second key, which only sends the envelope to the full
-- decode.)
local function once(m, key)
  local i = string.find(m, key, 1, true)
  if not i or string.sub(m, i - #LEAD, i - 1) ~= LEAD or string.find(m, key, i + 1, true) then return nil end
  return i
end

local function fields(m)
  local t = once(m, TAG)
  local info = t and once(m, INFO)
  if info then
    local tag = plain_string(m, t + #TAG)
    local close = string.find(m, '}', info, true)
    local exchange, at = quoted_after(m, '"exchange": "', info)
    local routing_key, at2 = quoted_after(m, '"routing_key": "', info)
    if tag and exchange and routing_key and at < close and at2 < close then
      return tag, exchange, routing_key
    end
  end
  local ok, env = pcall(cjson.decode, m)
  if ok and type(env) == 'table' and type(env.properties) == 'table' then
    local info = env.properties.delivery_info
    if type(info) == 'table' then
      return env.properties.delivery_tag, info.exchange, info.routing_key
    end
    return env.properties.delivery_tag, nil, nil
  end
  return nil, nil, nil
end

-- JSON text of a string: quoted as it is unless it holds what JSON escapes (a value `fields` found with its
-- plain searches never has a quote or backslash; one it decoded may).
local function json_string(v)
  if string.find(v, '[%c"\\]') then return cjson.encode(v) end
  return '"' .. v .. '"'
end

local limit = tonumber(ARGV[1])
local now = ARGV[2]
local out = {}
local records, scores = {}, {}  -- one HSET and one ZADD for the whole batch: each call costs more than its work
local taken = 0
for i = 3, #KEYS do
  -- One RPOP with a count per key (Redis >= 6.2, as BLMOVE): a call from Lua costs more than its work.
  local batch = taken < limit and redis.call('RPOP', KEYS[i], limit - taken) or false
  for _, m in ipairs(batch or {}) do
    local tag, exchange, routing_key = fields(m)
    local record
    if type(tag) == 'string' and tag ~= '' then
      if type(exchange) ~= 'string' then exchange = '' end
      if type(routing_key) ~= 'string' then routing_key = '' end
      record = '[' .. m .. ', ' .. json_string(exchange) .. ', ' .. json_string(routing_key) .. ']'
    else
      -- Not an envelope: keep it (as a JSON string) under a tag of its own so it can be dead-lettered.
      tag = 'fastq-malformed-' .. redis.sha1hex(m)
      record = '[' .. cjson.encode(m) .. ', "", ""]'
    end
    records[#records + 1] = tag
    records[#records + 1] = record
    scores[#scores + 1] = now
    scores[#scores + 1] = tag
    out[#out + 1] = i - 2
    out[#out + 1] = tag
    out[#out + 1] = m
    taken = taken + 1
  end
  if taken >= limit then break end
end
-- unpack() is bounded by Lua's C stack (8000 values): call in slices of at most 2000 values (1000 pairs)
local function call_in_slices(command, key, values)
  for first = 1, #values, 2000 do
    redis.call(command, key, unpack(values, first, math.min(first + 1999, #values)))
  end
end
if taken > 0 then
  call_in_slices('HSET', KEYS[1], records)
  call_in_slices('ZADD', KEYS[2], scores)
end
return out
