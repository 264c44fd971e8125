"""HiveMind's Redis state as typed JSON: read atomically, written back atomically.

DUMP/RESTORE payloads only load into a Redis of a compatible version; a typed JSON dump
(key, type, TTL, value) loads into any Redis, which is what a backup moved to a new machine
needs. Only HiveMind's keys are read (:data:`hivemind.keys.BACKUP_KEY_PATTERNS`).

The read is one Lua script, so it sees one instant of the cluster: every task state change
is itself one script, so a task submitted during a backup is wholly in the dump or not at
all. The script blocks Redis while it runs (milliseconds per thousand keys), the price of
that guarantee.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis

from hivemind import keys
from hivemind.errors import HivemindError
from hivemind.states import TaskState
from hivemind.worker_records import summary_with_status

DUMP_FORMAT = 1
#: Values per command when writing back, so no single command is huge.
_WRITE_BATCH = 1000

_SNAPSHOT_LUA = """
local seen, out = {}, {}
for _, pattern in ipairs(ARGV) do
  for _, k in ipairs(redis.call('KEYS', pattern)) do
    if not seen[k] then
      seen[k] = true
      local t = redis.call('TYPE', k)['ok']
      local v = {}
      if t == 'string' then v = redis.call('GET', k)
      elseif t == 'hash' then v = redis.call('HGETALL', k)
      elseif t == 'list' then v = redis.call('LRANGE', k, 0, -1)
      elseif t == 'set' then v = redis.call('SMEMBERS', k)
      elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
      end
      out[#out + 1] = {k, t, redis.call('PTTL', k), v}
    end
  end
end
return out
"""


class RedisDumpError(HivemindError):
    """The Redis state could not be read, or a dump is malformed."""


@dataclass(frozen=True)
class KeyEntry:
    key: str
    type: str  # string, hash, list, set or zset
    #: Milliseconds left to live; -1 for a key without expiry.
    ttl_ms: int
    #: str; dict for a hash; list for a list or set; list of [member, score] for a zset
    #: (the score kept as Redis wrote it, so it stays exact).
    value: Any

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "type": self.type, "ttl_ms": self.ttl_ms, "value": self.value}


def _text(raw: Any) -> str:
    # surrogateescape: a value that is not UTF-8 survives the JSON round trip byte for byte.
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)


def _entry(row: list[Any]) -> KeyEntry | None:
    key, kind, ttl, raw = _text(row[0]), _text(row[1]), int(row[2]), row[3]
    value: Any
    if kind == "string":
        value = _text(raw)
    elif kind == "hash":
        items = [_text(x) for x in raw]
        value = dict(zip(items[::2], items[1::2], strict=True))
    elif kind == "list":
        value = [_text(x) for x in raw]
    elif kind == "set":
        value = sorted(_text(x) for x in raw)
    elif kind == "zset":
        items = [_text(x) for x in raw]
        value = [[m, s] for m, s in zip(items[::2], items[1::2], strict=True)]
    else:
        return None  # a type HiveMind never writes (stream …) or a key that just expired
    return KeyEntry(key, kind, ttl, value)


def snapshot(client: redis.Redis) -> list[KeyEntry]:
    """Every HiveMind key with its type, TTL and value, read in one atomic step."""
    try:
        rows = client.eval(_SNAPSHOT_LUA, 0, *keys.BACKUP_KEY_PATTERNS)
    except (redis.RedisError, OSError) as exc:
        raise RedisDumpError(f"cannot read the Redis state: {exc}") from None
    entries = [e for e in (_entry(row) for row in rows) if e is not None]
    return sorted(entries, key=lambda e: e.key)


def dumps(entries: list[KeyEntry]) -> bytes:
    body = {"format": DUMP_FORMAT, "keys": [e.to_json() for e in entries]}
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode()


def loads(data: bytes, source: str = "redis.json") -> list[KeyEntry]:
    try:
        body = json.loads(data)
        if body.get("format") != DUMP_FORMAT:
            raise RedisDumpError(
                f"{source}: dump format {body.get('format')!r}, expected {DUMP_FORMAT}"
            )
        return [KeyEntry(k["key"], k["type"], int(k["ttl_ms"]), k["value"]) for k in body["keys"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RedisDumpError(f"{source}: not a HiveMind Redis dump ({exc})") from None


def _write(pipe: redis.client.Pipeline, entry: KeyEntry) -> None:
    k, v = entry.key, entry.value
    if entry.type == "string":
        pipe.set(k, _raw(v))
    elif entry.type == "hash":
        items = [(_raw(f), _raw(x)) for f, x in v.items()]
        for i in range(0, len(items), _WRITE_BATCH):
            pipe.hset(k, mapping=dict(items[i : i + _WRITE_BATCH]))
    elif entry.type in ("list", "set"):
        command = pipe.rpush if entry.type == "list" else pipe.sadd
        for i in range(0, len(v), _WRITE_BATCH):
            command(k, *[_raw(x) for x in v[i : i + _WRITE_BATCH]])
    elif entry.type == "zset":
        for i in range(0, len(v), _WRITE_BATCH):
            args: list[bytes | str] = []
            for member, score in v[i : i + _WRITE_BATCH]:
                args += [score, _raw(member)]
            pipe.execute_command("ZADD", k, *args)
    else:
        raise RedisDumpError(f"key {k!r} has unsupported type {entry.type!r}")
    if entry.ttl_ms > 0:
        pipe.pexpire(k, entry.ttl_ms)


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def current_keys(client: redis.Redis) -> list[str]:
    found: set[str] = set()
    for pattern in keys.BACKUP_KEY_PATTERNS:
        found.update(_text(k) for k in client.scan_iter(match=pattern, count=1000))
    return sorted(found)


def replace_state(client: redis.Redis, entries: list[KeyEntry]) -> None:
    """Make HiveMind's keys exactly ``entries``, in one MULTI/EXEC: other clients see the
    old state or the new one, and a failure before EXEC leaves the old one untouched.

    Call it with the services stopped: keys written between the scan of the current keys
    and the EXEC would survive.
    """
    try:
        pipe = client.pipeline(transaction=True)
        stale = current_keys(client)
        for i in range(0, len(stale), _WRITE_BATCH):
            pipe.delete(*stale[i : i + _WRITE_BATCH])
        for entry in entries:
            _write(pipe, entry)
        pipe.execute()
    except (redis.RedisError, OSError) as exc:
        raise RedisDumpError(f"cannot write the Redis state: {exc}") from None


@dataclass(frozen=True)
class RedisCounts:
    keys: int
    tasks: int
    workers: int
    by_status: dict[str, int]
    running: list[str]


def count(entries: list[KeyEntry]) -> RedisCounts:
    """What a dump holds: task hashes (by status), workers (``worker_nodes``), keys."""
    statuses: Counter[str] = Counter()
    running: list[str] = []
    workers = 0
    for e in entries:
        if e.type == "hash" and e.key.startswith(keys.TASK_PREFIX) and e.key.count(":") == 1:
            status = e.value.get("status", "")
            statuses[status] += 1
            if status == TaskState.RUNNING:
                running.append(e.key.removeprefix(keys.TASK_PREFIX))
        elif e.key == keys.WORKER_NODES:
            workers = len(e.value)
    return RedisCounts(len(entries), sum(statuses.values()), workers, dict(statuses), running)


def workers_offline(entries: list[KeyEntry]) -> list[KeyEntry]:
    """``entries`` with every worker marked ``offline``.

    A restored worker record is history: that process does not hold the restored cluster's
    leases. Left ``online``, it would pass for a live worker until the reaper noticed its old
    heartbeat; a worker that is really alive says ``online`` again at its next heartbeat.
    """
    out = []
    for e in entries:
        if e.key == keys.WORKER_NODES and e.type == "hash":
            value = {node: _with_status(summary) for node, summary in e.value.items()}
            e = KeyEntry(e.key, e.type, e.ttl_ms, value)
        elif _is_worker_hash(e) and "status" in e.value:
            e = KeyEntry(e.key, e.type, e.ttl_ms, {**e.value, "status": "offline"})
        out.append(e)
    return out


def _is_worker_hash(e: KeyEntry) -> bool:
    return e.type == "hash" and e.key.startswith(keys.WORKER_PREFIX) and e.key.count(":") == 1


def _with_status(summary: str) -> str:
    return summary_with_status(summary, "offline")


def task_records(entries: list[KeyEntry]) -> dict[str, dict[str, str]]:
    """task id -> its hash, for every task in the dump."""
    return {
        e.key.removeprefix(keys.TASK_PREFIX): e.value
        for e in entries
        if e.type == "hash" and e.key.startswith(keys.TASK_PREFIX) and e.key.count(":") == 1
    }
