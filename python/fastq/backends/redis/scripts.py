"""Lua scripts: storing a result (Celery's SETEX + PUBLISH, plus "never overwrite a SUCCESS"), and the chord join.

Celery reads the stored document, checks it in Python, then writes: two round trips, and a duplicate delivery
finishing in between can still replace a SUCCESS. Here the check, the write and the publish run as one script,
so nothing can come between them. Redis can decode JSON (cjson) and msgpack (cmsgpack) itself; a document it
cannot decode (compressed, pickle, yaml) is handed back to the caller, which decodes it and calls again in
compare-and-set mode: write only if the stored value is still the one it looked at.
"""

from __future__ import annotations

__all__ = [
    'CHORD_CLAIM_EXTEND',
    'CHORD_CLEANUP',
    'CHORD_PART_RETURN',
    'MODE_CAS',
    'MODE_FOR_SERIALIZER',
    'MODE_OTHER',
    'STORE_RESULT',
    'STORE_RESULTS',
]

#: ARGV[3] values: how the script tells whether the stored document is a SUCCESS.
MODE_FOR_SERIALIZER = {'json': 'json', 'msgpack': 'msgpack'}
MODE_OTHER = 'other'  # the script cannot decode it: hand it back if one is stored
MODE_CAS = 'cas'  # the caller decoded it: write only if ARGV[4] is still what is stored

#: Shared by the two store scripts: whether the document stored at a result key may be replaced, and
#: writing one (Celery's SETEX, or SET, then PUBLISH on the key's channel).
_STORE_FUNCTIONS = """
-- 1 when `current` (a stored meta document) may be replaced, 0 when it is a SUCCESS (kept), or `current`
-- itself when this script cannot decode it ('other': compressed, pickle, yaml) and the caller must decide.
local function replaceable(current, mode)
    local ok, meta = false, nil
    if mode == 'json' then
        ok, meta = pcall(cjson.decode, current)
    elseif mode == 'msgpack' then
        ok, meta = pcall(cmsgpack.unpack, current)
    end
    if not ok or type(meta) ~= 'table' then
        return current
    end
    if meta['status'] == 'SUCCESS' then
        return 0
    end
    return 1
end

local function write(key, payload, ttl)
    if ttl > 0 then
        redis.call('SET', key, payload, 'PX', ttl)
    else
        redis.call('SET', key, payload)
    end
    redis.call('PUBLISH', key, payload)
end
"""

STORE_RESULT = (
    _STORE_FUNCTIONS
    + """
-- KEYS[1]  celery-task-meta-<task_id> (global_keyprefix included): the result key, also the channel
-- ARGV[1]  the encoded meta document
-- ARGV[2]  time to live in milliseconds, 0 for none (SET ... PX, i.e. Celery's SETEX)
-- ARGV[3]  'json' | 'msgpack' | 'other' | 'cas'  (see fastq/backends/redis/scripts.py)
-- ARGV[4]  with 'cas': the stored document the caller found not to be a SUCCESS
-- Returns 1 when written and published, 0 when a stored SUCCESS was kept, or the stored document when
-- the script cannot tell (the caller decides and calls again with 'cas').
local key, payload, ttl, mode = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local current = redis.call('GET', key)
if current then
    if mode == 'cas' then
        if current ~= ARGV[4] then
            return current
        end
    else
        local verdict = replaceable(current, mode)
        if verdict ~= 1 then
            return verdict
        end
    end
end
write(key, payload, ttl)
return 1
"""
)

STORE_RESULTS = (
    _STORE_FUNCTIONS
    + """
-- STORE_RESULT for several results in one call (a worker's batch of finished tasks): starting a script
-- costs Redis more than the GET, SET and PUBLISH of one result, so a batch pays it once.
-- KEYS     the result keys (channels too)
-- ARGV[1]  time to live in milliseconds, 0 for none
-- ARGV[2]  'json' | 'msgpack' | 'other'
-- ARGV[2 + i]  the encoded meta document for KEYS[i]
-- Returns one entry per key, as STORE_RESULT returns (1 written, 0 a SUCCESS kept, or the stored document
-- for the caller to decide on with STORE_RESULT in 'cas' mode).
local ttl, mode = tonumber(ARGV[1]), ARGV[2]
local out = {}
for i, key in ipairs(KEYS) do
    local payload = ARGV[i + 2]
    -- A first result (the usual case) is written by SET NX, a call less per result than GET then SET;
    -- a key that exists is decided on as STORE_RESULT decides.
    local verdict = 1
    local written
    if ttl > 0 then
        written = redis.call('SET', key, payload, 'NX', 'PX', ttl)
    else
        written = redis.call('SET', key, payload, 'NX')
    end
    if written then
        redis.call('PUBLISH', key, payload)
    else
        verdict = replaceable(redis.call('GET', key), mode)
        if verdict == 1 then
            write(key, payload, ttl)
        end
    end
    out[i] = verdict
end
return out
"""
)

# The chord join. Celery 5.7 workers run the same steps on the same keys (`celery/backends/redis.py`,
# CHORD_PART_RETURN_LUA and friends), so Celery and fastq workers can join one chord: each must do what the
# other expects, to the key and to the argument. Written here from that contract, not copied.

CHORD_PART_RETURN = """
-- KEYS: <group key>.j .t .s .d, <group key>, <group key>.c   (see fastq/backends/redis/layout.py)
-- ARGV[1] task id, ARGV[2] encoded [1, task_id, state, result], ARGV[3] '1' for a zset (scored by ARGV[4],
--   the group_index or '+inf') else a list, ARGV[5] chord key TTL, ARGV[6] group key TTL (0: leave it),
--   ARGV[7] claim TTL, ARGV[8] claim token.
-- Records the part once per 'task_id:index' (a redelivered header task counts once), refreshes the TTLs,
-- and when the parts reach size + totaldiff takes the claim (SET NX): only the claimer sends the body.
-- Returns {parts so far, totaldiff, size, claimed}; {-1, 0, 0, 0} once the chord is done.
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local task_id, part, ordered, index = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, group_ttl, claim_ttl, token = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]

if redis.call('GET', ckey) == 'done' then
    return {-1, 0, 0, 0}
end
local member = task_id .. ':' .. index
if redis.call('SISMEMBER', dkey, member) == 0 then
    if ordered == '1' then
        redis.call('ZADD', jkey, index, part)
    else
        redis.call('RPUSH', jkey, part)
    end
    redis.call('SADD', dkey, member)
end
local count
if ordered == '1' then
    count = redis.call('ZCOUNT', jkey, '-inf', '+inf')
else
    count = redis.call('LLEN', jkey)
end
if ttl > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey}) do
        redis.call('EXPIRE', key, ttl)
    end
    if group_ttl > 0 then
        redis.call('EXPIRE', gkey, group_ttl)
    end
end
local diff = redis.call('GET', tkey)
local size = redis.call('GET', skey)
local claimed = 0
if size and count == tonumber(size) + tonumber(diff or 0) then
    if redis.call('SET', ckey, token, 'NX', 'EX', claim_ttl) then
        claimed = 1
    end
end
return {count, diff, size, claimed}
"""

CHORD_CLEANUP = """
-- KEYS: <group key>.c .j .t .s .d; ARGV[1] claim token, ARGV[2] TTL of the done marker.
-- If we still hold the claim: delete the chord's data and leave "done", so late duplicates are ignored.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local ttl = tonumber(ARGV[2])
if ttl and ttl > 0 then
    redis.call('SET', KEYS[1], 'done', 'EX', ttl)
end
return 1
"""

CHORD_CLAIM_EXTEND = """
-- KEYS: <group key>.c .s; ARGV[1] claim token, ARGV[2] new TTL.
-- Extend our claim, or take it again if it expired while the chord's data is still there.
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
    return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
if not current and redis.call('EXISTS', KEYS[2]) == 1 then
    return redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]), 'NX') and 1 or 0
end
return 0
"""
