"""`hivemind doctor explain TASK_ID`: why one task is not running, or why it ended as it did.

In the manner of HTCondor's ``condor_q -better-analyze``: the task's state and attempts, then a
causal chain read from the live cluster (which requirement no live worker meets, whose
heartbeat is stale and by how much, which timeout fired), then the end of its log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from doctor.cluster import WorkerRow, field_float, requirements, workers
from doctor.context import Context, Unavailable
from hivemind import keys, tuning
from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.paths import layout
from hivemind.states import TaskState
from hivemind.timeouts import TimeoutPhase, timeout_deadline, timeout_phase
from hivemind.worker_records import unschedulable_reason

#: Lines of the task's log shown.
LOG_TAIL_LINES = 20


class TaskNotFound(HivemindError):
    """No such task in Redis or in the archive."""


@dataclass
class Explanation:
    task_id: str
    #: 'redis' (the live record) or 'archive' (users.db, after the task left Redis).
    source: str
    record: dict[str, str]
    history: list[dict[str, Any]]
    #: The causal chain, most telling first.
    causes: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.record.get("status", "?")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "source": self.source,
            "record": {k: v for k, v in self.record.items() if k != "spec"},
            "history": self.history,
            "causes": self.causes,
            "log_tail": self.log_tail,
        }


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def explain(settings: Settings, task_id: str, context: Context | None = None) -> Explanation:
    ctx = context or Context(settings)
    try:
        r = ctx.redis()
    except Unavailable as missing:
        r = None
        redis_down = str(missing)
    else:
        redis_down = ""
    found = _from_redis(r, task_id) if r is not None else None
    if found is None:
        found = _from_archive(settings, task_id)
    if found is None:
        where = f"Redis ({redis_down})" if redis_down else "Redis"
        raise TaskNotFound(f"no task {task_id!r} in {where} or in the SQLite archive")
    explanation = found
    now = ctx.now()
    if r is None:
        explanation.causes.append(f"the live cluster is not readable: {redis_down}")
    else:
        explanation.causes += _causes(ctx, explanation, now)
    explanation.log_tail = _log_tail(r, settings, task_id)
    return explanation


def _from_redis(r: redis.Redis, task_id: str) -> Explanation | None:
    record = r.hgetall(keys.task_key(task_id))
    if not record:
        return None
    history = [json.loads(e) for e in r.lrange(keys.task_history_key(task_id), 0, -1)]
    return Explanation(task_id, "redis", record, history)


def _from_archive(settings: Settings, task_id: str) -> Explanation | None:
    from hivemind.userdb import UserStore

    path = layout(settings.home).users_db
    if not path.exists():
        return None
    store = UserStore(path)
    try:
        archived = store.archived_task(task_id)
    finally:
        store.close()
    if archived is None:
        return None
    record, history = archived
    return Explanation(task_id, "archive", record, history)


def _causes(ctx: Context, task: Explanation, now: float) -> list[str]:
    rows = {row.node_id: row for row in workers(ctx)}
    status = task.status
    if status == TaskState.QUEUED:
        return _why_queued(ctx, task, rows, now)
    if status == TaskState.RUNNING:
        return _why_running(ctx, task, rows, now)
    return _why_finished(task, now)


def _why_queued(
    ctx: Context, task: Explanation, rows: dict[str, WorkerRow], now: float
) -> list[str]:
    lease = ctx.settings.effective_lease_timeout
    waited = now - field_float(task.record.get("created_at"))
    causes = [f"queued {_ago(waited)} ago"]
    queue = ctx.redis().lrange(keys.TASK_QUEUE, 0, -1)
    if task.task_id in queue:
        causes.append(f"position {queue.index(task.task_id) + 1} of {len(queue)} in task_queue")
    else:
        causes.append("it is in no queue: run `hivemind doctor --only tasks.orphaned --fix`")
    live = {n: row for n, row in rows.items() if row.live(now, lease)}
    stale = [row for row in rows.values() if row.status == "online" and not row.live(now, lease)]
    for row in stale:
        causes.append(
            f"worker {row.node_id} says online but its heartbeat is {_ago(row.heartbeat_age(now))}"
            f" old, {_ago(row.heartbeat_age(now) - lease)} past the {lease:g}s lease timeout"
        )
    if not live:
        causes.append("no live worker is registered: start one with `hivemind worker`")
        return causes
    needs = requirements(task.record)
    reason = unschedulable_reason(needs, {n: row.caps for n, row in live.items()})
    if reason:
        causes.append(reason)
        return causes
    fitting = [
        row for row in live.values() if not unschedulable_reason(needs, {row.node_id: row.caps})
    ]
    busy = [row for row in fitting if len(row.tasks) >= max(1, row.caps.cpu)]
    names = ", ".join(sorted(row.node_id for row in fitting))
    causes.append(
        f"{len(fitting)} live worker(s) can run it ({names})"
        + (f"; {len(busy)} of them are busy" if busy else "")
        + "; it waits its turn (tasks ahead of it, or its owner's fair share)"
    )
    return causes


def _why_running(
    ctx: Context, task: Explanation, rows: dict[str, WorkerRow], now: float
) -> list[str]:
    record = task.record
    worker = record.get("worker", "")
    started = field_float(record.get("start_time"))
    timeout = field_float(record.get("timeout")) or ctx.settings.task_timeout
    lease = ctx.settings.effective_lease_timeout
    causes = [
        f"running attempt {record.get('attempt', '?')} on {worker or '?'} for "
        f"{_ago(now - started)} of its {timeout:g}s timeout"
    ]
    row = rows.get(worker)
    if row is None:
        causes.append(f"its worker {worker} is not registered any more: the task is orphaned")
    else:
        age = row.heartbeat_age(now)
        if not row.live(now, lease):
            causes.append(
                f"worker {worker} is {row.status}; its heartbeat is {_ago(age)} old, "
                f"{_ago(age - lease)} past the {lease:g}s lease timeout: the node pool requeues "
                "the task when its lease expires"
            )
        else:
            causes.append(f"worker {worker} is live (heartbeat {_ago(age)} ago)")
        if task.task_id not in row.tasks:
            causes.append(f"worker {worker} does not list the task among its own")
    phase = timeout_phase(now, started, timeout)
    if phase is TimeoutPhase.STOPPING:
        causes.append(
            f"it is {_ago(now - started - timeout)} past its {timeout:g}s timeout: its worker is "
            f"stopping it, else the node pool marks it TIMEOUT at "
            f"{_clock(timeout_deadline(started, timeout))} ({tuning.TIMEOUT_GRACE:g}s grace)"
        )
    elif phase is TimeoutPhase.OVERDUE:
        causes.append(
            f"it is {_ago(now - timeout_deadline(started, timeout))} past its deadline (its "
            f"{timeout:g}s timeout and the {tuning.TIMEOUT_GRACE:g}s grace), yet not TIMEOUT: "
            "the node pool's reaper is not running"
        )
    update = field_float(record.get("last_update"))
    if update:
        causes.append(f"last log or progress {_ago(now - update)} ago")
    return causes


def _why_finished(task: Explanation, now: float) -> list[str]:
    record = task.record
    status = task.status
    finished = field_float(record.get("finished_at"))
    started = field_float(record.get("start_time"))
    worker = record.get("worker") or _last(task.history, "worker")
    causes = [f"{status} {_ago(now - finished)} ago" + (f" on {worker}" if worker else "")]
    if status == TaskState.TIMEOUT:
        timeout = field_float(record.get("timeout"))
        ran = finished - started if started and finished else 0.0
        causes.append(
            f"its {timeout:g}s timeout fired after {_ago(ran)} of attempt "
            f"{record.get('attempt', '?')}"
        )
    lost = int(field_float(record.get("lost")))
    if lost:
        causes.append(
            f"its worker was lost {lost} time(s); retries allowed: {record.get('retries', '?')}"
        )
    if record.get("error_message"):
        causes.append(f"error: {record['error_message'].strip().splitlines()[-1][:300]}")
    detail = _last(task.history, "detail")
    if detail and detail not in " ".join(causes):
        causes.append(f"last event: {detail}")
    return causes


def _last(history: list[dict[str, Any]], key: str) -> str:
    for event in reversed(history):
        if event.get(key):
            return str(event[key])
    return ""


def _log_tail(r: redis.Redis | None, settings: Settings, task_id: str) -> list[str]:
    text = ""
    if r is not None:
        try:
            text = "".join(r.lrange(keys.task_log_key(task_id), -200, -1))
        except redis.RedisError:
            text = ""
    if not text:
        archived = Path(settings.home) / "data" / "logs" / f"{task_id}.log"
        try:
            text = archived.read_text(errors="replace")
        except OSError:
            text = ""
    return text.splitlines()[-LOG_TAIL_LINES:]


def history_rows(explanation: Explanation) -> list[dict[str, str]]:
    """The attempts' events as rows for a table: when, attempt, event, worker, detail."""
    rows = []
    for event in explanation.history:
        at = field_float(event.get("at"))
        rows.append(
            {
                "at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-",
                "attempt": str(event.get("attempt", "")),
                "event": str(event.get("event", "")),
                "worker": str(event.get("worker", "")),
                "detail": str(event.get("detail", "")),
            }
        )
    return rows
