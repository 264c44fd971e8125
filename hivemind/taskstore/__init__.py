"""Every task state change, each one atomic: a Lua script run inside Redis.

A task moves QUEUED -> RUNNING -> one terminal state (SUCCEEDED, FAILED, CANCELLED, TIMEOUT),
and back to QUEUED only when its worker is lost (lease expired) or hands it back. Each lease
increments ``attempt``; every write from a worker names the attempt it belongs to, and a
write whose attempt is no longer current is refused. That fence is what gives each task
exactly one terminal result, however late a lost worker's answer arrives.

Nothing outside this package writes ``status``, ``attempt`` or the queue keys; the scripts
themselves are in :mod:`hivemind.taskstore.scripts`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from hivemind import tuning
from hivemind.states import TaskState
from hivemind.taskstore import scripts
from hivemind.taskstore.lua import LuaScript, ScriptConnections
from hivemind.worker_records import WorkerCaps  # its owner; still importable from here

log = logging.getLogger(__name__)

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
class LeaseRound:
    leases: list[Lease]
    #: Nothing at all was left queued (for any worker) when the round ran.
    queue_empty: bool


@dataclass(frozen=True)
class LeaseAsk:
    """What one lease asks for: up to ``max_tasks`` tasks that fit ``caps``, of which at most
    ``max_bundles`` are bundles (None: all of them may be)."""

    worker: str
    caps: WorkerCaps
    max_tasks: int
    lease_seconds: float
    max_bundles: int | None = None


@dataclass(frozen=True)
class Completion:
    """What became of one outcome: refused (and why), or the finished task's hash."""

    refused: str
    record: dict[str, str] | None


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
class ToArchive:
    """A finished task as the archive keeps it."""

    task_id: str
    record: dict[str, str]
    history: list[str]  # events as JSON text
    log: list[str]  # the log chunks


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
    """The task state machine on one Redis; its scripts run on connections of their own."""

    def __init__(
        self,
        client: redis.Redis,
        observe: Callable[[str, float], None] | None = None,
        durable: tuple[int, int] | None = None,
    ) -> None:
        """``observe(script, seconds)``: called after each script call (for metrics).
        ``durable``: ``(replicas, ms)`` that submits and completions wait for
        (:func:`hivemind.redis_client.replica_wait`)."""
        self.redis = client
        self._connections = connections = ScriptConnections(client)
        #: Durable writes whose WAIT timed out (each then retried or refused).
        self.unreplicated_writes = 0

        # Each script by its name in the scripts module, lower case (SUBMIT -> submit).
        names = {id(v): k.lower() for k, v in vars(scripts).items() if k.isupper()}

        def script(body: str, must_survive: bool = False) -> LuaScript:
            timed = None if observe is None else functools.partial(observe, names[id(body)])
            if not must_survive or durable is None:
                return LuaScript(connections, scripts.load(body), timed)
            return LuaScript(connections, scripts.load(body), timed, durable, self._unreplicated)

        self._submit = script(scripts.SUBMIT, must_survive=True)
        self._lease = script(scripts.LEASE)
        self._submit_and_lease = script(scripts.SUBMIT_AND_LEASE, must_survive=True)
        self._heartbeat = script(scripts.HEARTBEAT)
        self._progress = script(scripts.PROGRESS)
        self._append_log = script(scripts.APPEND_LOG)
        self._mark_data = script(scripts.MARK_DATA)
        self._complete = script(scripts.COMPLETE, must_survive=True)
        self._release = script(scripts.RELEASE)
        self._reap = script(scripts.REAP)
        self._repair_queue_entry = script(scripts.REPAIR_QUEUE_ENTRY)
        self._reset_worker = script(scripts.RESET_WORKER)
        self._cancel = script(scripts.CANCEL)
        self._reap_timeouts = script(scripts.REAP_TIMEOUTS)
        self._mark_unschedulable = script(scripts.MARK_UNSCHEDULABLE)
        self._requeue_restored = script(scripts.REQUEUE_RESTORED)
        self._archive_batch = script(scripts.ARCHIVE_BATCH)
        self._archived = script(scripts.ARCHIVED)
        self._ended_among = script(scripts.ENDED_AMONG)

    def close(self) -> None:
        self._connections.close()

    def _unreplicated(self, acked: int) -> None:
        self.unreplicated_writes += 1
        if self.unreplicated_writes == 1 or self.unreplicated_writes % 1000 == 0:
            log.warning(
                "no replica confirmed a write in time (%d acknowledged; %d so far): it is "
                "retried, and refused if no replica takes it",
                acked,
                self.unreplicated_writes,
            )

    # -- users' side -----------------------------------------------------------------------
    def submit(self, tasks: Sequence[NewTask]) -> list[str]:
        ids, chunks = self._new_records(tasks)
        now, now_ms = _now()
        for chunk in chunks:
            self._submit(args=[now, now_ms, chunk])
        return ids

    def ended_among(
        self, task_ids: Sequence[str], owner: str | None
    ) -> tuple[list[str], list[str]]:
        """Of ``task_ids``: those that have ended (or are gone from Redis, so archived), and
        of the rest those not owned by ``owner`` (None: an admin's view, nothing is foreign).
        One script call, however many ids."""
        if not task_ids:
            return [], []
        ended, foreign = self._ended_among(args=[owner or "", *task_ids])
        return [_text(i) for i in ended], [_text(i) for i in foreign]

    def submit_and_lease(
        self, tasks: Sequence[NewTask], ask: LeaseAsk
    ) -> tuple[list[str], LeaseRound]:
        """:meth:`submit`, then a lease for ``ask``: for a worker that waits for work, in the
        same round trip as the first slice of tasks."""
        ids, chunks = self._new_records(tasks)
        first, *rest = chunks or ["[]"]
        now, now_ms = _now()
        reply = self._submit_and_lease(args=[now, now_ms, first, *self._lease_args(ask)])
        for chunk in rest:
            self._submit(args=[now, now_ms, chunk])
        return ids, self._lease_reply(reply)

    def _new_records(self, tasks: Sequence[NewTask]) -> tuple[list[str], list[str]]:
        """New task ids, and their hashes as JSON in slices of at most 1,000 tasks: one
        script call per slice keeps any single call short for other clients."""
        ids = [new_task_id() for _ in tasks]
        records = []
        for task_id, task in zip(ids, tasks, strict=True):
            priority = max(-tuning.PRIORITY_MAX, min(tuning.PRIORITY_MAX, task.priority))
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
        chunks = [
            json.dumps(records[start : start + 1000], separators=(",", ":"))
            for start in range(0, len(records), 1000)
        ]
        return ids, chunks

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
        return self.lease_for(LeaseAsk(worker, caps, max_tasks, lease_seconds, max_bundles)).leases

    def lease_for(self, ask: LeaseAsk) -> LeaseRound:
        """Leases for what ``ask`` asks, and whether the queue was left empty."""
        return self._lease_reply(self._lease(args=self._lease_args(ask)))

    @staticmethod
    def _lease_args(ask: LeaseAsk) -> list[Any]:
        now, now_ms = _now()
        return [
            ask.worker,
            now,
            now_ms,
            int(ask.lease_seconds * 1000),
            max(0, min(ask.max_tasks, tuning.LEASE_BATCH_MAX)),
            ask.caps.cpu,
            ask.caps.memory_mb,
            ask.caps.gpu,
            ",".join(ask.caps.labels),
            tuning.LEASE_SCAN_LIMIT,
            _LEASE_FIELDS_JSON,
            ask.max_tasks if ask.max_bundles is None else ask.max_bundles,
            int(tuning.TIMEOUT_GRACE * 1000),
        ]

    @staticmethod
    def _lease_reply(reply: list[Any]) -> LeaseRound:
        queue_empty, *rows = reply
        leases = [
            Lease(
                task_id=_text(r[0]),
                attempt=int(r[1]),
                record={k: _text(v) for k, v in zip(LEASE_FIELDS, r[2:], strict=True)},
            )
            for r in rows
        ]
        return LeaseRound(leases, bool(queue_empty))

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
            self._append_log(args=[task_id, attempt, worker, now, text, tuning.TASK_LOG_MAX_CHUNKS])
        )

    def mark_data(self, task_id: str, attempt: int, worker: str, kind: str) -> str:
        field = {"result": "has_result_archive", "checkpoint": "has_checkpoint"}[kind]
        return _text(self._mark_data(args=[task_id, attempt, worker, field]))

    def complete(self, outcomes: Sequence[Outcome]) -> list[str]:
        """One reply per outcome: '' when it became the task's terminal result."""
        return [c.refused for c in self.complete_records(outcomes)]

    def complete_records(self, outcomes: Sequence[Outcome]) -> list[Completion]:
        """:meth:`complete`, with the hash of each task it finished."""
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
        return [
            Completion(_text(x), None) if isinstance(x, (str, bytes)) else Completion("", _pairs(x))
            for x in self._complete(args=[now, json.dumps(payload)])
        ]

    def release(
        self,
        refs: Sequence[tuple[str, int, str]],
        event: str = "released",
        detail: str = "handed back by a stopping worker",
    ) -> list[str]:
        """Hand (task_id, attempt, worker) back to the queue without using up a retry.

        The attempt fences the worker: whatever it still sends for that attempt is refused.
        Returns, per task, '' or why it was left alone (it is no longer that attempt)."""
        if not refs:
            return []
        now, _ = _now()
        payload = [{"id": t, "attempt": a, "worker": w} for t, a, w in refs]
        return [_text(x) for x in self._release(args=[now, json.dumps(payload), event, detail])]

    def repair_queue_entry(self, task_id: str) -> str:
        """'dropped' (a queue entry without a task), 'requeued' (a QUEUED task in no queue)
        or '' (nothing wrong)."""
        now, _ = _now()
        return _text(self._repair_queue_entry(args=[task_id, now]))

    def reset_worker(self, node_id: str, stale_before: float, detail: str) -> int | None:
        """Requeue the tasks of a worker silent since ``stale_before`` and mark it lost.

        Returns how many tasks went back to the queue, or None when its heartbeat came back
        meanwhile (then nothing is touched)."""
        now, _ = _now()
        count = int(self._reset_worker(args=[node_id, now, repr(stale_before), detail]))
        return None if count < 0 else count

    # -- the reaper's side -----------------------------------------------------------------
    def reap_expired(self, limit: int = 500) -> list[tuple[str, str, str]]:
        """(task_id, 'requeued'|'failed'|'cancelled', worker) for each expired lease."""
        now, now_ms = _now()
        rows = self._reap(args=[now, now_ms, limit])
        return [(_text(r[0]), _text(r[1]), _text(r[2])) for r in rows]

    def reap_timeouts(self, limit: int = 500) -> list[tuple[str, str]]:
        """(task_id, worker) for each RUNNING task marked TIMEOUT because no result came
        within TIMEOUT_GRACE of its timeout."""
        now, now_ms = _now()
        rows = self._reap_timeouts(args=[now, now_ms, limit, f"{tuning.TIMEOUT_GRACE:g}"])
        return [(_text(r[0]), _text(r[1])) for r in rows]

    def mark_unschedulable(self, task_id: str, reason: str) -> bool:
        return bool(self._mark_unschedulable(args=[task_id, reason]))

    def to_archive(self, limit: int) -> list[ToArchive]:
        """Up to ``limit`` finished tasks that wait for the archive (see :meth:`archived`);
        a task whose hash is gone from Redis comes with an empty record."""
        return [
            ToArchive(
                _text(task_id),
                _pairs(record),
                [_text(x) for x in history],
                [_text(x) for x in log],
            )
            for task_id, record, history, log in self._archive_batch(args=[limit])
        ]

    def archived(self, task_ids: Sequence[str], retention: int) -> None:
        """The tasks are in the archive: no longer pending, and gone from Redis after
        ``retention`` seconds."""
        if task_ids:
            self._archived(args=[retention, *task_ids])

    # -- restore's side --------------------------------------------------------------------
    def requeue_restored(self, task_ids: Sequence[str]) -> list[str]:
        """Put tasks that were RUNNING in a restored backup back in the queue; returns the
        ids requeued (a RUNNING task with a cancel request becomes CANCELLED instead)."""
        if not task_ids:
            return []
        now, _ = _now()
        return [_text(x) for x in self._requeue_restored(args=[now, json.dumps(list(task_ids))])]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A hash from the flat field, value list that HGETALL gives a script (all strings, or
    all bytes from a client that does not decode). Hot: every outcome's waiters get one."""
    if flat and isinstance(flat[0], bytes):
        flat = [x.decode() for x in flat]
    return dict(zip(flat[::2], flat[1::2], strict=True))
