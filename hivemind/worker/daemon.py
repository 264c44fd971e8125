"""`hivemind worker`: register, heartbeat, lease, run, report; survive the node pool's restarts.

Threads: the lease loop (long polls for work while a slot is free, and carries the outcomes
of quick tasks with its next lease), the heartbeat loop (every HEARTBEAT_INTERVAL, every half
second while tasks run so that a cancel lands fast), the reporter (ships logs, progress and
the outcomes no lease carries, in batches, and keeps whatever it could not send until the
node pool is back), and one runner thread per bundle task. Function tasks go to the warm
process pool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psutil

from hivemind import __version__, keys
from hivemind.config import Settings
from hivemind.errors import NodePoolError
from hivemind.logs import configure_logging, rotating_handler
from hivemind.paths import layout
from hivemind.proto import hivemind_pb2 as pb
from hivemind.worker.connection import WorkerConnection
from hivemind.worker.execution import BundleRun, RunOutcome, run_bundle
from hivemind.worker.functions import FunctionCall, FunctionOutcome, FunctionPool

log = logging.getLogger("hivemind.worker")
task_log = logging.getLogger("hivemind.task_execution")

OUTCOME_CODES = {
    "succeeded": pb.SUCCEEDED,
    "failed": pb.FAILED,
    "timeout": pb.TIMEOUT,
    "cancelled": pb.CANCELLED,
}
LEASE_WAIT = 10.0
BACKOFF_START, BACKOFF_MAX = 0.2, 10.0
BUSY_HEARTBEAT = 0.5
REPORT_INTERVAL = 0.2
OUTCOMES_PER_CALL = 256


@dataclass
class WorkerOptions:
    node_id: str
    token: str
    allowed_modules: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    gpu: int = 0
    capacity: int = 0


@dataclass
class RunningTask:
    task_id: str
    attempt: int
    kind: int
    name: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    executing: bool = False  # holds one of the MAX_CONCURRENT_TASKS slots
    handed_back: bool = False  # stopped by a shutdown: released, not reported
    reported: bool = False  # its outcome is on its way to the node pool


class Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_START

    def sleep(self, stop: threading.Event) -> None:
        stop.wait(self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX)

    def reset(self) -> None:
        self.delay = BACKOFF_START


class Worker:
    def __init__(self, settings: Settings, options: WorkerOptions) -> None:
        self.settings = settings
        self.options = options
        self.home = layout(settings.home).ensure()
        self.capacity = options.capacity or settings.effective_max_concurrent_tasks
        self.conn = WorkerConnection(settings.client_address, options.node_id, options.token)
        self.work_root = self.home.worker_work / options.node_id
        self.work_root.mkdir(parents=True, exist_ok=True)
        # Held tasks, running or finished-but-unreported: their leases are renewed.
        self.running: dict[str, RunningTask] = {}
        self._lock = threading.Lock()
        # Executing tasks; a slot frees when a task finishes, before its outcome is sent, so
        # the next lease does not wait for the report round trip.
        self._busy = 0
        self._slots = threading.Condition()
        # Function tasks leased ahead, waiting for a slot: one lease and one report round trip
        # then serve many small tasks (the idea of Celery's prefetch multiplier).
        # Prefetch only about PREFETCH_WORK_SECONDS of work: long tasks held here would wait
        # while another worker idles. Starts at none; learns from each finished call.
        self._mean_call_seconds = math.inf
        self._waiting: deque[tuple[RunningTask, pb.LeasedTask]] = deque()
        self.stop_leasing = threading.Event()
        self.stopped = threading.Event()
        self.connected = threading.Event()
        self._reports: queue.Queue[tuple[str, object]] = queue.Queue()
        # Outcomes not yet sent. The lease loop carries them with its next lease when that is
        # due anyway; the reporter sends the rest on their own.
        self._outcomes: list[tuple[RunningTask, pb.TaskResult]] = []
        self._outcomes_ready = threading.Condition()
        self._carrier_waiting = False  # the lease loop waits for an outcome to carry
        self._carry_outcomes = False  # the node pool takes them with a lease (it says so)
        self.pool = FunctionPool(
            size=self.capacity,
            allowed_modules=options.allowed_modules,
            work_root=self.work_root,
            on_progress=self._on_progress,
        )
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def resources(self) -> pb.WorkerResources:
        return pb.WorkerResources(
            cpu=os.cpu_count() or 1,
            memory_mb=psutil.virtual_memory().total // (1024 * 1024),
            gpu=self.options.gpu,
            labels=list(self.options.labels),
            capacity=self.capacity,
            hostname=socket.gethostname(),
            version=__version__,
        )

    def connect(self) -> None:
        """Register (again), announcing the tasks still running here; retries with backoff."""
        backoff = Backoff()
        while not self.stopped.is_set():
            try:
                reply = self.conn.register(self.resources(), self.running_ids())
            except NodePoolError as exc:
                if exc.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                    raise
                log.warning("register failed: %s; retrying in %.1f s", exc, backoff.delay)
                backoff.sleep(self.stopped)
                continue
            self.heartbeat_interval = reply.heartbeat_interval or self.settings.heartbeat_interval
            self._carry_outcomes = reply.lease_takes_results
            self._cancel(reply.cancel_task_ids)
            self.connected.set()
            log.info("registered as %s with %s", self.options.node_id, self.conn.address)
            return

    def start(self) -> None:
        self.heartbeat_interval = self.settings.heartbeat_interval
        self.connect()
        for target, name in (
            (self._lease_loop, "lease"),
            (self._heartbeat_loop, "heartbeat"),
            (self._report_loop, "report"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, grace: float) -> None:
        """Stop leasing, give running tasks ``grace`` seconds, hand the rest back, leave."""
        self.stop_leasing.set()
        with self._slots:
            waiting = [task for task, _ in self._waiting]
            self._waiting.clear()
        if waiting:
            self._hand_back(waiting)
        deadline = time.monotonic() + grace
        while self.running_ids() and time.monotonic() < deadline:
            time.sleep(0.1)
        leftover = self._snapshot()
        for task in leftover:
            task.handed_back = True
            task.cancel.set()
            self.pool.cancel(task.task_id)
        self._drain_reports(5.0)
        if leftover:
            self._hand_back(leftover)
        try:
            self.conn.deregister()
        except NodePoolError as exc:
            log.warning("deregister failed: %s", exc)
        self.stopped.set()
        self.pool.shutdown(wait=False)
        self.conn.close()

    def _hand_back(self, tasks: list[RunningTask]) -> None:
        try:
            self.conn.release([(t.task_id, t.attempt) for t in tasks])
            log.info("handed %d unfinished tasks back to the queue", len(tasks))
        except NodePoolError as exc:
            log.warning("could not hand tasks back (%s); their leases will expire", exc)
        with self._lock:
            for task in tasks:
                if self.running.get(task.task_id) is task:
                    del self.running[task.task_id]

    def kill_now(self) -> None:
        """Second SIGTERM: stop every task process and exit; the leases expire and requeue."""
        for task in self._snapshot():
            task.handed_back = True  # report nothing: the tasks must run again elsewhere
            task.cancel.set()
        # Task processes (and pool processes) lead process groups of their own: kill each
        # whole group now rather than trusting the runner threads to get there first.
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(OSError):
                if os.getpgid(child.pid) == child.pid:
                    os.killpg(child.pid, signal.SIGKILL)
        os._exit(1)

    # -- bookkeeping -------------------------------------------------------------------------
    def running_ids(self) -> list[str]:
        return [task.task_id for task in self._snapshot()]

    def _snapshot(self) -> list[RunningTask]:
        """Tasks held here whose outcome is not on its way to the node pool."""
        with self._lock:
            return [task for task in self.running.values() if not task.reported]

    def _cancel(self, task_ids: list[str] | tuple[str, ...]) -> None:
        for task_id in task_ids:
            with self._lock:
                task = self.running.get(task_id)
            if task is not None and not task.cancel.is_set():
                log.info("stopping task %s (cancelled or no longer ours)", task_id)
                task.cancel.set()
                if not self._drop_waiting(task):
                    self.pool.cancel(task_id)

    def _drop_waiting(self, task: RunningTask) -> bool:
        """Finish a cancelled task that never started; False if it is executing."""
        with self._slots:
            for entry in self._waiting:
                if entry[0] is task:
                    self._waiting.remove(entry)
                    break
            else:
                return False
        self._finish(task, "cancelled", "", "cancelled before it started", None)
        return True

    # -- loops -------------------------------------------------------------------------------
    def _lease_loop(self) -> None:
        backoff = Backoff()
        while not self.stop_leasing.is_set():
            with self._slots:
                while self._room() <= 0 and not self.stop_leasing.is_set():
                    self._slots.wait(1.0)
            if self.stop_leasing.is_set():
                break
            self.connected.wait()
            carried = self._outcomes_to_carry(self._outcome_due())
            with self._slots:  # slots may have freed meanwhile
                free, room = self.capacity - self._busy, self._room()
            try:
                reply = self.conn.lease(
                    room,
                    LEASE_WAIT if room > 0 else 0.0,
                    max_bundles=free,
                    results=[result for _, result in carried],
                )
                backoff.reset()
            except NodePoolError as exc:
                self._return_outcomes(carried)
                self._lost_connection(exc, backoff)
                continue
            self._settle(carried, reply.replies)
            for task in reply.tasks:
                if self.stop_leasing.is_set():
                    self.conn.release([(task.task_id, task.attempt)])
                    continue
                self._start(task)

    def _room(self) -> int:
        """Tasks the next lease may bring: free slots plus free prefetch places."""
        return max(0, self.capacity - self._busy + self.prefetch() - len(self._waiting))

    def _outcome_due(self) -> float:
        """Seconds to wait for an outcome to carry with the next lease: a quick function
        task is executing, so the lease would otherwise go out just before its outcome."""
        if not self._carry_outcomes or self._mean_call_seconds > keys.OUTCOME_CARRY_WAIT:
            return 0.0
        with self._lock:
            executing = any(t.executing and t.kind == pb.FUNCTION for t in self.running.values())
        return keys.OUTCOME_CARRY_WAIT if executing else 0.0

    def prefetch(self) -> int:
        """Function tasks to hold ahead of the free slots."""
        per_slot = min(
            keys.FUNCTION_PREFETCH_MAX_PER_SLOT,
            int(keys.PREFETCH_WORK_SECONDS / max(self._mean_call_seconds, 1e-6)),
        )
        return per_slot * self.capacity

    def _lost_connection(self, exc: NodePoolError, backoff: Backoff) -> None:
        log.warning("node pool unreachable (%s); retrying in %.1f s", exc, backoff.delay)
        self.connected.clear()
        backoff.sleep(self.stopped)
        if not self.connected.is_set() and not self.stopped.is_set():
            self.connect()

    def _heartbeat_loop(self) -> None:
        backoff = Backoff()
        psutil.cpu_percent(None)
        while not self.stopped.is_set():
            busy = bool(self.running)
            self.stopped.wait(BUSY_HEARTBEAT if busy else self.heartbeat_interval)
            if self.stopped.is_set():
                return
            try:
                cancel = self.conn.heartbeat(self._metrics(), self.running_ids())
                backoff.reset()
            except NodePoolError as exc:
                if exc.code == "FAILED_PRECONDITION":  # the node pool forgot us: register
                    self.connected.clear()
                    self.connect()
                else:
                    self._lost_connection(exc, backoff)
                continue
            self._cancel(cancel)

    def _metrics(self) -> pb.Metrics:
        try:
            disk = psutil.disk_usage(str(self.home.root)).percent
        except OSError:
            disk = 0.0
        return pb.Metrics(
            cpu_percent=psutil.cpu_percent(None),
            memory_percent=psutil.virtual_memory().percent,
            load1=os.getloadavg()[0],
            disk_percent=disk,
        )

    # -- running tasks -----------------------------------------------------------------------
    def _start(self, leased: pb.LeasedTask) -> None:
        task = RunningTask(leased.task_id, leased.attempt, leased.spec.kind, leased.spec.name)
        with self._lock:
            self.running[task.task_id] = task
        with self._slots:
            if leased.spec.kind == pb.FUNCTION:
                self._waiting.append((task, leased))
                self._dispatch_waiting()
                return
            self._busy += 1
            task.executing = True
        # A bundle's start is worth a line of its own; a function task, usually a small one,
        # gets one line when it ends (two per task were a tenth of a worker's CPU).
        task_log.info("task %s attempt %d started: %s", task.task_id, task.attempt, task.name)
        thread = threading.Thread(
            target=self._run_bundle,
            args=(task, leased, self._timeout(leased)),
            daemon=True,
            name=f"task-{task.task_id}",
        )
        thread.start()

    def _timeout(self, leased: pb.LeasedTask) -> float:
        return leased.spec.timeout or self.settings.task_timeout

    def _dispatch_waiting(self) -> None:
        """Start waiting function tasks while slots are free (called holding ``_slots``)."""
        while self._waiting and self._busy < self.capacity:
            task, leased = self._waiting.popleft()
            self._busy += 1
            task.executing = True
            try:
                args = json.loads(leased.spec.args_json or "[]")
            except ValueError:
                args = []
            call = FunctionCall(
                task.task_id, task.attempt, leased.spec.function, args, self._timeout(leased)
            )
            future = self.pool.submit(call)
            future.add_done_callback(lambda f, t=task: self._function_done(t, f.result()))

    def _function_done(self, task: RunningTask, outcome: FunctionOutcome) -> None:
        if outcome.duration >= 0:
            previous = self._mean_call_seconds
            self._mean_call_seconds = (
                outcome.duration
                if previous == math.inf
                else 0.8 * previous + 0.2 * outcome.duration
            )
        # The pool keeps a function's checkpoint dir here; the attempt is over. Most calls
        # make none: one stat is much cheaper than rmtree's attempt.
        checkpoints = os.path.join(self.work_root, task.task_id)
        if os.path.isdir(checkpoints):
            shutil.rmtree(checkpoints, ignore_errors=True)
        self._finish(task, outcome.status, outcome.result_json, outcome.error_message, None)

    def _run_bundle(self, task: RunningTask, leased: pb.LeasedTask, timeout: float) -> None:
        scratch = Path(tempfile.mkdtemp(prefix=f"{task.task_id}-", dir=self.work_root))
        try:
            bundle = self.conn.download("bundle", task.task_id, task.attempt, scratch / "b.zip")
            checkpoint = None
            if leased.has_checkpoint:
                checkpoint = self.conn.download(
                    "checkpoint", task.task_id, task.attempt, scratch / "ckpt.zip"
                )
            memory = max(leased.spec.requirements.memory_mb, self.settings.task_memory_limit_mb)
            run = BundleRun(
                task_id=task.task_id,
                attempt=task.attempt,
                zip_path=bundle,
                work_root=scratch,
                timeout=timeout,
                memory_limit_mb=memory,
                extra_env={},
                checkpoint_zip=checkpoint,
                max_output_size=self.settings.max_task_data_size,
            )
            outcome: RunOutcome = run_bundle(
                run,
                on_output=lambda text: self._reports.put(("log", (task, text))),
                on_progress=lambda f, m: self._on_progress(task.task_id, task.attempt, f, m),
                on_checkpoint=lambda path: self._upload(task, "checkpoint", path),
                cancel=task.cancel,
            )
            self._finish(task, outcome.status, "", outcome.error_message, outcome.result_zip)
        except NodePoolError as exc:
            self._finish(task, "failed", "", f"worker could not fetch task data: {exc}", None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _upload(self, task: RunningTask, kind: str, path: Path) -> bool:
        try:
            return self.conn.upload(task.task_id, task.attempt, kind, path).accepted
        except NodePoolError as exc:
            log.warning("task %s: %s upload failed: %s", task.task_id, kind, exc)
            return False

    def _on_progress(self, task_id: str, attempt: int, fraction: float, message: str) -> None:
        self._reports.put(("progress", (task_id, attempt, fraction, message)))

    def _finish(
        self,
        task: RunningTask,
        status: str,
        result_json: str,
        error: str,
        result_zip: Path | None,
    ) -> None:
        with self._slots:
            if task.executing:
                task.executing = False
                self._busy -= 1
                if not self.stop_leasing.is_set():
                    self._dispatch_waiting()
            self._slots.notify_all()
        if task.handed_back:
            return  # the node pool gets it back through ReleaseTasks instead
        if task.cancel.is_set() and status != "succeeded":
            status, error = "cancelled", error or "cancelled"
        has_archive = False
        if result_zip is not None:
            has_archive = self._upload(task, "result", result_zip)
            result_zip.unlink(missing_ok=True)
        task_log.info(
            "task %s attempt %d %s: %s %s", task.task_id, task.attempt, status, task.name, error
        )
        result = pb.TaskResult(
            ref=self.conn.ref(task.task_id, task.attempt),
            outcome=OUTCOME_CODES[status],
            result_json=result_json,
            error_message=error,
            has_result_archive=has_archive,
        )
        self._reports.put(("outcome", (task, result)))

    # -- reporting ---------------------------------------------------------------------------
    def _report_loop(self) -> None:
        backoff = Backoff()
        while not self.stopped.is_set():
            self._collect(timeout=REPORT_INTERVAL)
            if not self._ship():
                backoff.sleep(self.stopped)
            else:
                backoff.reset()

    def _collect(self, timeout: float) -> None:
        logs: dict[tuple[str, int], list[str]] = {}
        progress: dict[tuple[str, int], tuple[float, str]] = {}
        try:
            item = self._reports.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            kind, payload = item
            if kind == "log":
                task, text = payload  # type: ignore[misc]
                logs.setdefault((task.task_id, task.attempt), []).append(text)
            elif kind == "progress":
                task_id, attempt, fraction, message = payload  # type: ignore[misc]
                progress[(task_id, attempt)] = (fraction, message)
            else:  # a task's logs and progress go before its outcome, which ends it
                self._flush_logs(logs)
                self._flush_progress(progress)
                with self._outcomes_ready:
                    self._outcomes.append(payload)  # type: ignore[arg-type]
                    self._outcomes_ready.notify()
            try:
                item = self._reports.get_nowait()
            except queue.Empty:
                break
        self._flush_logs(logs)
        self._flush_progress(progress)

    def _flush_progress(self, progress: dict[tuple[str, int], tuple[float, str]]) -> None:
        for (task_id, attempt), (fraction, message) in progress.items():
            try:
                self.conn.progress(task_id, attempt, fraction, message)
            except NodePoolError as exc:
                log.debug("progress for %s dropped: %s", task_id, exc)
        progress.clear()

    def _flush_logs(self, logs: dict[tuple[str, int], list[str]]) -> None:
        for (task_id, attempt), pieces in list(logs.items()):
            text = "".join(pieces)
            for line in text.splitlines():
                task_log.info("[%s#%d] %s", task_id, attempt, line)
            try:
                self.conn.append_log(task_id, attempt, text)
            except NodePoolError as exc:
                log.debug("log for %s dropped: %s", task_id, exc)
        logs.clear()

    def _ship(self) -> bool:
        """Send the outcomes gathered so far, unless the lease loop is about to carry them;
        keep them if the node pool is away."""
        with self._outcomes_ready:
            batch = [] if self._carrier_waiting else self._pop_outcomes()
        if not batch:
            return True
        try:
            replies = self.conn.complete([result for _, result in batch])
        except NodePoolError as exc:
            log.warning("could not report %d outcomes (%s); will retry", len(batch), exc)
            self._return_outcomes(batch)
            return False
        self._settle(batch, replies)
        return True

    def _outcomes_to_carry(self, wait: float) -> list[tuple[RunningTask, pb.TaskResult]]:
        """Outcomes for the lease loop to send with its lease, after waiting up to ``wait``
        seconds for one when there is none yet."""
        if not self._carry_outcomes:
            return []
        with self._outcomes_ready:
            if wait > 0 and not self._outcomes:
                self._carrier_waiting = True
                self._outcomes_ready.wait(wait)
                self._carrier_waiting = False
            return self._pop_outcomes()

    def _pop_outcomes(self) -> list[tuple[RunningTask, pb.TaskResult]]:
        """Up to a call's worth of outcomes, marked as on their way (holding the lock)."""
        batch, self._outcomes = (
            self._outcomes[:OUTCOMES_PER_CALL],
            self._outcomes[OUTCOMES_PER_CALL:],
        )
        for task, _ in batch:
            task.reported = True
        return batch

    def _return_outcomes(self, batch: list[tuple[RunningTask, pb.TaskResult]]) -> None:
        """Outcomes whose call failed: first in line for the next one."""
        if not batch:
            return
        with self._outcomes_ready:
            for task, _ in batch:
                task.reported = False
            self._outcomes[:0] = batch

    def _settle(
        self,
        batch: list[tuple[RunningTask, pb.TaskResult]],
        replies: Sequence[pb.FenceReply],
    ) -> None:
        """The node pool has the outcomes: the tasks are no longer held here."""
        for (task, result), reply in zip(batch, replies, strict=True):
            if not reply.accepted:
                log.warning("outcome of %s refused: %s", result.ref.task_id, reply.reason)
            with self._lock:
                if self.running.get(task.task_id) is task:
                    del self.running[task.task_id]

    def _drain_reports(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (not self._reports.empty() or self._outcomes):
            time.sleep(0.05)


def run_worker(settings: Settings, options: WorkerOptions) -> int:
    """Run a worker in the foreground until SIGTERM (graceful) or a second SIGTERM (now)."""
    home = layout(settings.home).ensure()
    configure_logging(home.worker_log, settings.log_level)
    task_logger = logging.getLogger("hivemind.task_execution")
    task_logger.addHandler(rotating_handler(home.task_execution_log, buffered=True))
    # Task lines go to task_execution.log only, not again to worker.log and the console.
    task_logger.propagate = False
    worker = Worker(settings, options)
    signals = {"count": 0}
    shutdown_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting now")
            worker.kill_now()
        shutdown_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    while not shutdown_requested.wait(1.0):
        pass
    log.info(
        "stopping: no new tasks; %d running get %.0f s",
        len(worker.running_ids()),
        settings.shutdown_grace,
    )
    worker.shutdown(settings.shutdown_grace)
    return 0
