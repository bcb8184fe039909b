"""The Lua scripts of the step protocol, registered on the store's client (see store.py), and
ADMIT, the start's admission check (see admission.py).

Each opens with its KEYS and ARGV slots, and touches the keys of one job only, or one owner's
hash of active jobs (ADMIT): one Redis Cluster slot each, every key declared; global indexes are
written by plain commands outside them. Events go out with PUBLISH, or SPUBLISH on a Cluster
(:func:`sharded`), on the job's channel, which carries the job's hash tag. Field names are those of
:class:`batchflow.schema.F`; the terminal statuses come from :class:`~batchflow.schema.Status`
through ``TERMINAL`` (see :mod:`batchflow.lua`, the Lua they share); return codes are
:class:`~batchflow.schema.ClaimCode`, :class:`~batchflow.schema.SignalCode` and
:class:`~batchflow.schema.AdmitCode`.
"""

from .lua import APPLY, LANE, PRELUDE


def sharded(script: str) -> str:
    """``script`` publishing its events with SPUBLISH (sharded pub/sub, Redis 7): on a Cluster an
    event then reaches only the shard holding its job, not every node."""
    return script.replace("redis.call('PUBLISH', ", "redis.call('SPUBLISH', ").replace(
        "'PUBSUB', 'NUMSUB'", "'PUBSUB', 'SHARDNUMSUB'"
    )


CLAIM = (
    APPLY
    + LANE
    + """
-- KEYS[1] = job hash, KEYS[2] = items list, KEYS[3] = errors hash, KEYS[4] = lanes hash
-- ARGV[1] = seq the step carries, ARGV[2] = worker id, ARGV[3] = now (ms), ARGV[4] = lease (ms),
-- ARGV[5] = event channel, ARGV[6] = lane (0: the job's own chain)
-- Returns {code, job hash (flat, JSON; a lane's step sees its lane's fields in place of the
-- job's), slice of ids (JSON), flags (1 = that id ended bad)}; code is one of
-- ok, missing, terminal, stale (seq moved on, or the lane has ended), busy (a live lease is held),
-- paused.
-- A step claimed again after its worker was lost takes one unit; so do the steps after it up to
-- careful_until (the end of the lost claim's slice), which this script sets.
local job = KEYS[1]
lane_of(job, KEYS[4], ARGV[6])
local laned = LANE_PREFIX ~= ''
local f = redis.call(
  'HMGET', job, 'status', 'kind', 'phase', 'lanes', 'seq', 'lease_owner', 'lease_until'
)
local status, kind, phase = f[1], f[2], f[3]
if not status then return {'missing'} end
if TERMINAL[status] then
  return {'terminal'}
end
-- (The job's own chain reads its step fields with the job's: one command fewer per step.)
local l = {f[5], f[6], f[7]}
if laned then l = lmget('seq', 'lease_owner', 'lease_until', 'phase', 'lane_state') end
local seq, owner, lease_until = l[1], l[2], l[3]
if laned then
  if not seq then return {'missing'} end
  if l[5] ~= '' then return {'stale'} end
  phase = l[4]
end
-- The own chain of a job in lanes walks no ids in its run and undo: its lanes do.
local coordinating = not laned and (tonumber(f[4]) or 0) > 1 and (phase == 'run' or phase == 'undo')
if tonumber(seq) ~= tonumber(ARGV[1]) then return {'stale'} end
local now = tonumber(ARGV[3])
if owner ~= '' and tonumber(lease_until) > now then return {'busy'} end
if status == 'paused' then return {'paused'} end
local attempts = lincr('attempts', 1)
lset('lease_owner', ARGV[2], 'lease_until', now + tonumber(ARGV[4]))
if status == 'pending' then
  hset(job, 'status', 'running', 'started_at', now / 1000)
end
if kind == 'task' and phase == 'run' and attempts > 1 then
  hset(job, 'restarted', 1)
  if redis.call('HGET', job, 'checkpoints') == '0' then
    -- A one-shot job cut off mid-run without a checkpoint starts again from the beginning: its
    -- live counters go back. One that checkpointed resumes from its last checkpoint (its data
    -- and counters as committed with it).
    hset(job, 'processed', 0, 'good', 0, 'bad', 0)
  end
end
local processed = tonumber(lget('processed'))
local walking = (phase == 'run' or phase == 'assess') and not coordinating
if kind ~= 'task' and walking and attempts > 1 then
  -- This step's last claim was lost with its worker. Go through that claim's whole slice one
  -- unit at a time (careful_until), so that a unit which kills its worker is met alone and
  -- given up after max attempts, not met again in batch after batch, each costing a lease.
  local lost_until = processed + tonumber(lget('batch_size'))
  if lost_until > (tonumber(lget('careful_until')) or 0) then
    lset('careful_until', lost_until)
  end
end
local careful = tonumber(lget('careful_until')) or 0
-- A stop or a cancel waits until the slice of a lost step is settled: its units, some of which the
-- lost step may have changed, are done again one at a time, so that a stop counts them (rather
-- than calling them never reached) and a cancel undoes them (the undo starts past them).
local settling = kind ~= 'task' and walking and careful > processed
if status == 'canceling' and phase ~= 'undo' and not settling and not coordinating then
  -- A preview changed nothing: there is nothing to undo.
  local done = phase == 'assess' and 0 or processed
  lset('phase', 'undo', 'undo_cursor', done)
  phase = 'undo'
end
local ids, flags = {}, {}
if kind == 'items' and phase ~= 'create' and not coordinating then
  local size = tonumber(lget('batch_size'))
  local base = tonumber(lget('lane_start')) or 0
  if attempts > 1 or (phase ~= 'undo' and careful > processed) then size = 1 end
  if phase == 'undo' then
    local stop = tonumber(lget('undo_cursor'))
    local first = math.max(0, stop - size)
    if stop > 0 then
      local slice = redis.call('LRANGE', KEYS[2], base + first, base + stop - 1)
      for i = #slice, 1, -1 do
        ids[#ids + 1] = slice[i]
        flags[#flags + 1] = redis.call('HEXISTS', KEYS[3], slice[i])
      end
    end
  elseif status ~= 'stopping' or settling then
    local start = base + processed
    if laned then size = math.min(size, tonumber(lget('lane_size')) - processed) end
    if size > 0 then ids = redis.call('LRANGE', KEYS[2], start, start + size - 1) end
  end
end
-- A follower sees the job start, restart or turn to its undo at once (not at the next commit).
if CHANGED.status or CHANGED.phase or CHANGED.restarted then
  hset(job, 'updated_at', now / 1000)
  publish(job, ARGV[5])
end
-- JSON, not arrays: one string is far cheaper for the client to read than hundreds of items.
local view = redis.call('HGETALL', job)
if laned then
  local own = lmget(unpack(LANE_VIEW))
  for i, field in ipairs(LANE_VIEW) do
    view[#view + 1] = field == 'lane_size' and 'total' or field
    view[#view + 1] = own[i]
  end
end
return {'ok', cjson.encode(view), cjson.encode(ids), flags}
"""
)

COMMIT = (
    APPLY
    + LANE
    + """
-- KEYS[1] = job hash, KEYS[2] = items list, KEYS[3] = results hash, KEYS[4] = errors hash,
-- KEYS[5] = undo errors hash, KEYS[6] = messages list, KEYS[7] = lanes hash, KEYS[8] = meter
-- ARGV[1] = seq, ARGV[2] = worker id, ARGV[3] = now (s), ARGV[4] = payload (JSON),
-- ARGV[5] = deadline for the next step to be claimed (ms),
-- ARGV[6] = TTL of a terminal job's keys (s), ARGV[7] = event channel, ARGV[8] = messages kept,
-- ARGV[9] = lane (0: the job's own chain), ARGV[10] = the meter's counter type
-- Returns {'ok', new seq, status, next} or {'lost'} when the step's fence no longer holds; next
-- is the seq of the job's own chain when its step is due now (the last lane ended, or the job's
-- own chain goes on), else ''. The same commit sent again (its reply was lost) changes nothing
-- and returns what the first one did.
local job = KEYS[1]
lane_of(job, KEYS[7], ARGV[9])
local laned = LANE_PREFIX ~= ''
local f = redis.call(
  'HMGET', job, 'status', 'signal', 'lanes', 'seq', 'lease_owner', 'committed_by', 'checkpoints'
)
local l = {f[4], f[5], f[6], f[7]}
if laned then l = lmget('seq', 'lease_owner', 'committed_by', 'checkpoints') end
local me = ARGV[1] .. ' ' .. ARGV[2]
if l[1] and tonumber(l[1]) == tonumber(ARGV[1]) + 1 and l[3] == me then
  return {'ok', tonumber(l[1]), f[1], ''}
end
if not l[1] or tonumber(l[1]) ~= tonumber(ARGV[1]) or l[2] ~= ARGV[2] then return {'lost'} end
local p = cjson.decode(ARGV[4])
local lacking = missing(l[4], p.checkpoints)
if lacking > 1 or (lacking == 1 and not p.unconfirmed) then return {'lost'} end
local new_status = p.set and p.set.status
if new_status and f[1] == 'canceling' and new_status ~= 'failed' and new_status ~= 'canceled' then
  -- A cancel that arrived mid-step wins over the step's own ending: its work is undone too.
  p.set.status = nil
  p.set.phase = nil
end
if p.lane_end and f[1] == 'canceling' and p.lane_end ~= 'canceled' then
  p.lane_end = nil  -- the same for a lane: it goes on to undo its range
end
if new_status == 'paused' and f[1] == 'stopping' then
  -- A stop that arrived mid-step wins over a pause; the next step stops the job.
  p.set.status = nil
end
if new_status == 'paused' and f[1] == 'running' and f[2] ~= 'pause' then
  -- A resume that arrived mid-step withdrew the pause this step answers: the job goes on.
  p.set.status = nil
  p.messages = nil
end
if laned and TERMINAL[f[1]] then
  -- Another lane ended the job meanwhile (it failed): what this step did is counted, no more.
  p.set, p.messages, p.lane_end = nil, nil, nil
end
if p.unconfirmed and lacking == 1 then
  -- A checkpoint the heartbeat sent without learning whether it was applied: apply it once.
  lset('checkpoints', p.unconfirmed.checkpoint)
  to_lane(p.unconfirmed)
  apply(job, KEYS[6], p.unconfirmed, ARGV[3], ARGV[8])
  apply_outcomes(p.unconfirmed, KEYS[3], KEYS[4], KEYS[5], KEYS[2])
end
to_lane(p)
apply(job, KEYS[6], p, ARGV[3], ARGV[8])
apply_outcomes(p, KEYS[3], KEYS[4], KEYS[5], KEYS[2])
if p.meter then
  -- The step's figures for /metrics: its counters, each [counter, amount], in one command.
  local ops = {'BITFIELD', KEYS[8], 'OVERFLOW', 'SAT'}
  for i = 1, #p.meter, 2 do
    table.insert(ops, 'INCRBY')
    table.insert(ops, ARGV[10])
    table.insert(ops, '#' .. p.meter[i])
    table.insert(ops, p.meter[i + 1])
  end
  redis.call(unpack(ops))
end
local seq = lincr('seq', 1)
lset('attempts', 0, 'lease_owner', '', 'lease_until', ARGV[5], 'committed_by', me)
local status = redis.call('HGET', job, 'status')
local next = ''
if p.make_lanes then
  -- The job's own chain cuts the ids into lanes: [[first id, how many], ...], lanes 1 to n.
  for n, range in ipairs(p.make_lanes) do
    local k = n .. ':'
    redis.call('HSET', KEYS[7], k .. 'seq', 0, k .. 'lane_start', range[1], k .. 'lane_size',
      range[2], k .. 'processed', 0, k .. 'attempts', 0, k .. 'careful_until', 0,
      k .. 'checkpoints', 0, k .. 'undo_cursor', 0, k .. 'batch_size', range[3],
      k .. 'lease_owner', '', k .. 'lease_until', ARGV[5], k .. 'phase', 'run',
      k .. 'lane_state', '')
  end
  hset(job, 'lanes_open', #p.make_lanes)
end
if p.reopen_lanes then
  -- Lanes that ended stopped (Continue) or before a cancel (to undo their range) go on.
  for _, n in ipairs(p.reopen_lanes) do
    redis.call('HSET', KEYS[7], n .. ':lane_state', '', n .. ':lease_until', ARGV[5])
  end
  hincrby(job, 'lanes_open', #p.reopen_lanes)
end
if p.lane_end and not TERMINAL[status] then
  lset('lane_state', p.lane_end)
  if hincrby(job, 'lanes_open', -1) <= 0 then
    -- The last lane ended: the job's own chain ends the job (its step is due now).
    hset(job, 'lease_owner', '', 'lease_until', ARGV[5])
    next = redis.call('HGET', job, 'seq')
  end
elseif not laned and (tonumber(f[3]) or 0) > 1 and not TERMINAL[status] then
  local phase = redis.call('HGET', job, 'phase')
  if phase == 'run' or phase == 'undo' then
    if (tonumber(redis.call('HGET', job, 'lanes_open')) or 0) > 0 then
      -- Its lanes run: the job's own chain waits for the last of them, which sends its step.
      hset(job, 'lease_until', '9007199254740991')
    else
      next = seq
    end
  end
end
if TERMINAL[status] and not TERMINAL[f[1]] then
  hset(job, 'finished_at', ARGV[3], 'signal', '')
  -- A stopped job may be continued: it keeps its ids until it expires.
  if status ~= 'stopped' then redis.call('DEL', KEYS[2]) end
  for i = 1, 8 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
end
publish(job, ARGV[7])
return {'ok', seq, status, next}
"""
)

RENEW = (
    APPLY
    + LANE
    + """
-- KEYS[1] = job hash, KEYS[2] = messages list, KEYS[3] = results hash, KEYS[4] = errors hash,
-- KEYS[5] = undo errors hash, KEYS[6] = items list, KEYS[7] = lanes hash
-- ARGV[1] = seq, ARGV[2] = worker id, ARGV[3] = now (s), ARGV[4] = payload (JSON, '' = none),
-- ARGV[5] = new lease expiry (ms), ARGV[6] = channel, ARGV[7] = messages kept,
-- ARGV[8] = lane (0: the job's own chain)
-- Renews a running step's lease (the heartbeat), and applies what the step reported up to its
-- last checkpoint (or a one-shot job's live progress), or marks it as the step that ends the job
-- (`ending`): fenced like COMMIT, but `seq` stays, for the step goes on.
-- Returns {'ok', status, signal} or {'lost'}.
local job = KEYS[1]
lane_of(job, KEYS[7], ARGV[8])
local f = redis.call('HMGET', job, 'status', 'signal', 'seq', 'lease_owner', 'checkpoints')
local l = {f[3], f[4], f[5]}
if LANE_PREFIX ~= '' then l = lmget('seq', 'lease_owner', 'checkpoints') end
if not l[1] or tonumber(l[1]) ~= tonumber(ARGV[1]) or l[2] ~= ARGV[2] then return {'lost'} end
local p = ARGV[4] ~= '' and cjson.decode(ARGV[4]) or nil
local lacking = (p and p.checkpoint) and missing(l[3], p.checkpoint) or 1
if lacking > 1 then return {'lost'} end
lset('lease_until', ARGV[5])
if p then
  if lacking == 1 then
    if p.checkpoint then lset('checkpoints', p.checkpoint) end
    to_lane(p)
    apply(job, KEYS[2], p, ARGV[3], ARGV[7])
    apply_outcomes(p, KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  end
  publish(job, ARGV[6])
end
return {'ok', f[1], f[2]}
"""
)

SIGNAL = (
    APPLY
    + """
-- KEYS[1] = job hash, KEYS[2] = messages list
-- ARGV[1] = stop | cancel | pause | resume, ARGV[2] = now (s), ARGV[3] = deadline for the step
-- that a resume enqueues (ms), ARGV[4] = channel, ARGV[5] = messages kept
-- Returns {code, status, seq}: code 'ok' (recorded), 'enqueue' (recorded; the job has no step in
-- flight, so the caller must enqueue step `seq`), 'same' (already so), 'missing', 'terminal',
-- 'refused' (not allowed in this state), 'ending' (a cancel, after the step in flight began to
-- end the job).
local job, what = KEYS[1], ARGV[1]
local f = redis.call('HMGET', job, 'status', 'seq', 'signal')
local status, seq, signal = f[1], f[2], f[3]
if not status then return {'missing', '', 0} end
if TERMINAL[status] then
  return {'terminal', status, seq}
end
local function set(new_status, new_signal, text)
  hset(job, 'status', new_status, 'signal', new_signal)
  apply(job, KEYS[2], {messages = {text}}, ARGV[2], ARGV[5])
  publish(job, ARGV[4])
end
local code = 'ok'
if status == 'awaiting_confirmation' and what ~= 'cancel' then return {'refused', status, seq} end
if (status == 'paused' and what ~= 'pause') or status == 'awaiting_confirmation' then
  code = 'enqueue'
  hset(job, 'lease_owner', '', 'lease_until', ARGV[3])
end
if what == 'stop' then
  if status == 'stopping' then return {'same', status, seq} end
  if status == 'canceling' then return {'refused', status, seq} end
  set('stopping', '', 'Stop requested')
elseif what == 'cancel' then
  if status == 'canceling' then return {'same', status, seq} end
  -- The step in flight ends the job and has run its callbacks (the engine set `ending`): too late.
  if redis.call('HGET', job, 'ending') == seq then return {'ending', status, seq} end
  if status == 'awaiting_confirmation' then
    set('canceling', '', 'Discarded without running: nothing was changed')
  else
    set('canceling', '', 'Cancel requested: undoing the work done so far')
  end
elseif what == 'pause' then
  if status == 'paused' or signal == 'pause' then return {'same', status, seq} end
  if status ~= 'running' and status ~= 'pending' then return {'refused', status, seq} end
  hset(job, 'signal', 'pause')
  apply(job, KEYS[2], {messages = {'Pause requested'}}, ARGV[2], ARGV[5])
  publish(job, ARGV[4])
elseif what == 'resume' then
  if status == 'paused' then
    set('running', '', 'Resumed')
  elseif signal == 'pause' then
    hset(job, 'signal', '')
    apply(job, KEYS[2], {messages = {'Resumed'}}, ARGV[2], ARGV[5])
    publish(job, ARGV[4])
  else
    return {'same', status, seq}
  end
end
return {code, redis.call('HGET', job, 'status'), seq}
"""
)

REOPEN = (
    APPLY
    + """
-- KEYS[1] = job hash, KEYS[2] = messages list, KEYS[3..] = the job's other keys
-- ARGV[1] = now (s), ARGV[2] = deadline for the step the caller enqueues (ms), ARGV[3] = channel,
-- ARGV[4] = messages kept, ARGV[5] = the status the job must be in (stopped: Continue;
-- awaiting_confirmation: Confirm), ARGV[6] = the message
-- Puts a job that holds no worker back to running, as the same job: a stopped job goes on from
-- where it stopped (its keys lose the expiry the stop gave them, its counters and cursor go on);
-- an assessed one runs.
-- Returns {code, status, seq}: 'enqueue' (the caller enqueues step `seq`), 'missing',
-- 'refused' (the job is not in that status), 'cleaned' (its output was already cleaned up).
local job = KEYS[1]
local f = redis.call('HMGET', job, 'status', 'seq', 'cleaned')
if not f[1] then return {'missing', '', 0} end
if f[1] ~= ARGV[5] then return {'refused', f[1], f[2]} end
if f[3] == '1' then return {'cleaned', f[1], f[2]} end
hset(job, 'status', 'running', 'signal', '', 'lease_owner', '',
  'lease_until', ARGV[2], 'finished_at', '', 'skipped', 0, 'ending', '')
for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
apply(job, KEYS[2], {messages = {ARGV[6]}}, ARGV[1], ARGV[4])
publish(job, ARGV[3])
return {'enqueue', 'running', f[2]}
"""
)

RECOVER = (
    PRELUDE
    + """
-- KEYS[1] = job hash, KEYS[2] = lanes hash
-- ARGV[1] = now (ms), ARGV[2] = deadline to set for the re-enqueued step (ms),
-- ARGV[3] = a worker known to be dead ('' for none), ARGV[4] = lane (0: the job's own chain)
-- A job whose step deadline passed (its worker died holding the lease, or its next step never
-- reached a worker), or whose lease the dead worker holds, gets a fresh deadline; the caller
-- re-enqueues step `seq`. A lane of a job in lanes is recovered alone, the same way.
-- Returns {'requeue', seq, lost (1 if a claimed step was lost)} or {'skip'}.
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'paused' or TERMINAL[status] then
  return {'skip'}
end
local key, k = KEYS[1], ''
if tonumber(ARGV[4]) > 0 then key, k = KEYS[2], ARGV[4] .. ':' end
local f = redis.call('HMGET', key, k .. 'seq', k .. 'lease_owner', k .. 'lease_until',
  k .. 'lane_state')
if not f[1] or (k ~= '' and f[4] ~= '') then return {'skip'} end
local held_by_the_dead = ARGV[3] ~= '' and f[2] == ARGV[3]
if tonumber(f[3]) > tonumber(ARGV[1]) and not held_by_the_dead then return {'skip'} end
local lost = 0
if f[2] ~= '' then lost = 1 end
redis.call('HSET', key, k .. 'lease_owner', '', k .. 'lease_until', ARGV[2])
if lost == 1 then redis.call('HINCRBY', KEYS[1], 'recoveries', 1) end
return {'requeue', f[1], lost}
"""
)

MARK_CLEANED = (
    PRELUDE
    + """
-- KEYS[1] = job hash
-- Sets cleaned = 1 once, on a job that has ended; returns the job hash to the one caller that set
-- it, else {}. (A stopped job continued meanwhile is running again: its output is still needed.)
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not TERMINAL[status] then return {} end
if redis.call('HSETNX', KEYS[1], 'cleaned', 1) == 0 then
  if redis.call('HGET', KEYS[1], 'cleaned') == '1' then return {} end
  redis.call('HSET', KEYS[1], 'cleaned', 1)
end
return redis.call('HGETALL', KEYS[1])
"""
)

ADMIT = """
-- KEYS[1] = the owner's active jobs: a hash, job id -> '<admitted at (ms)> <pool> <fingerprint>'
-- ARGV[1] = the new job's id, ARGV[2] = its pool (the jobs that share its limit),
-- ARGV[3] = its fingerprint ('' = not deduplicated), ARGV[4] = the pool's limit (0 = none),
-- ARGV[5] = now (ms), ARGV[6...] = ids of entries the caller found ended or gone
-- Returns {'ok'} (admitted: the job's place is taken, create it), {'same', job id} (an active
-- job of the owner's has the same fingerprint: that one is the answer), or {'full', ids} (the
-- pool's active jobs fill the limit).
-- The entries the caller found ended (a terminal status) or gone (no hash after the grace) are
-- dropped first, so an entry that no one removed never holds a place for good. The caller read
-- them just before: an entry admitted since is counted, which errs towards "full", never over it.
local active, pool, fingerprint = KEYS[1], ARGV[2], ARGV[3]
for i = 6, #ARGV do redis.call('HDEL', active, ARGV[i]) end
local entries = redis.call('HGETALL', active)
local counted = {}
for i = 1, #entries, 2 do
  local id = entries[i]
  local its_pool, its_fingerprint = string.match(entries[i + 1], '^%d+ (%S+) ?(%S*)$')
  if fingerprint ~= '' and its_fingerprint == fingerprint then return {'same', id} end
  if its_pool == pool then counted[#counted + 1] = id end
end
local limit = tonumber(ARGV[4])
if limit > 0 and #counted >= limit then return {'full', counted} end
redis.call('HSET', active, ARGV[1], ARGV[5] .. ' ' .. pool .. ' ' .. fingerprint)
return {'ok'}
"""

# -- notifications (see inbox.py) ---------------------------------------------------------------

# KEYS[1] = job hash. ARGV[1] = a field to delete ('' for none), ARGV[2...] = field, value pairs
# to set. Only while the job exists: a job that expired meanwhile is not brought back as a hash
# without a TTL. Returns 1 when the job exists.
HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then redis.call('HDEL', KEYS[1], ARGV[1]) end
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
return 1
"""

# KEYS[1] = a lock. ARGV[1] = the token its holder set. Deletes the lock only if that holder still
# holds it (a lock that expired and was taken by another is left to the other).
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
