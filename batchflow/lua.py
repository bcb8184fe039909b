"""The Lua the step protocol's scripts share (see :mod:`batchflow.scripts`): the terminal set
every script starts with, the helpers that apply a step's report and record what changed for
its event, and the step record of a job's own chain or of one of its lanes."""

from .schema import LUA_TERMINAL

# Every script starts with the terminal set, from the one Python definition.
PRELUDE = f"local TERMINAL = {LUA_TERMINAL}\n"

# The status update shared by COMMIT, RENEW and SIGNAL. `p` is the decoded payload:
#   incr: {field: delta}, set: {field: value}, messages: [text], results: [[id, json]],
#   errors: [[id, message]], undo_errors: [[id, message]], walked: [id] (the ids a source job
#   went through, appended to its items list so Cancel can undo them); checkpoint: its number
#   (RENEW), or
#   unconfirmed: a numbered checkpoint to apply once, and checkpoints: the number of the last
#   checkpoint the step sent (COMMIT).
APPLY = (
    PRELUDE
    + """
-- What this script changed in the job hash, and the messages it added: its event (see publish).
-- Every change to the job hash of a script that publishes goes through hset or hincrby.
local CHANGED, ADDED = {}, {}

local function hset(job, ...)
  local args = {...}
  for i = 1, #args, 2 do CHANGED[args[i]] = true end
  return redis.call('HSET', job, ...)
end

local function hincrby(job, field, by)
  CHANGED[field] = true
  return redis.call('HINCRBY', job, field, by)
end

local function apply(job, msgs, p, now, cap)
  if p.incr then for k, v in pairs(p.incr) do hincrby(job, k, v) end end
  if p.set then for k, v in pairs(p.set) do hset(job, k, v) end end
  if p.messages then
    for _, text in ipairs(p.messages) do
      local entry = cjson.encode({at = tonumber(now), text = text})
      redis.call('RPUSH', msgs, entry)
      ADDED[#ADDED + 1] = entry
      hset(job, 'message', text)
    end
    redis.call('LTRIM', msgs, -tonumber(cap), -1)
  end
  hset(job, 'updated_at', now)
end

-- Per-id outcomes into their hashes (results, errors, undo errors); a source's ids to the list.
local function apply_outcomes(p, results, errors, undo_errors, items)
  if p.results then for _, r in ipairs(p.results) do redis.call('HSET', results, r[1], r[2]) end end
  if p.errors then for _, e in ipairs(p.errors) do redis.call('HSET', errors, e[1], e[2]) end end
  if p.undo_errors then
    for _, e in ipairs(p.undo_errors) do redis.call('HSET', undo_errors, e[1], e[2]) end
  end
  if p.walked then for _, id in ipairs(p.walked) do redis.call('RPUSH', items, id) end end
end

-- How many of the checkpoints a step sent, up to number `n`, a job that has applied `have` (its
-- `checkpoints` field) lacks: 0 or less (applied, or sent again), 1 (`n` is the next one), more
-- (one it applied is gone: Redis restarted and lost writes it had acknowledged, so the step
-- cannot go on from what it holds).
local function missing(have, n)
  return (n or 0) - (tonumber(have) or 0)
end

-- The job's event: the fields this script changed, with their values now, and the messages it
-- added, numbered by `events` so that a follower that missed one reads the job anew. Built only
-- when someone follows the job: a job nobody watches pays a count and a look at its channel.
local function publish(job, channel)
  local number = redis.call('HINCRBY', job, 'events', 1)
  if redis.call('PUBSUB', 'NUMSUB', channel)[2] == 0 then return end
  local fields, set = {}, {}
  for field in pairs(CHANGED) do fields[#fields + 1] = field end
  if #fields > 0 then
    local values = redis.call('HMGET', job, unpack(fields))
    for i, field in ipairs(fields) do set[field] = values[i] end
  end
  redis.call('PUBLISH', channel, cjson.encode({events = number, set = set, messages = ADDED}))
end
"""
)


# The step record a script works on, for CLAIM, COMMIT, RENEW and RECOVER: the job hash itself
# (lane 0: a job in one chain, or the own chain of a job in lanes, which creates its lanes and
# ends the job), or one lane's fields in the job's lanes hash, each named '<lane>:<field>'. A lane
# has its own fence (seq, lease), position (processed, of its range lane_start + lane_size of the
# ids), batch size, careful_until, undo_cursor, checkpoints and phase; the job's counters, status,
# messages and outcomes are the one job's.
LANE = """
local LANE_KEY, LANE_PREFIX = nil, ''
local function lane_of(job, lanes, n)
  if tonumber(n) > 0 then LANE_KEY, LANE_PREFIX = lanes, n .. ':' else LANE_KEY = job end
end
local function lget(field) return redis.call('HGET', LANE_KEY, LANE_PREFIX .. field) end
local function lmget(...)
  local names = {...}
  for i = 1, #names do names[i] = LANE_PREFIX .. names[i] end
  return redis.call('HMGET', LANE_KEY, unpack(names))
end
local function lset(...)
  if LANE_PREFIX == '' then return hset(LANE_KEY, ...) end
  local args = {...}
  for i = 1, #args, 2 do args[i] = LANE_PREFIX .. args[i] end
  return redis.call('HSET', LANE_KEY, unpack(args))
end
local function lincr(field, by)
  if LANE_PREFIX == '' then return hincrby(LANE_KEY, field, by) end
  return redis.call('HINCRBY', LANE_KEY, LANE_PREFIX .. field, by)
end
-- A lane's own fields, and what a lane shows its step in place of the job's (total: its size).
local LANE_OWN = {batch_size = true, undo_cursor = true, careful_until = true}
-- A lane step's report: its own fields go to its record (taken out of the report), and its
-- processed units count for the lane and (through the report) the job.
local function to_lane(q)
  if LANE_PREFIX == '' or not q then return end
  for k, v in pairs(q.set or {}) do
    if LANE_OWN[k] then lset(k, v); q.set[k] = nil end
  end
  for k, v in pairs(q.incr or {}) do
    if LANE_OWN[k] then lincr(k, v); q.incr[k] = nil elseif k == 'processed' then lincr(k, v) end
  end
end
local LANE_VIEW = {'seq', 'attempts', 'batch_size', 'careful_until', 'processed', 'undo_cursor',
  'phase', 'checkpoints', 'lease_owner', 'lease_until', 'lane_size'}
"""
