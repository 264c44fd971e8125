"""The Lua scripts behind :mod:`hivemind.taskstore`: each one is a whole state change, run
atomically inside Redis. Only ``TaskStore`` loads them."""

from __future__ import annotations

from hivemind import keys, tuning
from hivemind.states import TERMINAL_STATES

# Re-exported: the task store finds every script in this module.
from hivemind.taskstore.finished_scripts import ARCHIVE_BATCH, ARCHIVED, ENDED_AMONG  # noqa: F401
from hivemind.worker_records import LUA_HELPERS

# Shared Lua helpers, prepended to every script. ``fmt`` keeps large integer scores exact:
# Redis' Lua turns numbers into strings with 14 significant digits.
_LUA_COMMON = f"""
local PRIORITY_MAX = {tuning.PRIORITY_MAX}
local STRIDE = {tuning.PRIORITY_STRIDE}
local function fmt(n) return string.format('%.0f', n) end
local function tkey(id) return '{keys.TASK_PREFIX}' .. id end
local function thistory(id) return tkey(id) .. '{keys.TASK_HISTORY_SUFFIX}' end
local function tlog(id) return tkey(id) .. '{keys.TASK_LOG_SUFFIX}' end
local function wtasks(node)
  return '{keys.WORKER_PREFIX}' .. node .. '{keys.WORKER_TASKS_SUFFIX}'
end
local function history(id, attempt, event, worker, at, detail)
  redis.call('RPUSH', thistory(id), cjson.encode({{
    attempt = tonumber(attempt) or 0, event = event, worker = worker or '',
    at = tonumber(at), detail = detail or ''}}))
end
local function rank_of(score) return math.floor(score / STRIDE) end
-- Queue task ``id`` (its hash already says QUEUED) by its owner, priority and sequence.
local function queue_entry(id, owner, priority, seq, constrained)
  local rank = PRIORITY_MAX - (tonumber(priority) or 0)
  redis.call('ZADD', '{keys.QUEUE_OWNER_PREFIX}' .. owner, fmt(rank * STRIDE + tonumber(seq)), id)
  redis.call('RPUSH', '{keys.TASK_QUEUE}', id)
  if constrained then redis.call('SADD', '{keys.TASKS_CONSTRAINED}', id) end
  local current = redis.call('ZSCORE', '{keys.QUEUE_OWNERS}', owner)
  if not current then
    local ticket = tonumber(redis.call('GET', '{keys.QUEUE_RR}') or '0')
    redis.call('ZADD', '{keys.QUEUE_OWNERS}', fmt(rank * STRIDE + ticket), owner)
  else
    current = tonumber(current)
    local current_rank = rank_of(current)
    if rank < current_rank then
      local ticket = current - current_rank * STRIDE
      redis.call('ZADD', '{keys.QUEUE_OWNERS}', fmt(rank * STRIDE + ticket), owner)
    end
  end
end
-- Queue again a task that has been queued before (requeued, handed back, repaired).
local function enqueue(id)
  redis.call('ZREM', '{keys.DEADLINES}', id)
  local f = redis.call('HMGET', tkey(id), 'owner', 'priority', 'seq', 'constrained')
  queue_entry(id, f[1], f[2], f[3], f[4] == '1')
end
-- Take task ``id`` out of the queue keys; ``constrained`` false: it is in no constrained set.
local function unqueue(id, owner, constrained)
  redis.call('ZREM', '{keys.QUEUE_OWNER_PREFIX}' .. owner, id)
  redis.call('LREM', '{keys.TASK_QUEUE}', 1, id)
  if constrained ~= false then redis.call('SREM', '{keys.TASKS_CONSTRAINED}', id) end
end
-- ... and its owner out of the line when nothing of theirs is left queued.
local function dequeue(id, owner)
  unqueue(id, owner)
  if redis.call('ZCARD', '{keys.QUEUE_OWNER_PREFIX}' .. owner) == 0 then
    redis.call('ZREM', '{keys.QUEUE_OWNERS}', owner)
  end
end
local finished_counts, finished_at = {{}}, nil
-- ``fields``: more of the task's fields to set in the same HSET (field, value, ...).
local function finish(id, status, now, worker, attempt, detail, fields)
  local tk = tkey(id)
  fields = fields or {{}}
  redis.call('HSET', tk, 'status', status, 'finished_at', now, 'last_update', now,
             unpack(fields))
  redis.call('ZREM', '{keys.LEASES}', id)
  redis.call('ZREM', '{keys.DEADLINES}', id)
  if worker and worker ~= '' then
    redis.call('SREM', wtasks(worker), id)
  end
  redis.call('SADD', '{keys.TASKS_ARCHIVE_PENDING}', id)
  history(id, attempt, string.lower(status), worker, now, detail)
  finished_counts[status] = (finished_counts[status] or 0) + 1
  finished_at = now
end
-- Counters for the dashboard and /metrics: totals, and per minute for the last hours. Run
-- once at the end of every script (see load()), for all the tasks it finished.
local function count_finished()
  if not finished_at then return end
  local minute_key = '{keys.STATS_MINUTE_PREFIX}' .. math.floor(tonumber(finished_at) / 60)
  for status, count in pairs(finished_counts) do
    redis.call('HINCRBY', '{keys.STATS_FINISHED}', status, count)
    redis.call('HINCRBY', minute_key, status, count)
  end
  redis.call('EXPIRE', minute_key, {tuning.STATS_MINUTE_TTL})
end
-- A worker's write is accepted only for the current attempt of a RUNNING task it holds.
local function fence(id, attempt, worker)
  local f = redis.call('HMGET', tkey(id), 'status', 'attempt', 'worker')
  if not f[1] then return 'no such task' end
  if f[1] ~= 'RUNNING' then return 'task is ' .. f[1] end
  if tonumber(f[2]) ~= tonumber(attempt) then
    return 'attempt ' .. attempt .. ' is not the current attempt (' .. f[2] .. ')'
  end
  if f[3] ~= worker then return 'task is leased to ' .. f[3] end
  return nil
end
"""

_SUBMIT_TASKS = """
-- A: now, now_ms, JSON list of task field maps
local function submit_tasks(A)
local now, now_ms = A[1], A[2]
local tasks = cjson.decode(A[3])
local seq = redis.call('INCRBY', '%(seq)s', #tasks) - #tasks
for _, t in ipairs(tasks) do
  local tk = tkey(t.id)
  -- A retried call (its reply lost in a failover) must not submit a task twice.
  if redis.call('EXISTS', tk) == 0 then
    seq = seq + 1
    local fields = {'status', 'QUEUED', 'attempt', '0', 'lost', '0', 'seq', tostring(seq),
                    'created_at', now, 'last_update', now, 'progress', '0', 'worker', ''}
    for k, v in pairs(t) do
      fields[#fields + 1] = k
      fields[#fields + 1] = tostring(v)
    end
    redis.call('HSET', tk, unpack(fields))
    redis.call('ZADD', '%(all)s', now_ms, t.id)
    redis.call('ZADD', '%(owner_tasks)s' .. t.owner, now_ms, t.id)
    history(t.id, 0, 'submitted', '', now, '')
    queue_entry(t.id, t.owner, t.priority, seq, t.constrained == 1)
  end
end
end
"""

_LEASE_TASKS = """
-- A: worker, now, now_ms, lease_ms, max_tasks, cpu, memory_mb, gpu, labels (comma list),
--    scan_limit, JSON list of the task fields to return with each lease, max_bundles,
--    timeout grace (ms)
local function lease_tasks(A)
local worker, now, now_ms, lease_ms = A[1], A[2], tonumber(A[3]), tonumber(A[4])
local timeout_grace_ms = tonumber(A[13])
local max_tasks, scan_limit = tonumber(A[5]), tonumber(A[10])
local w_cpu, w_mem, w_gpu = tonumber(A[6]), tonumber(A[7]), tonumber(A[8])
local w_labels = {}
for label in string.gmatch(A[9], '[^,]+') do w_labels[label] = true end

-- The fields a lease returns, and what matching needs besides: read once per candidate.
local FIELDS = cjson.decode(A[11])
local RETURNED = #FIELDS
table.insert(FIELDS, 'constrained')
local F = {}
for i, name in ipairs(FIELDS) do F[name] = i end
local max_bundles, bundles = tonumber(A[12]), 0

-- The task's FIELDS when it fits this worker, else nil.
local function fits(id)
  local f = redis.call('HMGET', tkey(id), unpack(FIELDS))
  if f[F.kind] == 'BUNDLE' and bundles >= max_bundles then return nil end
  if f[F.constrained] ~= '1' then return f end
  if (tonumber(f[F.req_cpu]) or 0) > w_cpu or (tonumber(f[F.req_memory_mb]) or 0) > w_mem
     or (tonumber(f[F.req_gpu]) or 0) > w_gpu then
    return nil
  end
  for label in string.gmatch(f[F.req_labels] or '', '[^,]+') do
    if not w_labels[label] then return nil end
  end
  return f
end

local function take(id, owner, g)
  local tk = tkey(id)
  local owner_queue = '%(owner_queue)s' .. owner
  unqueue(id, owner, g[F.constrained] == '1')
  if g[F.kind] == 'BUNDLE' then bundles = bundles + 1 end
  local attempt = redis.call('HINCRBY', tk, 'attempt', 1)
  redis.call('HSET', tk, 'status', 'RUNNING', 'worker', worker, 'start_time', now,
             'last_update', now, 'progress', '0', 'progress_message', '',
             'unschedulable_reason', '')
  redis.call('ZADD', '%(leases)s', fmt(now_ms + lease_ms), id)
  -- The worker enforces the timeout; this deadline catches a worker that hangs but still
  -- heartbeats.
  local timeout_ms = (tonumber(g[F.timeout]) or 0) * 1000
  redis.call('ZADD', '%(deadlines)s', fmt(now_ms + timeout_ms + timeout_grace_ms), id)
  redis.call('SADD', wtasks(worker), id)
  history(id, attempt, 'leased', worker, now, '')
  -- Round-robin: the owner just served goes behind the others of its priority (or out of
  -- the line, with nothing left queued).
  local head = redis.call('ZRANGE', owner_queue, 0, 0, 'WITHSCORES')
  if head[1] then
    local ticket = redis.call('INCR', '%(rr)s')
    redis.call('ZADD', '%(owners)s', fmt(rank_of(tonumber(head[2])) * STRIDE + ticket), owner)
  else
    redis.call('ZREM', '%(owners)s', owner)
  end
  local out = {id, attempt}
  for i = 1, RETURNED do out[#out + 1] = g[i] or '' end
  return out
end

-- Each pass picks the task that fits this worker with the best priority rank; at equal rank,
-- the owner served least recently (lowest round-robin ticket) wins. Owners are sorted by
-- their best queued rank, so the scan stops once no later owner can beat what was found.
local out, scanned = {}, 0
while #out < max_tasks and scanned < scan_limit do
  local owners = redis.call('ZRANGE', '%(owners)s', 0, 49, 'WITHSCORES')
  if #owners == 0 then break end
  local best_id, best_owner, best_rank, best_ticket, best_fields = nil, nil, nil, nil, nil
  for i = 1, #owners, 2 do
    local owner, owner_score = owners[i], tonumber(owners[i + 1])
    local ticket = owner_score - rank_of(owner_score) * STRIDE
    if best_rank and rank_of(owner_score) > best_rank then break end
    -- The head first: it usually fits, and then the next 19 need not be read.
    for _, range in ipairs({{0, 0}, {1, 19}}) do
      local ids = redis.call('ZRANGE', '%(owner_queue)s' .. owner, range[1], range[2],
                             'WITHSCORES')
      if #ids == 0 and range[1] == 0 then redis.call('ZREM', '%(owners)s', owner) end
      local settled = #ids == 0
      for j = 1, #ids, 2 do
        scanned = scanned + 1
        local rank = rank_of(tonumber(ids[j + 1]))
        if best_rank and (rank > best_rank or (rank == best_rank and ticket >= best_ticket)) then
          settled = true
          break
        end
        local fields = fits(ids[j])
        if fields then
          best_id, best_owner, best_rank, best_ticket = ids[j], owner, rank, ticket
          best_fields = fields
          settled = true
          break
        end
      end
      if settled then break end
    end
    if scanned >= scan_limit then break end
  end
  if not best_id then break end
  out[#out + 1] = take(best_id, best_owner, best_fields)
end
-- First: 1 when nothing at all is left queued, so the node pool may skip the next look.
table.insert(out, 1, redis.call('ZCARD', '%(owners)s') == 0 and 1 or 0)
return out
end
"""

SUBMIT = (
    _SUBMIT_TASKS
    + """
submit_tasks(ARGV)
return 1
"""
)

LEASE = (
    _LEASE_TASKS
    + """
return lease_tasks(ARGV)
"""
)

SUBMIT_AND_LEASE = (
    _SUBMIT_TASKS
    + _LEASE_TASKS
    + """
-- ARGV: SUBMIT's three, then LEASE's: new work goes straight to a worker that waits for it,
-- in one round trip instead of two.
submit_tasks(ARGV)
return lease_tasks({unpack(ARGV, 4)})
"""
)

HEARTBEAT = """
-- ARGV: worker, now, now_ms, lease_ms, worker fields JSON, summary JSON, running ids...
local worker, now, now_ms, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
worker_heartbeat('%(worker_prefix)s' .. worker, '%(worker_nodes)s', worker, now, ARGV[5], ARGV[6])
local cancel = {}
for i = 7, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', tkey(id), 'status', 'worker', 'cancel_requested')
  if f[1] == 'RUNNING' and f[2] == worker then
    redis.call('ZADD', '%(leases)s', 'XX', fmt(now_ms + lease_ms), id)
    if f[3] == '1' then cancel[#cancel + 1] = id end
  else
    cancel[#cancel + 1] = id
  end
end
return cancel
"""

PROGRESS = """
-- ARGV: id, attempt, worker, now, now_ms, lease_ms, fraction, message
local why = fence(ARGV[1], ARGV[2], ARGV[3])
if why then return why end
redis.call('HSET', tkey(ARGV[1]), 'progress', ARGV[7], 'progress_message', ARGV[8],
           'last_update', ARGV[4])
redis.call('ZADD', '%(leases)s', 'XX', fmt(tonumber(ARGV[5]) + tonumber(ARGV[6])), ARGV[1])
return ''
"""

APPEND_LOG = """
-- ARGV: id, attempt, worker, now, text, max_chunks
local why = fence(ARGV[1], ARGV[2], ARGV[3])
if why then return why end
local lk = tlog(ARGV[1])
if redis.call('LLEN', lk) < tonumber(ARGV[6]) then redis.call('RPUSH', lk, ARGV[5]) end
redis.call('HSET', tkey(ARGV[1]), 'last_update', ARGV[4])
return ''
"""

MARK_DATA = """
-- ARGV: id, attempt, worker, field ('has_result_archive' or 'has_checkpoint')
local why = fence(ARGV[1], ARGV[2], ARGV[3])
if why then return why end
redis.call('HSET', tkey(ARGV[1]), ARGV[4], '1')
return ''
"""

COMPLETE = """
-- ARGV: now, JSON list of {id, attempt, worker, status, result_json, error_message, archive}
-- Replies, per outcome: why it was refused, or the finished task's hash (its waiters need it).
local now = ARGV[1]
local replies = {}
for _, r in ipairs(cjson.decode(ARGV[2])) do
  local why = fence(r.id, r.attempt, r.worker)
  if why then
    replies[#replies + 1] = why
  else
    local fields = {'result_json', r.result_json, 'error_message', r.error_message}
    if r.archive then table.insert(fields, 'has_result_archive'); table.insert(fields, '1') end
    if r.status == 'SUCCEEDED' then table.insert(fields, 'progress'); table.insert(fields, '1') end
    finish(r.id, r.status, now, r.worker, r.attempt, r.error_message, fields)
    replies[#replies + 1] = redis.call('HGETALL', tkey(r.id))
  end
end
return replies
"""

RELEASE = """
-- ARGV: now, JSON list of {id, attempt, worker}, event, detail: a stopping worker hands tasks
-- back, or an operator (`hivemind doctor --fix`) requeues a stuck one.
local now, event, detail = ARGV[1], ARGV[3], ARGV[4]
local replies = {}
for _, r in ipairs(cjson.decode(ARGV[2])) do
  local why = fence(r.id, r.attempt, r.worker)
  if why then
    replies[#replies + 1] = why
  else
    local tk = tkey(r.id)
    redis.call('ZREM', '%(leases)s', r.id)
    redis.call('SREM', wtasks(r.worker), r.id)
    if redis.call('HGET', tk, 'cancel_requested') == '1' then
      finish(r.id, 'CANCELLED', now, r.worker, r.attempt, 'cancelled')
    else
      redis.call('HSET', tk, 'status', 'QUEUED', 'worker', '', 'last_update', now)
      history(r.id, r.attempt, event, r.worker, now, detail)
      enqueue(r.id)
    end
    replies[#replies + 1] = ''
  end
end
return replies
"""

REPAIR_QUEUE_ENTRY = """
-- ARGV: id, now. Mend one task's queue entries (what `hivemind doctor --fix` does for
-- tasks.orphaned): an entry with no task record is dropped; a QUEUED task in no owner queue
-- is queued again. Returns 'dropped', 'requeued' or '' when nothing was wrong.
local id, now = ARGV[1], ARGV[2]
local tk = tkey(id)
local f = redis.call('HMGET', tk, 'status', 'owner')
if not f[1] then
  redis.call('LREM', '%(task_queue)s', 0, id)
  redis.call('SREM', '%(constrained)s', id)
  for _, owner in ipairs(redis.call('ZRANGE', '%(owners)s', 0, -1)) do
    if redis.call('ZREM', '%(owner_queue)s' .. owner, id) == 1
       and redis.call('ZCARD', '%(owner_queue)s' .. owner) == 0 then
      redis.call('ZREM', '%(owners)s', owner)
    end
  end
  return 'dropped'
end
if f[1] == 'QUEUED' and not redis.call('ZSCORE', '%(owner_queue)s' .. f[2], id) then
  redis.call('LREM', '%(task_queue)s', 0, id)
  redis.call('HSET', tk, 'last_update', now)
  history(id, redis.call('HGET', tk, 'attempt'), 'requeued', '', now,
          'in no queue; queued again by hivemind doctor --fix')
  enqueue(id)
  return 'requeued'
end
return ''
"""

REAP = """
-- ARGV: now, now_ms, limit. Requeue or fail RUNNING tasks whose lease expired.
local now = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', '%(leases)s', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 'status', 'worker', 'attempt', 'retries', 'cancel_requested')
  redis.call('ZREM', '%(leases)s', id)
  if f[2] and f[2] ~= '' then
    redis.call('SREM', wtasks(f[2]), id)
  end
  if f[1] == 'RUNNING' then
    local worker, attempt = f[2], f[3]
    if f[5] == '1' then
      redis.call('HSET', tk, 'error_message', 'cancelled; worker ' .. worker ..
                 ' was lost before it stopped the task')
      finish(id, 'CANCELLED', now, worker, attempt, 'worker lost while cancelling')
      out[#out + 1] = {id, 'cancelled', worker}
    else
      local lost = redis.call('HINCRBY', tk, 'lost', 1)
      local retries = tonumber(f[4]) or 0
      if lost > retries then
        local msg = 'worker ' .. worker .. ' was lost (no heartbeat; lease expired) during '
          .. 'attempt ' .. attempt .. ', and no retries are left (retries=' .. retries .. ')'
        redis.call('HSET', tk, 'error_message', msg)
        finish(id, 'FAILED', now, worker, attempt, msg)
        out[#out + 1] = {id, 'failed', worker}
      else
        redis.call('HSET', tk, 'status', 'QUEUED', 'worker', '', 'last_update', now)
        history(id, attempt, 'requeued', worker, now, 'worker ' .. worker .. ' lost')
        enqueue(id)
        out[#out + 1] = {id, 'requeued', worker}
      end
    end
  end
end
return out
"""

REAP_TIMEOUTS = """
-- ARGV: now, now_ms, limit, grace (s). TIMEOUT for RUNNING tasks far past their deadline.
local now = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', '%(deadlines)s', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', '%(deadlines)s', id)
  local f = redis.call('HMGET', tkey(id), 'status', 'worker', 'attempt', 'timeout')
  if f[1] == 'RUNNING' then
    local msg = 'no result ' .. ARGV[4] .. ' s after its ' .. f[4] .. ' s timeout; worker '
      .. f[2] .. ' did not stop it'
    redis.call('HSET', tkey(id), 'error_message', msg)
    finish(id, 'TIMEOUT', now, f[2], f[3], msg)
    out[#out + 1] = {id, f[2]}
  end
end
return out
"""

CANCEL = """
-- ARGV: id, now. QUEUED: cancelled at once. RUNNING: flagged; the worker stops it.
local id, now = ARGV[1], ARGV[2]
local tk = tkey(id)
local f = redis.call('HMGET', tk, 'status', 'owner', 'attempt')
if not f[1] then return {0, 'no such task'} end
if f[1] == 'QUEUED' then
  dequeue(id, f[2])
  redis.call('HSET', tk, 'error_message', 'cancelled')
  finish(id, 'CANCELLED', now, '', f[3], 'cancelled while queued')
  return {1, 'CANCELLED'}
end
if f[1] == 'RUNNING' then
  redis.call('HSET', tk, 'cancel_requested', '1', 'last_update', now)
  return {1, 'RUNNING'}
end
return {0, 'task is already ' .. f[1]}
"""

REQUEUE_RESTORED = """
-- ARGV: now, JSON list of ids. A restored task that was RUNNING when the backup was taken
-- has no worker any more: back to the queue (a cancel request ends it instead). No retry is
-- used up: losing the worker was the restore's doing, not the task's.
local now = ARGV[1]
local out = {}
for _, id in ipairs(cjson.decode(ARGV[2])) do
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 'status', 'worker', 'attempt', 'cancel_requested')
  if f[1] == 'RUNNING' then
    redis.call('ZREM', '%(leases)s', id)
    if f[2] and f[2] ~= '' then
      redis.call('SREM', wtasks(f[2]), id)
    end
    if f[4] == '1' then
      finish(id, 'CANCELLED', now, f[2], f[3], 'cancelled; restored from a backup')
    else
      redis.call('HSET', tk, 'status', 'QUEUED', 'worker', '', 'last_update', now)
      history(id, f[3], 'requeued', f[2], now, 'restored from a backup')
      enqueue(id)
      out[#out + 1] = id
    end
  end
end
return out
"""

MARK_UNSCHEDULABLE = """
-- ARGV: id, reason. Only a task that is still QUEUED gets (or loses) a reason.
if redis.call('HGET', tkey(ARGV[1]), 'status') ~= 'QUEUED' then
  redis.call('SREM', '%(constrained)s', ARGV[1])
  return 0
end
redis.call('HSET', tkey(ARGV[1]), 'unschedulable_reason', ARGV[2])
return 1
"""

RESET_WORKER = """
-- ARGV: node id, now, stale_before, detail. An operator (`hivemind playbook run
-- reset-stale-workers`) resets a worker that says online but has not heartbeat since
-- stale_before: each task it holds goes back to the queue (fenced like RELEASE) and the worker
-- is marked lost. Returns -1 when its heartbeat came back meanwhile (nothing is touched), else
-- the number of tasks requeued.
local node, now, stale_before, detail = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local wk = '%(worker_prefix)s' .. node
local beat = tonumber(redis.call('HGET', wk, 'last_heartbeat') or '0') or 0
if beat >= stale_before then return -1 end
local requeued = 0
for _, id in ipairs(redis.call('SMEMBERS', wtasks(node))) do
  local attempt = redis.call('HGET', tkey(id), 'attempt') or '0'
  if not fence(id, attempt, node) then
    redis.call('ZREM', '%(leases)s', id)
    if redis.call('HGET', tkey(id), 'cancel_requested') == '1' then
      finish(id, 'CANCELLED', now, node, attempt, 'cancelled')
    else
      redis.call('HSET', tkey(id), 'status', 'QUEUED', 'worker', '', 'last_update', now)
      history(id, attempt, 'requeued', node, now, detail)
      enqueue(id)
    end
    requeued = requeued + 1
  end
  redis.call('SREM', wtasks(node), id)
end
set_worker_status(wk, '%(worker_nodes)s', node, 'lost')
return requeued
"""

_NAMES = {
    "seq": keys.QUEUE_SEQ,
    "all": keys.TASKS_ALL,
    "owner_tasks": keys.TASKS_OWNER_PREFIX,
    "leases": keys.LEASES,
    "worker_prefix": keys.WORKER_PREFIX,
    "owner_queue": keys.QUEUE_OWNER_PREFIX,
    "owners": keys.QUEUE_OWNERS,
    "rr": keys.QUEUE_RR,
    "worker_nodes": keys.WORKER_NODES,
    "constrained": keys.TASKS_CONSTRAINED,
    "deadlines": keys.DEADLINES,
    "task_queue": keys.TASK_QUEUE,
    "archive_pending": keys.TASKS_ARCHIVE_PENDING,
    "terminal": ", ".join(f"{state.value} = true" for state in sorted(TERMINAL_STATES)),
}


def load(body: str) -> str:
    """A script ready to register: the shared helpers, then ``body`` with key names filled,
    run as a function so that the counters of finished tasks are written after it."""
    return (
        LUA_HELPERS  # every worker record write goes through them
        + _LUA_COMMON
        + "local function main()\n"
        + body % _NAMES
        + "\nend\nlocal reply = main()\ncount_finished()\nreturn reply\n"
    )
