"""Every task state change, each one atomic: a Lua script run inside Redis.

A task moves QUEUED -> RUNNING -> one terminal state (SUCCEEDED, FAILED, CANCELLED, TIMEOUT),
and back to QUEUED only when its worker is lost (lease expired) or hands it back. Each lease
increments ``attempt``; every write from a worker names the attempt it belongs to, and a
write whose attempt is no longer current is refused. That fence is what gives each task
exactly one terminal result, however late a lost worker's answer arrives.

Nothing outside this module writes ``status``, ``attempt`` or the queue keys.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from hivemind import keys
from hivemind.states import TaskState

# Shared Lua helpers, prepended to every script. ``fmt`` keeps large integer scores exact:
# Redis' Lua turns numbers into strings with 14 significant digits.
_LUA_COMMON = f"""
local PRIORITY_MAX = {keys.PRIORITY_MAX}
local STRIDE = {keys.PRIORITY_STRIDE}
local function fmt(n) return string.format('%.0f', n) end
local function tkey(id) return '{keys.TASK_PREFIX}' .. id end
local function history(id, attempt, event, worker, at, detail)
  redis.call('RPUSH', tkey(id) .. ':history', cjson.encode({{
    attempt = tonumber(attempt) or 0, event = event, worker = worker or '',
    at = tonumber(at), detail = detail or ''}}))
end
local function rank_of(score) return math.floor(score / STRIDE) end
local function enqueue(id)
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 'owner', 'priority', 'seq', 'constrained')
  local owner, rank = f[1], PRIORITY_MAX - (tonumber(f[2]) or 0)
  redis.call('ZADD', '{keys.QUEUE_OWNER_PREFIX}' .. owner, fmt(rank * STRIDE + tonumber(f[3])), id)
  redis.call('RPUSH', '{keys.TASK_QUEUE}', id)
  if f[4] == '1' then redis.call('SADD', '{keys.TASKS_CONSTRAINED}', id) end
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
local function dequeue(id, owner)
  redis.call('ZREM', '{keys.QUEUE_OWNER_PREFIX}' .. owner, id)
  redis.call('LREM', '{keys.TASK_QUEUE}', 1, id)
  redis.call('SREM', '{keys.TASKS_CONSTRAINED}', id)
  if redis.call('ZCARD', '{keys.QUEUE_OWNER_PREFIX}' .. owner) == 0 then
    redis.call('ZREM', '{keys.QUEUE_OWNERS}', owner)
  end
end
local function finish(id, status, now, worker, attempt, detail)
  local tk = tkey(id)
  redis.call('HSET', tk, 'status', status, 'finished_at', now, 'last_update', now)
  redis.call('ZREM', '{keys.LEASES}', id)
  if worker and worker ~= '' then
    redis.call('SREM', '{keys.WORKER_PREFIX}' .. worker .. ':tasks', id)
  end
  redis.call('SADD', '{keys.TASKS_ARCHIVE_PENDING}', id)
  history(id, attempt, string.lower(status), worker, now, detail)
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

_SUBMIT = """
-- ARGV: now, now_ms, JSON list of task field maps
local now, now_ms = ARGV[1], ARGV[2]
for _, t in ipairs(cjson.decode(ARGV[3])) do
  local tk = tkey(t.id)
  local seq = redis.call('INCR', '%(seq)s')
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
  enqueue(t.id)
end
return 1
"""

_LEASE = """
-- ARGV: worker, now, now_ms, lease_ms, max_tasks, cpu, memory_mb, gpu, labels (comma list),
--       scan_limit, JSON list of the task fields to return with each lease, max_bundles
local worker, now, now_ms, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_tasks, scan_limit = tonumber(ARGV[5]), tonumber(ARGV[10])
local w_cpu, w_mem, w_gpu = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local w_labels = {}
for label in string.gmatch(ARGV[9], '[^,]+') do w_labels[label] = true end

local LEASE_FIELDS = cjson.decode(ARGV[11])
local max_bundles, bundles = tonumber(ARGV[12]), 0

local function fits(id)
  local f = redis.call('HMGET', tkey(id), 'constrained', 'req_cpu', 'req_memory_mb', 'req_gpu',
                       'req_labels', 'kind')
  if f[6] == 'BUNDLE' and bundles >= max_bundles then return false end
  if f[1] ~= '1' then return true end
  if (tonumber(f[2]) or 0) > w_cpu or (tonumber(f[3]) or 0) > w_mem
     or (tonumber(f[4]) or 0) > w_gpu then
    return false
  end
  for label in string.gmatch(f[5] or '', '[^,]+') do
    if not w_labels[label] then return false end
  end
  return true
end

local function take(id, owner)
  local tk = tkey(id)
  dequeue(id, owner)
  if redis.call('HGET', tk, 'kind') == 'BUNDLE' then bundles = bundles + 1 end
  local attempt = redis.call('HINCRBY', tk, 'attempt', 1)
  redis.call('HSET', tk, 'status', 'RUNNING', 'worker', worker, 'start_time', now,
             'last_update', now, 'progress', '0', 'progress_message', '',
             'unschedulable_reason', '')
  redis.call('ZADD', '%(leases)s', fmt(now_ms + lease_ms), id)
  redis.call('SADD', '%(worker_prefix)s' .. worker .. ':tasks', id)
  history(id, attempt, 'leased', worker, now, '')
  -- Round-robin: the owner just served goes behind the others of its priority.
  local head = redis.call('ZRANGE', '%(owner_queue)s' .. owner, 0, 0, 'WITHSCORES')
  if head[1] then
    local ticket = redis.call('INCR', '%(rr)s')
    redis.call('ZADD', '%(owners)s', fmt(rank_of(tonumber(head[2])) * STRIDE + ticket), owner)
  end
  local out = {id, attempt}
  local g = redis.call('HMGET', tk, unpack(LEASE_FIELDS))
  for i = 1, #LEASE_FIELDS do out[#out + 1] = g[i] or '' end
  return out
end

-- Each pass picks the task that fits this worker with the best priority rank; at equal rank,
-- the owner served least recently (lowest round-robin ticket) wins. Owners are sorted by
-- their best queued rank, so the scan stops once no later owner can beat what was found.
local out, scanned = {}, 0
while #out < max_tasks and scanned < scan_limit do
  local owners = redis.call('ZRANGE', '%(owners)s', 0, 49, 'WITHSCORES')
  if #owners == 0 then break end
  local best_id, best_owner, best_rank, best_ticket = nil, nil, nil, nil
  for i = 1, #owners, 2 do
    local owner, owner_score = owners[i], tonumber(owners[i + 1])
    local ticket = owner_score - rank_of(owner_score) * STRIDE
    if best_rank and rank_of(owner_score) > best_rank then break end
    local ids = redis.call('ZRANGE', '%(owner_queue)s' .. owner, 0, 19, 'WITHSCORES')
    if #ids == 0 then redis.call('ZREM', '%(owners)s', owner) end
    for j = 1, #ids, 2 do
      scanned = scanned + 1
      local rank = rank_of(tonumber(ids[j + 1]))
      if best_rank and (rank > best_rank or (rank == best_rank and ticket >= best_ticket)) then
        break
      end
      if fits(ids[j]) then
        best_id, best_owner, best_rank, best_ticket = ids[j], owner, rank, ticket
        break
      end
    end
    if scanned >= scan_limit then break end
  end
  if not best_id then break end
  out[#out + 1] = take(best_id, best_owner)
end
return out
"""

_HEARTBEAT = """
-- ARGV: worker, now, now_ms, lease_ms, worker fields JSON, summary JSON, running ids...
local worker, now, now_ms, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local wk = '%(worker_prefix)s' .. worker
local fields = {}
for k, v in pairs(cjson.decode(ARGV[5])) do
  fields[#fields + 1] = k
  fields[#fields + 1] = tostring(v)
end
redis.call('HSET', wk, 'status', 'online', 'last_heartbeat', now, unpack(fields))
redis.call('HSET', '%(worker_nodes)s', worker, ARGV[6])
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

_PROGRESS = """
-- ARGV: id, attempt, worker, now, now_ms, lease_ms, fraction, message
local why = fence(ARGV[1], ARGV[2], ARGV[3])
if why then return why end
redis.call('HSET', tkey(ARGV[1]), 'progress', ARGV[7], 'progress_message', ARGV[8],
           'last_update', ARGV[4])
redis.call('ZADD', '%(leases)s', 'XX', fmt(tonumber(ARGV[5]) + tonumber(ARGV[6])), ARGV[1])
return ''
"""

_APPEND_LOG = """
-- ARGV: id, attempt, worker, now, text, max_chunks
local why = fence(ARGV[1], ARGV[2], ARGV[3])
if why then return why end
local lk = tkey(ARGV[1]) .. ':log'
if redis.call('LLEN', lk) < tonumber(ARGV[6]) then redis.call('RPUSH', lk, ARGV[5]) end
redis.call('HSET', tkey(ARGV[1]), 'last_update', ARGV[4])
return ''
"""

_MARK_DATA = """
-- ARGV: id, attempt, worker, field ('has_result_archive' or 'has_checkpoint')
local why = fence(ARGV[1], ARGV[2], ARGV[3])
if why then return why end
redis.call('HSET', tkey(ARGV[1]), ARGV[4], '1')
return ''
"""

_COMPLETE = """
-- ARGV: now, JSON list of {id, attempt, worker, status, result_json, error_message, archive}
local now = ARGV[1]
local replies = {}
for _, r in ipairs(cjson.decode(ARGV[2])) do
  local why = fence(r.id, r.attempt, r.worker)
  if why then
    replies[#replies + 1] = why
  else
    local tk = tkey(r.id)
    redis.call('HSET', tk, 'result_json', r.result_json, 'error_message', r.error_message)
    if r.archive then redis.call('HSET', tk, 'has_result_archive', '1') end
    if r.status == 'SUCCEEDED' then redis.call('HSET', tk, 'progress', '1') end
    finish(r.id, r.status, now, r.worker, r.attempt, r.error_message)
    replies[#replies + 1] = ''
  end
end
return replies
"""

_RELEASE = """
-- ARGV: now, JSON list of {id, attempt, worker}: a stopping worker hands tasks back.
local now = ARGV[1]
local replies = {}
for _, r in ipairs(cjson.decode(ARGV[2])) do
  local why = fence(r.id, r.attempt, r.worker)
  if why then
    replies[#replies + 1] = why
  else
    local tk = tkey(r.id)
    redis.call('ZREM', '%(leases)s', r.id)
    redis.call('SREM', '%(worker_prefix)s' .. r.worker .. ':tasks', r.id)
    if redis.call('HGET', tk, 'cancel_requested') == '1' then
      finish(r.id, 'CANCELLED', now, r.worker, r.attempt, 'cancelled')
    else
      redis.call('HSET', tk, 'status', 'QUEUED', 'worker', '', 'last_update', now)
      history(r.id, r.attempt, 'released', r.worker, now, 'handed back by a stopping worker')
      enqueue(r.id)
    end
    replies[#replies + 1] = ''
  end
end
return replies
"""

_REAP = """
-- ARGV: now, now_ms, limit. Requeue or fail RUNNING tasks whose lease expired.
local now = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', '%(leases)s', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 'status', 'worker', 'attempt', 'retries', 'cancel_requested')
  redis.call('ZREM', '%(leases)s', id)
  if f[2] and f[2] ~= '' then
    redis.call('SREM', '%(worker_prefix)s' .. f[2] .. ':tasks', id)
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

_CANCEL = """
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

_MARK_UNSCHEDULABLE = """
-- ARGV: id, reason. Only a task that is still QUEUED gets (or loses) a reason.
if redis.call('HGET', tkey(ARGV[1]), 'status') ~= 'QUEUED' then
  redis.call('SREM', '%(constrained)s', ARGV[1])
  return 0
end
redis.call('HSET', tkey(ARGV[1]), 'unschedulable_reason', ARGV[2])
return 1
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
}


def _script(body: str) -> str:
    return _LUA_COMMON + body % _NAMES


@dataclass(frozen=True)
class WorkerCaps:
    """What a worker advertises; tasks are matched against it."""

    cpu: int
    memory_mb: int
    gpu: int
    labels: tuple[str, ...]


#: The task hash fields a lease hands to the worker.
LEASE_FIELDS = (
    "spec",
    "owner",
    "has_checkpoint",
    "name",
    "kind",
    "timeout",
    "retries",
    "priority",
    "req_cpu",
    "req_memory_mb",
    "req_gpu",
    "req_labels",
)


@dataclass(frozen=True)
class Lease:
    task_id: str
    attempt: int
    record: dict[str, str]  # the LEASE_FIELDS of the task hash

    @property
    def spec(self) -> dict[str, Any]:
        return json.loads(self.record.get("spec") or "{}")

    @property
    def owner(self) -> str:
        return self.record.get("owner", "")

    @property
    def has_checkpoint(self) -> bool:
        return self.record.get("has_checkpoint") == "1"


@dataclass(frozen=True)
class Outcome:
    """A worker's final word on one attempt."""

    task_id: str
    attempt: int
    worker: str
    status: TaskState
    result_json: str = ""
    error_message: str = ""
    has_result_archive: bool = False


@dataclass(frozen=True)
class NewTask:
    """A validated task ready to be queued."""

    owner: str
    name: str
    kind: str
    spec: dict[str, Any]
    timeout: float
    retries: int
    priority: int
    req_cpu: int = 0
    req_memory_mb: int = 0
    req_gpu: int = 0
    req_labels: tuple[str, ...] = ()

    @property
    def constrained(self) -> bool:
        return bool(self.req_cpu or self.req_memory_mb or self.req_gpu or self.req_labels)


_LEASE_FIELDS_JSON = json.dumps(LEASE_FIELDS)


def new_task_id() -> str:
    return uuid.uuid4().hex[:16]


def _now() -> tuple[str, int]:
    now = time.time()
    return f"{now:.6f}", int(now * 1000)


class TaskStore:
    """The task state machine over one Redis connection pool."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._submit = client.register_script(_script(_SUBMIT))
        self._lease = client.register_script(_script(_LEASE))
        self._heartbeat = client.register_script(_script(_HEARTBEAT))
        self._progress = client.register_script(_script(_PROGRESS))
        self._append_log = client.register_script(_script(_APPEND_LOG))
        self._mark_data = client.register_script(_script(_MARK_DATA))
        self._complete = client.register_script(_script(_COMPLETE))
        self._release = client.register_script(_script(_RELEASE))
        self._reap = client.register_script(_script(_REAP))
        self._cancel = client.register_script(_script(_CANCEL))
        self._mark_unschedulable = client.register_script(_script(_MARK_UNSCHEDULABLE))

    # -- users' side -----------------------------------------------------------------------
    def submit(self, tasks: Sequence[NewTask]) -> list[str]:
        ids = [new_task_id() for _ in tasks]
        records = []
        for task_id, task in zip(ids, tasks, strict=True):
            priority = max(-keys.PRIORITY_MAX, min(keys.PRIORITY_MAX, task.priority))
            records.append(
                {
                    "id": task_id,
                    "owner": task.owner,
                    "name": task.name,
                    "kind": task.kind,
                    "spec": json.dumps(task.spec, separators=(",", ":")),
                    "timeout": repr(float(task.timeout)),
                    "retries": task.retries,
                    "priority": priority,
                    "constrained": int(task.constrained),
                    "req_cpu": task.req_cpu,
                    "req_memory_mb": task.req_memory_mb,
                    "req_gpu": task.req_gpu,
                    "req_labels": ",".join(task.req_labels),
                }
            )
        now, now_ms = _now()
        # One script call per slice keeps any single call short for other clients.
        for start in range(0, len(records), 1000):
            chunk = json.dumps(records[start : start + 1000], separators=(",", ":"))
            self._submit(args=[now, now_ms, chunk])
        return ids

    def cancel(self, task_id: str) -> tuple[bool, str]:
        """(True, new status) or (False, why not)."""
        now, _ = _now()
        ok, detail = self._cancel(args=[task_id, now])
        return bool(ok), _text(detail)

    # -- workers' side ---------------------------------------------------------------------
    def lease(
        self,
        worker: str,
        caps: WorkerCaps,
        max_tasks: int,
        lease_seconds: float,
        max_bundles: int | None = None,
    ) -> list[Lease]:
        """Up to ``max_tasks`` tasks that fit ``caps``, of which at most ``max_bundles``
        are bundles (default: all of them may be)."""
        now, now_ms = _now()
        rows = self._lease(
            args=[
                worker,
                now,
                now_ms,
                int(lease_seconds * 1000),
                max(0, min(max_tasks, keys.LEASE_BATCH_MAX)),
                caps.cpu,
                caps.memory_mb,
                caps.gpu,
                ",".join(caps.labels),
                keys.LEASE_SCAN_LIMIT,
                _LEASE_FIELDS_JSON,
                max_tasks if max_bundles is None else max_bundles,
            ]
        )
        return [
            Lease(
                task_id=_text(r[0]),
                attempt=int(r[1]),
                record={k: _text(v) for k, v in zip(LEASE_FIELDS, r[2:], strict=True)},
            )
            for r in rows
        ]

    def heartbeat(
        self,
        worker: str,
        fields: dict[str, Any],
        summary: dict[str, Any],
        running: Iterable[str],
        lease_seconds: float,
    ) -> list[str]:
        """Record the heartbeat, renew the leases of ``running``; returns tasks to stop."""
        now, now_ms = _now()
        args = [
            worker,
            now,
            now_ms,
            int(lease_seconds * 1000),
            json.dumps(fields),
            json.dumps(summary),
            *running,
        ]
        return [_text(x) for x in self._heartbeat(args=args)]

    def report_progress(
        self,
        task_id: str,
        attempt: int,
        worker: str,
        fraction: float,
        message: str,
        lease_seconds: float,
    ) -> str:
        """'' when accepted, else why the attempt is fenced off."""
        now, now_ms = _now()
        fraction = max(0.0, min(1.0, fraction))
        return _text(
            self._progress(
                args=[
                    task_id,
                    attempt,
                    worker,
                    now,
                    now_ms,
                    int(lease_seconds * 1000),
                    repr(fraction),
                    message[:500],
                ]
            )
        )

    def append_log(self, task_id: str, attempt: int, worker: str, text: str) -> str:
        now, _ = _now()
        return _text(
            self._append_log(args=[task_id, attempt, worker, now, text, keys.TASK_LOG_MAX_CHUNKS])
        )

    def mark_data(self, task_id: str, attempt: int, worker: str, kind: str) -> str:
        field = {"result": "has_result_archive", "checkpoint": "has_checkpoint"}[kind]
        return _text(self._mark_data(args=[task_id, attempt, worker, field]))

    def complete(self, outcomes: Sequence[Outcome]) -> list[str]:
        """One reply per outcome: '' when it became the task's terminal result."""
        if not outcomes:
            return []
        now, _ = _now()
        payload = [
            {
                "id": o.task_id,
                "attempt": o.attempt,
                "worker": o.worker,
                "status": TaskState(o.status).value,
                "result_json": o.result_json,
                "error_message": o.error_message[:4000],
                "archive": o.has_result_archive,
            }
            for o in outcomes
        ]
        if any(not TaskState(o.status).terminal for o in outcomes):
            raise ValueError("an outcome must be a terminal state")
        return [_text(x) for x in self._complete(args=[now, json.dumps(payload)])]

    def release(self, refs: Sequence[tuple[str, int, str]]) -> list[str]:
        """Hand (task_id, attempt, worker) back to the queue without using up a retry."""
        if not refs:
            return []
        now, _ = _now()
        payload = [{"id": t, "attempt": a, "worker": w} for t, a, w in refs]
        return [_text(x) for x in self._release(args=[now, json.dumps(payload)])]

    # -- the reaper's side -----------------------------------------------------------------
    def reap_expired(self, limit: int = 500) -> list[tuple[str, str, str]]:
        """(task_id, 'requeued'|'failed'|'cancelled', worker) for each expired lease."""
        now, now_ms = _now()
        rows = self._reap(args=[now, now_ms, limit])
        return [(_text(r[0]), _text(r[1]), _text(r[2])) for r in rows]

    def mark_unschedulable(self, task_id: str, reason: str) -> bool:
        return bool(self._mark_unschedulable(args=[task_id, reason]))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
