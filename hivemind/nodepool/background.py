"""The node pool's housekeeping loop: expired leases, lost workers, unschedulable tasks and
the archive of finished tasks."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid

import redis

from hivemind import keys, tuning
from hivemind.nodepool.core import NodePoolState
from hivemind.worker_records import (
    WorkerCaps,
    caps_from_summary,
    unschedulable_reason,
)

log = logging.getLogger("hivemind.nodepool")


# KEYS: the lock. ARGV: this node pool's id, ttl (ms). Takes the lock, or renews it when it
# is ours: 1 when this node pool holds it now.
_HOLD = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS: the lock. ARGV: this node pool's id. Lets go of it only if it is ours.
_LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Housekeeper:
    """The housekeeping passes. With several node pools on one Redis, only the one holding
    ``housekeeping:lock`` runs them, so a pass never runs twice at once."""

    def __init__(self, state: NodePoolState) -> None:
        self.state = state
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.holding = False
        self._hold = state.redis.register_script(_HOLD)
        self._let_go = state.redis.register_script(_LET_GO)
        self._thread = threading.Thread(target=self._run, name="housekeeper", daemon=True)
        # The archive runs beside the passes, not in them: a backlog gets archived without
        # pause while the reaper keeps its one-second beat and renews the lock on time.
        self._archiver = threading.Thread(target=self._archive_loop, name="archiver", daemon=True)
        # The last sweep of the worker summaries: when, how many there were, the live ones.
        self._swept_at = -math.inf
        self._swept_count = -1
        self._live: dict[str, WorkerCaps] = {}

    def start(self) -> None:
        self._thread.start()
        self._archiver.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        if self._archiver.is_alive():
            self._archiver.join(max(0.0, deadline - time.monotonic()))
        if self.holding:
            with contextlib.suppress(redis.RedisError):
                self._let_go(keys=[keys.HOUSEKEEPING_LOCK], args=[self.instance])
            self.holding = False

    def hold_lock(self) -> bool:
        """Take or renew the housekeeping lock; True while this node pool holds it."""
        held = bool(
            self._hold(
                keys=[keys.HOUSEKEEPING_LOCK], args=[self.instance, tuning.HOUSEKEEPING_LOCK_MS]
            )
        )
        if held != self.holding:
            log.info("housekeeping %s", "taken over here" if held else "done by another node pool")
            self.holding = held
        return held

    def _run(self) -> None:
        while not self.state.stopping.wait(tuning.REAPER_INTERVAL):
            try:
                if self.hold_lock():
                    self.run_once()
            except redis.RedisError as exc:
                log.warning("housekeeping skipped: redis: %s", exc)
            except Exception:
                log.exception("housekeeping pass failed")

    def _archive_loop(self) -> None:
        """Archive while this node pool holds the lock: pass after pass while tasks wait,
        otherwise once a second."""
        pause = tuning.REAPER_INTERVAL
        while not self.state.stopping.wait(pause):
            pause = tuning.REAPER_INTERVAL
            if not self.holding:
                continue
            try:
                if self.archive_finished():
                    pause = tuning.ARCHIVE_PAUSE
            except redis.RedisError as exc:
                log.warning("archive skipped: redis: %s", exc)
            except Exception:
                log.exception("archive pass failed")

    def run_once(self) -> None:
        """One housekeeping pass: expired leases, lost workers, unschedulable tasks (the
        archive runs in its own loop, :meth:`archive_finished`)."""
        self.reap_leases()
        self.check_schedulability(self.live_workers())

    def live_workers(self) -> dict[str, WorkerCaps]:
        """The live workers' capabilities, from a sweep of every summary (which also marks
        the silent ones lost) at most once per heartbeat interval, or sooner when a worker
        came or went: with thousands of workers the sweep is the pass's largest cost."""
        now = time.monotonic()
        period = max(tuning.REAPER_INTERVAL, self.state.settings.heartbeat_interval)
        count = int(self.state.redis.hlen(keys.WORKER_NODES))
        if now - self._swept_at >= period or count != self._swept_count:
            self._live = self.mark_lost_workers()
            self._swept_at, self._swept_count = now, count
        return self._live

    def reap_leases(self) -> None:
        metrics = self.state.metrics
        reaped = self.state.tasks.reap_expired()
        for task_id, action, worker in reaped:
            log.warning("task %s %s: lease expired on worker %s", task_id, action, worker)
            metrics.lease_expiries.labels(action).inc()
            if action == "requeued":
                metrics.requeues.labels("lease_expired").inc()
            else:  # no retries left, or cancelled meanwhile: it ended here
                metrics.tasks_finished.labels(action.upper()).inc()
        for task_id, worker in self.state.tasks.reap_timeouts():
            log.warning("task %s TIMEOUT: worker %s kept it past its timeout", task_id, worker)
            reaped.append((task_id, "timeout", worker))
            metrics.lease_expiries.labels("timeout").inc()
            metrics.tasks_finished.labels("TIMEOUT").inc()
        if reaped:
            self.state.queued.notify()
            self.state.finished.notify([task_id for task_id, _, _ in reaped])

    def mark_lost_workers(self) -> dict[str, WorkerCaps]:
        """Mark workers whose heartbeat stopped; returns the capabilities of the live ones.

        Reads only the ``worker_nodes`` summaries (one command, whatever the worker count):
        every heartbeat refreshes them with the status, heartbeat time and resources.
        """
        records = self.state.worker_records
        now = time.time()
        lost_after = tuning.WORKER_LOST_AFTER_INTERVALS * self.state.settings.heartbeat_interval
        live: dict[str, WorkerCaps] = {}
        for node_id, summary in records.summaries().items():
            age = now - float(summary.get("last_heartbeat") or 0)
            status = summary.get("status")
            if status == "online" and age <= lost_after:
                live[node_id] = caps_from_summary(summary)
            elif status == "online":
                # Checked again inside Redis: a heartbeat since this read keeps it online.
                if records.mark_lost(node_id, now - lost_after):
                    log.warning("worker %s lost: no heartbeat for %.0f s", node_id, age)
            elif age > tuning.WORKER_FORGET_AFTER:
                records.forget(node_id, now - tuning.WORKER_FORGET_AFTER)
        return live

    def check_schedulability(self, live: dict[str, WorkerCaps]) -> None:
        r = self.state.redis
        fields = (
            "status",
            "req_cpu",
            "req_memory_mb",
            "req_gpu",
            "req_labels",
            "unschedulable_reason",
        )
        task_ids = list(r.sscan_iter(keys.TASKS_CONSTRAINED, count=500))[:2000]
        pipe = r.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(keys.task_key(task_id), fields)
        for task_id, values in zip(task_ids, pipe.execute(), strict=True):
            record = dict(zip(fields, values, strict=True))
            requirements = {
                "cpu": record["req_cpu"],
                "memory_mb": record["req_memory_mb"],
                "gpu": record["req_gpu"],
                "labels": [x for x in (record["req_labels"] or "").split(",") if x],
            }
            reason = unschedulable_reason(requirements, live)
            if reason != (record["unschedulable_reason"] or ""):
                self.state.tasks.mark_unschedulable(task_id, reason)

    def archive_finished(self, limit: int | None = None) -> int:
        """Copy finished tasks to SQLite and their logs to disk, then let Redis expire them;
        returns how many. Stops when none wait, after ``limit`` tasks, or after
        ``ARCHIVE_PASS_SECONDS``, so that the archiver looks at the lock again.

        A task leaves ``tasks:archive_pending`` only after its archive is committed, so a
        crash in between archives it again (an idempotent upsert), never loses it. The work
        goes in slices of ``ARCHIVE_SLICE`` tasks with a pause between them: the slices are
        CPU work in the node pool's own process, and calls in flight wait for it.
        """
        deadline = time.monotonic() + tuning.ARCHIVE_PASS_SECONDS
        archived = 0
        while limit is None or archived < limit:
            wanted = (
                tuning.ARCHIVE_SLICE
                if limit is None
                else min(tuning.ARCHIVE_SLICE, limit - archived)
            )
            count = self._archive_slice(wanted)
            archived += count
            if count < wanted or time.monotonic() >= deadline:
                break
            if self.state.stopping.wait(tuning.ARCHIVE_PAUSE):
                break
        return archived

    def _archive_slice(self, limit: int) -> int:
        finished = self.state.tasks.to_archive(limit)
        archived = []
        for task in finished:
            if task.record:
                archived.append((task.record, task.history))
                if task.log:
                    self.state.blobs.write_log(task.task_id, "".join(task.log))
        self.state.users.archive_tasks(archived)
        retention = int(self.state.settings.task_retention)
        self.state.tasks.archived([task.task_id for task in finished], retention)
        return len(finished)
