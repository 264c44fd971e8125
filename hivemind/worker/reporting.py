"""How a worker tells the node pool what its tasks did: log lines and progress in batches,
then each outcome, after that task's own logs and progress.

The lease loop carries outcomes with its next lease when that lease is due anyway
(:meth:`Reporter.to_carry`); the reporter's own thread sends the rest, and keeps whatever it
could not send until the node pool is back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from hivemind.errors import NodePoolError
from hivemind.proto import hivemind_pb2 as pb
from hivemind.worker.connection import WorkerConnection
from hivemind.worker.running import Backoff, RunningTask

log = logging.getLogger("hivemind.worker")
task_log = logging.getLogger("hivemind.task_execution")

REPORT_INTERVAL = 0.2
OUTCOMES_PER_CALL = 256

Outcome = tuple[RunningTask, pb.TaskResult]


class Reporter:
    def __init__(self, conn: WorkerConnection, on_settled: Callable[[RunningTask], None]) -> None:
        self._conn = conn
        self._on_settled = on_settled  # the node pool has the task's outcome
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue()
        self._outcomes: list[Outcome] = []  # not yet sent
        self._ready = threading.Condition()
        self._carrier_waiting = False  # the lease loop waits for an outcome to carry
        self._unsent = 0  # log lines and progress queued but not yet sent
        self.carry = False  # the node pool takes outcomes with a lease (it says so)

    # -- what tasks report (any thread) ------------------------------------------------------
    def log(self, task: RunningTask, text: str) -> None:
        with self._ready:
            self._unsent += 1
        self._queue.put(("log", (task, text)))

    def progress(self, task_id: str, attempt: int, fraction: float, message: str) -> None:
        with self._ready:
            self._unsent += 1
        self._queue.put(("progress", (task_id, attempt, fraction, message)))

    def outcome(self, task: RunningTask, result: pb.TaskResult) -> None:
        with self._ready:
            if self._carrier_waiting and not self._unsent:
                # Nothing it reported is still unsent: straight to the waiting lease loop,
                # without a detour through this reporter's thread.
                self._outcomes.append((task, result))
                self._ready.notify()
                return
        self._queue.put(("outcome", (task, result)))

    # -- the reporter's thread ---------------------------------------------------------------
    def run(self, stopped: threading.Event) -> None:
        backoff = Backoff()
        while not stopped.is_set():
            self._collect(timeout=REPORT_INTERVAL)
            if not self._ship():
                backoff.sleep(stopped)
            else:
                backoff.reset()

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for everything reported so far to be sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (not self._queue.empty() or self._outcomes):
            time.sleep(0.05)

    def _collect(self, timeout: float) -> None:
        logs: dict[tuple[str, int], list[str]] = {}
        progress: dict[tuple[str, int], tuple[float, str]] = {}
        taken = 0  # log lines and progress taken off the queue
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            kind, payload = item
            if kind == "log":
                task, text = payload  # type: ignore[misc]
                logs.setdefault((task.task_id, task.attempt), []).append(text)
                taken += 1
            elif kind == "progress":
                task_id, attempt, fraction, message = payload  # type: ignore[misc]
                progress[(task_id, attempt)] = (fraction, message)
                taken += 1
            else:  # a task's logs and progress go before its outcome, which ends it
                self._flush(logs, progress, taken)
                taken = 0
                with self._ready:
                    self._outcomes.append(payload)  # type: ignore[arg-type]
                    self._ready.notify()
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        self._flush(logs, progress, taken)

    def _flush(
        self,
        logs: dict[tuple[str, int], list[str]],
        progress: dict[tuple[str, int], tuple[float, str]],
        taken: int,
    ) -> None:
        """Send the ``taken`` items gathered in ``logs`` and ``progress``."""
        self._flush_logs(logs)
        self._flush_progress(progress)
        with self._ready:
            self._unsent -= taken

    def _flush_progress(self, progress: dict[tuple[str, int], tuple[float, str]]) -> None:
        for (task_id, attempt), (fraction, message) in progress.items():
            try:
                self._conn.progress(task_id, attempt, fraction, message)
            except NodePoolError as exc:
                log.debug("progress for %s dropped: %s", task_id, exc)
        progress.clear()

    def _flush_logs(self, logs: dict[tuple[str, int], list[str]]) -> None:
        for (task_id, attempt), pieces in list(logs.items()):
            text = "".join(pieces)
            for line in text.splitlines():
                task_log.info("[%s#%d] %s", task_id, attempt, line)
            try:
                self._conn.append_log(task_id, attempt, text)
            except NodePoolError as exc:
                log.debug("log for %s dropped: %s", task_id, exc)
        logs.clear()

    def _ship(self) -> bool:
        """Send the outcomes gathered so far, unless the lease loop is about to carry them;
        keep them if the node pool is away."""
        with self._ready:
            batch = [] if self._carrier_waiting else self._pop()
        if not batch:
            return True
        try:
            replies = self._conn.complete([result for _, result in batch])
        except NodePoolError as exc:
            log.warning("could not report %d outcomes (%s); will retry", len(batch), exc)
            self.give_back(batch)
            return False
        self.settle(batch, replies)
        return True

    # -- the lease loop's side ---------------------------------------------------------------
    def to_carry(self, wait: float) -> list[Outcome]:
        """Outcomes for the lease loop to send with its lease, after waiting up to ``wait``
        seconds for one when there is none yet."""
        if not self.carry:
            return []
        with self._ready:
            if wait > 0 and not self._outcomes:
                self._carrier_waiting = True
                self._ready.wait(wait)
                self._carrier_waiting = False
            return self._pop()

    def give_back(self, batch: list[Outcome]) -> None:
        """Outcomes whose call failed: first in line for the next one."""
        if not batch:
            return
        with self._ready:
            for task, _ in batch:
                task.reported = False
            self._outcomes[:0] = batch

    def settle(self, batch: list[Outcome], replies: Sequence[pb.FenceReply]) -> None:
        """The node pool has the outcomes (``replies`` in the same order)."""
        for (task, result), reply in zip(batch, replies, strict=True):
            if not reply.accepted:
                log.warning("outcome of %s refused: %s", result.ref.task_id, reply.reason)
            self._on_settled(task)

    def _pop(self) -> list[Outcome]:
        """Up to a call's worth of outcomes, marked as on their way (holding the lock)."""
        batch, self._outcomes = (
            self._outcomes[:OUTCOMES_PER_CALL],
            self._outcomes[OUTCOMES_PER_CALL:],
        )
        for task, _ in batch:
            task.reported = True
        return batch
