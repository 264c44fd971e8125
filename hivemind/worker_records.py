"""Worker records: the one owner of what Redis says about each worker.

A worker has two records that must agree: its hash ``worker:<id>`` (status, heartbeat,
resources, metrics) and its JSON summary in the ``worker_nodes`` hash (what the housekeeper
reads in one command, whatever the worker count). Every status write changes both in one Lua
script, so no reader ever sees them disagree:

- the heartbeat and the operator's reset run inside the task store's own scripts (one
  EVALSHA per heartbeat, as before), through the helpers in :data:`LUA_HELPERS`;
- going lost, offline and being forgotten run the scripts of :class:`WorkerRecords`.

This module sits below the node pool, the task store and the doctor: it imports none of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from hivemind import keys


@dataclass(frozen=True)
class WorkerCaps:
    """What a worker advertises; tasks are matched against it."""

    cpu: int
    memory_mb: int
    gpu: int
    labels: tuple[str, ...]


# -- the record format -------------------------------------------------------------------------
def caps_from_record(record: dict[str, str]) -> WorkerCaps:
    """The capabilities in a ``worker:<id>`` hash."""
    return WorkerCaps(
        cpu=int(record.get("cpu") or 0),
        memory_mb=int(record.get("memory_mb") or 0),
        gpu=int(record.get("gpu") or 0),
        labels=tuple(x for x in (record.get("labels") or "").split(",") if x),
    )


def record_fields(caps: WorkerCaps, **extra: object) -> dict[str, object]:
    """The ``worker:<id>`` fields a registration writes: the capabilities, then ``extra``."""
    return {
        "cpu": caps.cpu,
        "memory_mb": caps.memory_mb,
        "gpu": caps.gpu,
        "labels": ",".join(caps.labels),
        **extra,
    }


def allowed_modules_of(record: dict[str, str]) -> tuple[str, ...] | None:
    """The modules a worker runs functions of (its ``--allow``); None for a worker that did
    not say (one older than the field), whose allow list is unknown."""
    text = record.get("allowed_modules")
    if text is None:
        return None
    return tuple(x for x in text.split(",") if x)


def heartbeat_fields(metrics: dict[str, float], running: int) -> dict[str, object]:
    """The ``worker:<id>`` fields a heartbeat writes (besides status and last_heartbeat)."""
    return {"metrics": json.dumps(metrics), "running": running}


def worker_summary(
    caps: WorkerCaps, status: str, running: int, **extra: object
) -> dict[str, object]:
    """The JSON a worker has in ``worker_nodes``: what the housekeeper and `redis-cli` read."""
    return {
        "status": status,
        "last_heartbeat": round(time.time(), 3),
        "cpu": caps.cpu,
        "memory_mb": caps.memory_mb,
        "gpu": caps.gpu,
        "labels": list(caps.labels),
        "running": running,
        **extra,
    }


def parse_summary(text: str | bytes | None) -> dict[str, Any]:
    """A ``worker_nodes`` value as a dict ({} when missing or not JSON)."""
    try:
        summary = json.loads(text or "{}")
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}


def summary_with_status(text: str, status: str) -> str:
    """A ``worker_nodes`` value with ``status`` set (kept as it is when not a JSON object);
    for rewriting records outside Redis, as a restore does."""
    try:
        summary = json.loads(text)
    except ValueError:
        return text
    if not isinstance(summary, dict):
        return text
    return json.dumps({**summary, "status": status})


def caps_from_summary(summary: dict[str, Any]) -> WorkerCaps:
    """The reverse of :func:`worker_summary`, for what matching needs."""
    labels = summary.get("labels")
    return WorkerCaps(
        cpu=int(summary.get("cpu") or 0),
        memory_mb=int(summary.get("memory_mb") or 0),
        gpu=int(summary.get("gpu") or 0),
        labels=tuple(str(x) for x in labels) if isinstance(labels, list) else (),
    )


def unschedulable_reason(requirements: dict[str, Any], workers: dict[str, WorkerCaps]) -> str:
    """Why no worker in ``workers`` can run a task with these requirements ('' if one can)."""
    need_cpu = int(requirements.get("cpu") or 0)
    need_mem = int(requirements.get("memory_mb") or 0)
    need_gpu = int(requirements.get("gpu") or 0)
    need_labels = set(requirements.get("labels") or ())
    if not workers:
        return "no live worker is registered"
    best_id, best_missing = "", []
    for node_id, caps in sorted(workers.items()):
        missing = []
        if need_cpu > caps.cpu:
            missing.append(f"cpu {need_cpu} > {caps.cpu}")
        if need_mem > caps.memory_mb:
            missing.append(f"memory_mb {need_mem} > {caps.memory_mb}")
        if need_gpu > caps.gpu:
            missing.append(f"gpu {need_gpu} > {caps.gpu}")
        lacking = sorted(need_labels - set(caps.labels))
        if lacking:
            missing.append("labels " + ",".join(lacking) + " not advertised")
        if not missing:
            return ""
        if not best_id or len(missing) < len(best_missing):
            best_id, best_missing = node_id, missing
    return f"no live worker meets the requirements; closest is {best_id}: " + "; ".join(
        best_missing
    )


# -- the writes --------------------------------------------------------------------------------
# Lua functions every worker write goes through; the task store prepends them to its scripts.
# Each takes the record's key ``wk`` and the ``worker_nodes`` key ``nodes`` from its caller
# (KEYS here, key names from hivemind.keys in the task store). Redis' cjson encodes an empty
# list as {}: ``wr_encode`` puts the labels back as [] so the JSON keeps its shape.
LUA_HELPERS = """
local function wr_encode(summary)
  return (string.gsub(cjson.encode(summary), '"labels":{}', '"labels":[]'))
end
local function wr_summary(nodes, node)
  local ok, summary = pcall(cjson.decode, redis.call('HGET', nodes, node) or '')
  if ok and type(summary) == 'table' then return summary end
  return {}
end
-- Set ``status`` in both records, creating neither: 0 (nothing written) for a forgotten
-- worker, so a late write cannot bring back half a record.
local function set_worker_status(wk, nodes, node, status)
  local has_record = redis.call('EXISTS', wk) == 1
  local has_summary = redis.call('HEXISTS', nodes, node) == 1
  if has_record then redis.call('HSET', wk, 'status', status) end
  if has_summary or has_record then
    local summary = wr_summary(nodes, node)
    summary.status = status
    redis.call('HSET', nodes, node, wr_encode(summary))
  end
  return (has_record or has_summary) and 1 or 0
end
-- A registration or heartbeat: online, with its fields (JSON object) and its summary (JSON).
local function worker_heartbeat(wk, nodes, node, now, fields_json, summary_json)
  local fields = {}
  for k, v in pairs(cjson.decode(fields_json)) do
    fields[#fields + 1] = k
    fields[#fields + 1] = tostring(v)
  end
  if redis.call('EXISTS', wk) == 0 and redis.call('HEXISTS', nodes, node) == 0 then
    -- A heartbeat after the worker was forgotten: its record comes back whole, with the
    -- capabilities of its summary, not as a hash of metrics alone.
    local s = cjson.decode(summary_json)
    local labels = type(s.labels) == 'table' and table.concat(s.labels, ',') or ''
    redis.call('HSET', wk, 'cpu', tostring(s.cpu or 0), 'memory_mb', tostring(s.memory_mb or 0),
               'gpu', tostring(s.gpu or 0), 'labels', labels)
  end
  redis.call('HSET', wk, 'status', 'online', 'last_heartbeat', now, unpack(fields))
  redis.call('HSET', nodes, node, summary_json)
end
"""

# KEYS: worker:<id>, worker_nodes. ARGV: node id, silent since (s). Marks an online worker
# lost only if its heartbeat (by its summary, as the housekeeper read it) is still older than
# ``silent since``: one that beat meanwhile stays online. 1 when marked.
_MARK_LOST = """
local wk, nodes, node = KEYS[1], KEYS[2], ARGV[1]
local summary = wr_summary(nodes, node)
if summary.status ~= 'online' or (tonumber(summary.last_heartbeat) or 0) >= tonumber(ARGV[2])
then return 0 end
return set_worker_status(wk, nodes, node, 'lost')
"""

# KEYS: worker:<id>, worker_nodes. ARGV: node id, status.
_SET_STATUS = """
return set_worker_status(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
"""

# KEYS: worker:<id>, worker_nodes. ARGV: node id, now. A deregistration: offline, with a
# summary rebuilt from the record (no tasks running). 0 for a worker without a record.
_GO_OFFLINE = """
local wk, nodes, node = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', wk) == 0 then return 0 end
local f = redis.call('HMGET', wk, 'cpu', 'memory_mb', 'gpu', 'labels')
local labels = {}
for label in string.gmatch(f[4] or '', '[^,]+') do labels[#labels + 1] = label end
redis.call('HSET', wk, 'status', 'offline')
redis.call('HSET', nodes, node, wr_encode({
  status = 'offline', last_heartbeat = tonumber(ARGV[2]), cpu = tonumber(f[1]) or 0,
  memory_mb = tonumber(f[2]) or 0, gpu = tonumber(f[3]) or 0, labels = labels, running = 0}))
return 1
"""

# KEYS: worker:<id>, worker_nodes. ARGV: node id, silent since (s). Forgets a worker that is
# not online and has not beat since ``silent since`` (by its summary, as the housekeeper
# read it): both records go together. 1 when forgotten.
_FORGET = """
local wk, nodes, node = KEYS[1], KEYS[2], ARGV[1]
local summary = wr_summary(nodes, node)
if summary.status == 'online' or (tonumber(summary.last_heartbeat) or 0) >= tonumber(ARGV[2])
then return 0 end
redis.call('HDEL', nodes, node)
redis.call('DEL', wk)
return 1
"""


class WorkerRecords:
    """The worker status writes outside the task store's scripts, each one atomic."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        # redis-py's Script (EVALSHA, loading on NOSCRIPT): these calls are rare, unlike the
        # task store's hot path, and its own loader would make the two modules import each
        # other.
        self._mark_lost = client.register_script(LUA_HELPERS + _MARK_LOST)
        self._set_status = client.register_script(LUA_HELPERS + _SET_STATUS)
        self._go_offline = client.register_script(LUA_HELPERS + _GO_OFFLINE)
        self._forget = client.register_script(LUA_HELPERS + _FORGET)

    @staticmethod
    def _keys(node_id: str) -> list[str]:
        return [keys.worker_key(node_id), keys.WORKER_NODES]

    def summaries(self) -> dict[str, dict[str, Any]]:
        """Every worker's summary from ``worker_nodes`` (one command)."""
        return {
            str(node_id): parse_summary(text)
            for node_id, text in self.redis.hgetall(keys.WORKER_NODES).items()
        }

    def live_allow_lists(self) -> dict[str, tuple[str, ...] | None]:
        """Each online worker's ``--allow`` modules (None: it did not say); two commands."""
        online = [n for n, s in self.summaries().items() if s.get("status") == "online"]
        pipe = self.redis.pipeline(transaction=False)
        for node_id in online:
            pipe.hget(keys.worker_key(node_id), "allowed_modules")
        replies = pipe.execute() if online else []
        return {
            node_id: allowed_modules_of({} if text is None else {"allowed_modules": str(text)})
            for node_id, text in zip(online, replies, strict=True)
        }

    def set_status(self, node_id: str, status: str) -> bool:
        """Set ``status`` in both records; False (nothing written) for an unknown worker."""
        return bool(self._set_status(keys=self._keys(node_id), args=[node_id, status]))

    def mark_lost(self, node_id: str, silent_since: float) -> bool:
        """Mark an online worker lost unless it has beat since ``silent_since``."""
        args = [node_id, repr(silent_since)]
        return bool(self._mark_lost(keys=self._keys(node_id), args=args))

    def go_offline(self, node_id: str) -> bool:
        """A deregistered worker: offline, no tasks running. False for an unknown worker."""
        args = [node_id, repr(round(time.time(), 3))]
        return bool(self._go_offline(keys=self._keys(node_id), args=args))

    def forget(self, node_id: str, silent_since: float) -> bool:
        """Drop both records of a worker not online and silent since ``silent_since``."""
        args = [node_id, repr(silent_since)]
        return bool(self._forget(keys=self._keys(node_id), args=args))
