"""The Lua scripts of :class:`~.redis.RedisStateStore`: every multi-key change is one
script, run atomically by Redis. Kept apart from the store's Python so each side
reads on its own; the key and argument lists are documented at the top of each.
"""

RESERVE = """
-- KEYS: slots, node[, job, jobs:active[, new owner's inbox]]
-- ARGV: member, ttl_ms[, expected owner, state, attempt, node, deadline_ms, job_id, new owner,
--       traceparent ('' = none) [, hand-over message (an inbox entry, written as given)]]
-- returns {reserved, slots in use, handed over (the message was written)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(redis.call('HGET', KEYS[2], 'max'))
if not max then return {0, -1, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return {1, redis.call('ZCARD', KEYS[1]), 0}
end
local used = redis.call('ZCARD', KEYS[1])
if used >= max then return {0, used, 0} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local handed = 0
if KEYS[3] then
  local cur = redis.call('HGET', KEYS[3], 'owner')
  if (not cur) or cur == ARGV[3] then
    redis.call('HSET', KEYS[3], 'owner', ARGV[9], 'state', ARGV[4], 'attempt', ARGV[5], 'node', ARGV[6],
               'deadline', ARGV[7])
    redis.call('ZADD', KEYS[4], ARGV[7], ARGV[8])
    if ARGV[10] ~= '' then redis.call('HSET', KEYS[3], 'traceparent', ARGV[10]) end
    if KEYS[5] then
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', 100000, '*', 'm', ARGV[11])
      handed = 1
    end
  end
end
return {1, used + 1, handed}
"""

RELEASE = """
local n = redis.call('ZREM', KEYS[1], ARGV[1])
return {n, redis.call('ZCARD', KEYS[1])}
"""

# shared by APPEND, APPEND_PUSH and RESTORE_SESSION: the store's limits (``StoreLimits.lua()``:
# window events, window bytes, transcript retention (s), transcript entries) and the keys
# derived from the history's name (``redis_keys``: <history>:bytes, transcript:<sid>[:meta],
# events:<sid>); number one event, add it to the window — dropping the oldest while the
# window is over either bound, the newest always kept — and a result to the transcript
# too, without its speech (``protocol.transcript_form``)
_APPEND_ONE = """
local function limits(spec, hist)
  local n, b, keep, tn = string.match(spec, '^(%d+) (%d+) (%d+) (%d+)$')
  return {n = tonumber(n), b = tonumber(b), keep = tonumber(keep), tn = tonumber(tn),
          bytes = hist .. ':bytes', drafts = hist .. ':drafts', evicted = hist .. ':evicted',
          t = (string.gsub(hist, ':history:', ':transcript:', 1)),
          ch = (string.gsub(hist, ':history:', ':events:', 1))}
end
-- the draft an event is (an asr_partial: <utterance>:<tgt_lang>), and the drafts it ends (a
-- result ends its utterance's); as protocol.draft_keys does
local function drafts_of(p, result)
  local utt = string.match(p, '"utterance_index":(%d+)')
  if not utt then return nil, {} end
  local tgt = string.match(p, '"tgt_lang":"([^"]*)"') or ''
  if result then return nil, {utt .. ':', utt .. ':' .. tgt} end
  if string.find(p, '{"type":"asr_partial"', 1, true) == 1 then return utt .. ':' .. tgt, {} end
  return nil, {}
end
local function append(hist, seqkey, lim, p, out)
  local seq = redis.call('INCR', seqkey)
  local e = string.find(p, '"', 10, true)
  local data = string.sub(p, 1, e) .. ',"seq":' .. seq .. string.sub(p, e + 1)
  local result = string.find(p, '{"type":"translation_result"', 1, true) == 1
  local dkey, ends = drafts_of(p, result)
  if dkey then ends[#ends + 1] = dkey end
  for _, k in ipairs(ends) do  -- a newer draft, or the result, takes the older draft's place
    local old = redis.call('HGET', lim.drafts, k)
    if old then
      redis.call('HDEL', lim.drafts, k)
      local gone = redis.call('XRANGE', hist, old .. '-0', old .. '-0')[1]
      if gone then
        redis.call('XDEL', hist, gone[1])
        redis.call('DECRBY', lim.bytes, #gone[2][2])
      end
    end
  end
  redis.call('XADD', hist, seq .. '-0', 'd', data)
  if dkey then redis.call('HSET', lim.drafts, dkey, seq) end
  local total = redis.call('INCRBY', lim.bytes, #data)
  local n = redis.call('XLEN', hist)
  while n > 1 and (n > lim.n or total > lim.b) do
    local old = redis.call('XRANGE', hist, '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', hist, old[1])
    redis.call('SET', lim.evicted, string.match(old[1], '^(%d+)'))
    total = redis.call('DECRBY', lim.bytes, #old[2][2])
    n = n - 1
  end
  if result then
    local kept = string.gsub(data, ',"tts_audio":"[^"]*"', '', 1)
    redis.call('XADD', lim.t, 'MAXLEN', '~', lim.tn, seq .. '-0', 'd', kept)
  end
  out[#out + 1] = seq
  out[#out + 1] = data
end
-- the window's and the transcript's lifetimes; viewers on any instance learn the last seq
local function keep(lim, ttl, out, first)
  redis.call('EXPIRE', lim.bytes, ttl)
  redis.call('EXPIRE', lim.drafts, ttl)
  redis.call('EXPIRE', lim.evicted, ttl)
  local life = tonumber(ttl) + lim.keep
  redis.call('EXPIRE', lim.t, life)
  redis.call('EXPIRE', lim.t .. ':meta', life)
  if #out >= first then redis.call('PUBLISH', lim.ch, out[#out - 1]) end
end
"""

# shared by APPEND, APPEND_PUSH and RESTORE_SESSION: tell the session's holder about the
# events just appended (out[first..]: seq, data, ...), carrying them, and about a result
# held in the ordering buffer (``held``: {tgt, index, payload}; the holder keeps a copy of
# it, see RESTORE_SESSION); an inbox entry as protocol/inbox.py describes them (a
# MessagePack array of messages). Returns 1 when a message was written.
_NOTIFY = """
local function notify(inbox, id, sender, sid, out, first, held)
  if id == '' or (#out < first and not held) then return 0 end
  local e = {}
  for i = first, #out, 2 do e[#e + 1] = {out[i], out[i + 1]} end
  local m = {k = 'session', i = id, o = sender, s = sid, e = e}
  if #out >= first then m.q = out[#out - 1] end
  if held then m.h = {held} end
  redis.call('XADD', inbox, 'MAXLEN', '~', 100000, '*', 'm', cmsgpack.pack({m}))
  return 1
end
"""

APPEND = (
    _APPEND_ONE
    + _NOTIFY
    + """
-- KEYS: history, seqno, holder's inbox ('' = none)
-- ARGV: limits, ttl, message id ('' = no notice), sender, session id, event payloads...
-- returns {notified (1|0), seq, data, seq, data...}
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.error_reply('LMNOSEQ session numbering lost') end
local lim = limits(ARGV[1], KEYS[1])
local out = {0}
for i = 6, #ARGV do append(KEYS[1], KEYS[2], lim, ARGV[i], out) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
keep(lim, ARGV[2], out, 2)
out[1] = notify(KEYS[3], ARGV[3], ARGV[4], ARGV[5], out, 2)
return out
"""
)

# shared by FINISH_JOB and APPEND_PUSH: end a job record (if ``owner`` owns it) and
# release its slot; returns the node's slots in use after it (-1: no slot released)
_FINISH_ONE = """
local function finish(job, active, slots, owner, job_id, ttl, member)
  local used = -1
  if member ~= '' then
    redis.call('ZREM', slots, member)
    used = redis.call('ZCARD', slots)
  end
  if redis.call('HGET', job, 'owner') == owner then
    redis.call('ZREM', active, job_id)
    redis.call('HSET', job, 'state', 'ended')
    redis.call('HDEL', job, 'data')
    redis.call('EXPIRE', job, ttl)
  end
  return used
end
"""

# shared by APPEND_PUSH and RESTORE_SESSION: release, in index order, every result held
# in ``done`` from the lowest expected index on, appending each to the history
_RELEASE_HELD = """
local function release_held(pending, done, hist, seqkey, lim, out)
  while true do
    local first = redis.call('ZRANGE', pending, 0, 0)[1]
    if not first then break end
    local p = redis.call('HGET', done, first)
    if not p then break end
    redis.call('ZREM', pending, first)
    redis.call('HDEL', done, first)
    redis.call('HSET', done, 'd' .. first, 1)  -- released: a copy of it is refused
    append(hist, seqkey, lim, p, out)
  end
end
"""

APPEND_PUSH = (
    _APPEND_ONE
    + _FINISH_ONE
    + _NOTIFY
    + _RELEASE_HELD
    + """
-- KEYS: pending, done, history, seqno, job, jobs:active, slots, holder's inbox ('' = unused)
-- ARGV: limits, ttl, index, result, owner ('' = no job to end), job_id, job ttl,
--       slot member ('' = none), message id ('' = no notice), sender, session id,
--       target language, event payloads...
-- the job ends first, then the events are appended, then the result goes through the
-- ordering buffer, then the holder is told (with a copy of the result if it is held);
-- returns {expected (1; 0: unknown index; 2: released before), slots in use, notified (1|0),
--          seq, data, seq, data...}
if redis.call('EXISTS', KEYS[4]) == 0 then return redis.error_reply('LMNOSEQ session numbering lost') end
local lim = limits(ARGV[1], KEYS[3])
local out = {1, -1, 0}
if ARGV[5] ~= '' then out[2] = finish(KEYS[5], KEYS[6], KEYS[7], ARGV[5], ARGV[6], ARGV[7], ARGV[8]) end
for i = 13, #ARGV do append(KEYS[3], KEYS[4], lim, ARGV[i], out) end
local held = nil
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  -- 2: its result was released before (a copy); 0: the ordering state never knew it
  if redis.call('HEXISTS', KEYS[2], 'd' .. ARGV[3]) == 1 then out[1] = 2 else out[1] = 0 end
else
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  release_held(KEYS[1], KEYS[2], KEYS[3], KEYS[4], lim, out)
  if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then held = {ARGV[12], tonumber(ARGV[3]), ARGV[4]} end
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
keep(lim, ARGV[2], out, 4)
out[3] = notify(KEYS[8], ARGV[9], ARGV[10], ARGV[11], out, 4, held)
return out
"""
)

SAVE_JOB = """
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur and cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', ARGV[2], 'attempt', ARGV[3], 'node', ARGV[4], 'deadline', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'data', ARGV[6]) end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[8])
redis.call('EXPIRE', KEYS[1], ARGV[7])
return 1
"""

FINISH_JOB = (
    _FINISH_ONE
    + """
-- KEYS: job, jobs:active[, slots]  ARGV: owner, job_id, ttl, slot member ('' = none)
return finish(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

CLAIM = """
-- KEYS: jobs:active
-- ARGV: new owner, now (ms), limit, job key prefix, instance key prefix,
--       unplaced ('1': also jobs no node has, whatever their deadline), live instances...
-- a job past its deadline (or, with unplaced, one in state 'created') is taken when its
-- owner is not live in the caller's view and, unless the owner is the caller (its previous
-- run under the same id), the owner's instance key is gone in Redis as well: a view a
-- moment old must not take a job from an instance that just came back
local now = tonumber(ARGV[2])
local hi = ARGV[2]
-- '1': also jobs no node has ('created'); '2': every job of a dead owner, whatever its deadline
if ARGV[6] == '1' or ARGV[6] == '2' then hi = '+inf' end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', hi, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local live = {}
for i = 7, #ARGV do live[ARGV[i]] = true end
local out = {}
for j = 1, #ids, 2 do
  local id = ids[j]
  local key = ARGV[4] .. id
  local owner = redis.call('HGET', key, 'owner')
  if not owner then
    redis.call('ZREM', KEYS[1], id)
  elseif not live[owner] and (owner == ARGV[1] or redis.call('EXISTS', ARGV[5] .. owner) == 0) then
    if ARGV[6] == '2' or tonumber(ids[j + 1]) <= now or redis.call('HGET', key, 'state') == 'created' then
      redis.call('HSET', key, 'owner', ARGV[1])
      out[#out + 1] = id
    end
  end
end
return out
"""

ACCEPT = """
local idx, rid, n, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('HEXISTS', KEYS[1], 'u:' .. idx) == 1 then return 'index' end
if rid ~= '' and redis.call('HEXISTS', KEYS[1], 'r:' .. rid) == 1 then return 'request' end
local first = ARGV[5] or ''
redis.call('HSET', KEYS[1], 'u:' .. idx, first)
if rid ~= '' then redis.call('HSET', KEYS[1], 'r:' .. rid, first) end
redis.call('EXPIRE', KEYS[1], 86400)
local cur = tonumber(redis.call('HGET', KEYS[2], 'max_index') or '-1')
if tonumber(idx) > cur then redis.call('HSET', KEYS[2], 'max_index', idx) end
local ntgt = #KEYS - 3 - n
for i = 1, ntgt do
  redis.call('ZADD', KEYS[3 + i], idx, idx)
  redis.call('EXPIRE', KEYS[3 + i], 3600)
end
for j = 0, n - 1 do
  local a = 5 + j * 6
  local key = KEYS[3 + ntgt + 1 + j]
  redis.call('HSET', key, 'owner', ARGV[a + 1], 'state', ARGV[a + 2], 'attempt', ARGV[a + 3], 'node', '',
             'deadline', ARGV[a + 4], 'data', ARGV[a + 5])
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', KEYS[3], ARGV[a + 4], ARGV[a])
end
return false
"""

CLAIM_ONE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return false end
for i = 2, #ARGV do if owner == ARGV[i] then return false end end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return 1
"""

CLAIM_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local prev = redis.call('HGET', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return prev
"""

REMOVE_NODE = """
-- KEYS: node, nodes, pool members ('' = unknown)  ARGV: node id, owner ('' = any)
-- not when the node re-registered with another instance meanwhile
local cur = redis.call('HGET', KEYS[1], 'owner')
if ARGV[2] ~= '' and cur and cur ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
if KEYS[3] ~= '' then redis.call('SREM', KEYS[3], ARGV[1]) end
redis.call('DEL', KEYS[1])
return 1
"""

NODE_HEARTBEAT = """
-- KEYS: node  ARGV: heartbeat (ms), running jobs
-- only a registered node's record: a heartbeat that Redis runs after the node's removal
-- must not leave a record without owner or capabilities behind (it would never expire)
if redis.call('HEXISTS', KEYS[1], 'owner') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'hb', ARGV[1], 'running', ARGV[2])
return 1
"""

RESTORE_SESSION = (
    _APPEND_ONE
    + _RELEASE_HELD
    + """
-- after Redis lost its data, the session's holder writes back its numbering and, per target
-- language, what it knows of the ordering state: the indices whose results it has seen
-- released (a copy of one is refused again) and the results it knows are held (put back in
-- the buffer; every one no longer behind an expected index is released now)
-- KEYS: seqno, history, then pending, done per target language
-- ARGV: last seq, ttl, limits, then per target language: n released, n held,
--       the released indices, then (index, payload) per held result
-- returns {seq, data, ...}: the results released (the caller delivers them)
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local lim = limits(ARGV[3], KEYS[2])
local out = {}
local a = 4
for k = 3, #KEYS, 2 do
  local pending, done = KEYS[k], KEYS[k + 1]
  local nr, nh = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  for i = a, a + nr - 1 do
    redis.call('ZREM', pending, ARGV[i])
    redis.call('HSET', done, 'd' .. ARGV[i], 1)
  end
  a = a + nr
  for i = a, a + 2 * nh - 1, 2 do
    if redis.call('HEXISTS', done, 'd' .. ARGV[i]) == 0 then
      redis.call('ZADD', pending, ARGV[i], ARGV[i])
      redis.call('HSET', done, ARGV[i], ARGV[i + 1])
    end
  end
  a = a + 2 * nh
  release_held(pending, done, KEYS[2], KEYS[1], lim, out)
  redis.call('EXPIRE', pending, ARGV[2])
  redis.call('EXPIRE', done, ARGV[2])
end
keep(lim, ARGV[2], out, 1)
return out
"""
)

ACK = """
-- KEYS: history  ARGV: seq
-- the client has every event up to seq: they leave the window, and their bytes its count
local gone = 0
local cur = tonumber(redis.call('GET', KEYS[1] .. ':evicted') or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1] .. ':evicted', ARGV[1], 'KEEPTTL') end
while true do
  local batch = redis.call('XRANGE', KEYS[1], '-', ARGV[1] .. '-0', 'COUNT', 100)
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    redis.call('XDEL', KEYS[1], e[1])
    gone = gone + #e[2][2]
  end
end
if gone > 0 then redis.call('DECRBY', KEYS[1] .. ':bytes', gone) end
return gone
"""

CLAIM_ROOM = """
-- KEYS: room, its sessions  ARGV: key hash, session id, view token, ttl, sessions kept
-- only the key that created the room points it elsewhere; every session it showed is listed
local cur = redis.call('HGET', KEYS[1], 'key')
if cur and cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'key', ARGV[1], 'session_id', ARGV[2], 'view_token', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if not redis.call('LPOS', KEYS[2], ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

OPEN_KEY_SESSION = """
-- KEYS: the key's sessions  ARGV: session id, most ('' = no limit), lapse (ms), now (ms)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if ARGV[2] ~= '' and not redis.call('ZSCORE', KEYS[1], ARGV[1])
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"""

CHARGE_KEY_AUDIO = """
-- KEYS: the key's hour, its usage, keys used, the session's hash (its usage, if it exists)
-- ARGV: seconds, per hour ('' = no limit), key id, utterances, jobs
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[2] ~= '' and used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 7200)
redis.call('HINCRBYFLOAT', KEYS[2], 'audio_seconds', ARGV[1])
redis.call('HINCRBY', KEYS[2], 'utterances', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'jobs', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[3])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[4], 'usage_audio_seconds', ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'usage_utterances', ARGV[4])
  redis.call('HINCRBY', KEYS[4], 'usage_jobs', ARGV[5])
end
return 1
"""
