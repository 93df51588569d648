"""The Lua script that stores a result: Celery's SETEX + PUBLISH, plus its "never overwrite a SUCCESS" rule.

Celery reads the stored document, checks it in Python, then writes: two round trips, and a duplicate delivery
finishing in between can still replace a SUCCESS. Here the check, the write and the publish run as one script,
so nothing can come between them. Redis can decode JSON (cjson) and msgpack (cmsgpack) itself; a document it
cannot decode (compressed, pickle, yaml) is handed back to the caller, which decodes it and calls again in
compare-and-set mode: write only if the stored value is still the one it looked at.
"""

from __future__ import annotations

__all__ = ['MODE_CAS', 'MODE_FOR_SERIALIZER', 'MODE_OTHER', 'STORE_RESULT']

#: ARGV[3] values: how the script tells whether the stored document is a SUCCESS.
MODE_FOR_SERIALIZER = {'json': 'json', 'msgpack': 'msgpack'}
MODE_OTHER = 'other'  # the script cannot decode it: hand it back if one is stored
MODE_CAS = 'cas'  # the caller decoded it: write only if ARGV[4] is still what is stored

STORE_RESULT = """
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
    end
end
if ttl > 0 then
    redis.call('SET', key, payload, 'PX', ttl)
else
    redis.call('SET', key, payload)
end
redis.call('PUBLISH', key, payload)
return 1
"""
