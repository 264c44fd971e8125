"""`hivemind worker`: register, heartbeat, lease, run, report; survive the node pool's restarts.

Threads: the lease loop (long polls for work while a slot is free, and carries the outcomes
of quick tasks with its next lease), the heartbeat loop (every HEARTBEAT_INTERVAL, every half
second while tasks run so that a cancel lands fast), the reporter (:mod:`reporting`), the
checkpoint loop (sends running function tasks' checkpoints as they change) and one runner
thread per bundle task. Function tasks go to the warm process pool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psutil

from hivemind import __version__, tuning
from hivemind.config import Settings
from hivemind.errors import NodePoolError
from hivemind.logs import configure_logging, rotating_handler
from hivemind.metrics import WORKER_PORT_TRIES, MetricsServer, WorkerMetrics
from hivemind.metrics import serve as serve_metrics
from hivemind.paths import layout
from hivemind.proto import hivemind_pb2 as pb
from hivemind.sandbox import detect as detect_sandbox
from hivemind.tls import client_security
from hivemind.worker.checkpoints import FunctionCheckpoints
from hivemind.worker.connection import WorkerConnection
from hivemind.worker.execution import BundleRun, RunOutcome, run_bundle
from hivemind.worker.functions import FunctionCall, FunctionOutcome, FunctionPool
from hivemind.worker.guard import guard
from hivemind.worker.renewal import CertificateRenewal, renew_if_due
from hivemind.worker.reporting import Reporter
from hivemind.worker.running import Backoff, RunningTask

log = logging.getLogger("hivemind.worker")
task_log = logging.getLogger("hivemind.task_execution")

OUTCOME_CODES = {
    "succeeded": pb.SUCCEEDED,
    "failed": pb.FAILED,
    "timeout": pb.TIMEOUT,
    "cancelled": pb.CANCELLED,
}
LEASE_WAIT = 10.0
BUSY_HEARTBEAT = 0.5
FUNCTION_CHECKPOINT_POLL = 0.5  # seconds between looks at running function tasks' checkpoints


@dataclass
class WorkerOptions:
    node_id: str
    token: str
    allowed_modules: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    gpu: int = 0
    capacity: int = 0


class Worker:
    def __init__(self, settings: Settings, options: WorkerOptions) -> None:
        self.settings = settings
        self.options = options
        self.home = layout(settings.home).ensure()
        self.capacity = options.capacity or settings.effective_max_concurrent_tasks
        self.conn = WorkerConnection(
            settings.client_address,
            options.node_id,
            options.token,
            client_security(settings, options.node_id),
        )
        self.renewal = CertificateRenewal(settings, options.node_id)
        self.work_root = self.home.worker_work / options.node_id
        self.work_root.mkdir(parents=True, exist_ok=True)
        self.sandbox = detect_sandbox(settings)
        if self.sandbox.missing:
            log.warning(
                "task sandbox: %s; missing: %s",
                self.sandbox.describe(),
                "; ".join(self.sandbox.missing),
            )
        else:
            log.info("task sandbox: %s", self.sandbox.describe())
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
        self.reports = Reporter(self.conn, self._settled)
        self.checkpoints = FunctionCheckpoints(
            self.work_root,
            settings.max_task_data_size,
            download=lambda task_id, attempt, dest: self.conn.download(
                "checkpoint", task_id, attempt, dest
            ),
            upload=lambda task_id, attempt, path: self._upload(
                task_id, attempt, "checkpoint", path
            ),
        )
        self.pool = FunctionPool(
            size=self.capacity,
            allowed_modules=options.allowed_modules,
            work_root=self.work_root,
            on_progress=self.reports.progress,
        )
        self._threads: list[threading.Thread] = []
        self.metrics = WorkerMetrics(options.node_id, lambda: len(self.running), _task_processes)
        self.metrics_server: MetricsServer | None = None

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
            allowed_modules=list(self.options.allowed_modules),
            metrics_port=self.metrics_server.port if self.metrics_server else 0,
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
            self.reports.carry = reply.lease_takes_results
            self._cancel(list(reply.cancel_task_ids))
            self.connected.set()
            log.info("registered as %s with %s", self.options.node_id, self.conn.address)
            return

    def start(self) -> None:
        self.heartbeat_interval = self.settings.heartbeat_interval
        # Several workers on one host: each takes the next free port (its record says which).
        self.metrics_server = serve_metrics(
            self.metrics.registry,
            self.settings.grpc_host,
            self.settings.worker_metrics_port,
            WORKER_PORT_TRIES,
        )
        self.connect()
        for target, name in (
            (self._lease_loop, "lease"),
            (self._heartbeat_loop, "heartbeat"),
            (lambda: self.reports.run(self.stopped), "report"),
            (self._checkpoint_loop, "checkpoints"),
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
            for task in waiting:  # a restored checkpoint stays on the node pool for the next
                self.checkpoints.forget(task.task_id, task.attempt)
        deadline = time.monotonic() + grace
        while self.running_ids() and time.monotonic() < deadline:
            time.sleep(0.1)
        leftover = self._snapshot()
        for task in leftover:
            task.handed_back = True
            task.cancel.set()
            self.pool.cancel(task.task_id)
        # Their last checkpoints go up before the tasks go back: the fence refuses them after.
        deadline = time.monotonic() + 5.0
        while any(task.executing for task in leftover) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.reports.drain(5.0)
        if leftover:
            self._hand_back(leftover)
        try:
            self.conn.deregister()
        except NodePoolError as exc:
            log.warning("deregister failed: %s", exc)
        # Deregistered, its open long poll has come back empty: let the lease loop read that
        # reply before the connection closes under it (a reply cut off could hold tasks).
        for thread in self._threads:
            if thread.name == "lease":
                thread.join(5.0)
        self.stopped.set()
        self.pool.shutdown(wait=False)
        self.sandbox.close()
        self.conn.close()
        if self.metrics_server is not None:
            self.metrics_server.close()

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
        self.checkpoints.forget(task.task_id, task.attempt)  # restored, never used
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
            carried = self.reports.to_carry(self._outcome_due())
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
                self.reports.give_back(carried)
                self._lost_connection(exc, backoff)
                continue
            self.reports.settle(carried, reply.replies)
            for task in reply.tasks:
                if self.stop_leasing.is_set():
                    self.conn.release([(task.task_id, task.attempt)])
                    continue
                self._start(task)
            if not reply.tasks and reply.poll_again_after > 0:
                # The node pool had no place for our long poll: ask again when it said.
                self.stop_leasing.wait(reply.poll_again_after)

    def _room(self) -> int:
        """Tasks the next lease may bring: free slots plus free prefetch places."""
        return max(0, self.capacity - self._busy + self.prefetch() - len(self._waiting))

    def _outcome_due(self) -> float:
        """Seconds to wait for an outcome to carry with the next lease: a quick function
        task is executing, so the lease would otherwise go out just before its outcome."""
        if not self.reports.carry or self._mean_call_seconds > tuning.OUTCOME_CARRY_WAIT:
            return 0.0
        with self._lock:
            executing = any(t.executing and t.kind == pb.FUNCTION for t in self.running.values())
        return tuning.OUTCOME_CARRY_WAIT if executing else 0.0

    def prefetch(self) -> int:
        """Function tasks to hold ahead of the free slots."""
        per_slot = min(
            tuning.FUNCTION_PREFETCH_MAX_PER_SLOT,
            int(tuning.PREFETCH_WORK_SECONDS / max(self._mean_call_seconds, 1e-6)),
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
                reply = self.conn.heartbeat(self._metrics(), self.running_ids())
                self.metrics.heartbeats.inc()
                backoff.reset()
            except NodePoolError as exc:
                if exc.code == "FAILED_PRECONDITION":  # the node pool forgot us: register
                    self.connected.clear()
                    self.connect()
                else:
                    self._lost_connection(exc, backoff)
                continue
            self._cancel(list(reply.cancel_task_ids))
            renew_if_due(self.renewal, self.conn, reply.ca_fingerprint)

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
        if leased.spec.kind == pb.FUNCTION and leased.has_checkpoint:
            self.checkpoints.restore(task.task_id, task.attempt)
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
        # The node pool filled in TASK_TIMEOUT at submit time; its value is the only one.
        return leased.spec.timeout

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
        if task.handed_back:  # the next attempt may run elsewhere: it gets the last state
            self.checkpoints.send(task.task_id, task.attempt, final=True)
        self.checkpoints.forget(task.task_id, task.attempt)
        self._finish(task, outcome.status, outcome.result_json, outcome.error_message, None)

    def _checkpoint_loop(self) -> None:
        """Send the checkpoints of running function tasks as they change, so that the next
        attempt gets them even if this worker dies. Bundles' runners watch their own."""
        while not self.stopped.wait(FUNCTION_CHECKPOINT_POLL):
            for task in self._snapshot():
                if task.kind == pb.FUNCTION and task.executing and not task.handed_back:
                    self.checkpoints.send(task.task_id, task.attempt, final=False)

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
                sandbox=self.sandbox,
                cpus=float(leased.spec.requirements.cpu),
            )
            outcome: RunOutcome = run_bundle(
                run,
                on_output=lambda text: self.reports.log(task, text),
                on_progress=lambda f, m: self.reports.progress(task.task_id, task.attempt, f, m),
                on_checkpoint=lambda path: self._upload(
                    task.task_id, task.attempt, "checkpoint", path
                ),
                cancel=task.cancel,
            )
            self._finish(task, outcome.status, "", outcome.error_message, outcome.result_zip)
        except NodePoolError as exc:
            self._finish(task, "failed", "", f"worker could not fetch task data: {exc}", None)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _upload(self, task_id: str, attempt: int, kind: str, path: Path) -> bool:
        try:
            return self.conn.upload(task_id, attempt, kind, path).accepted
        except NodePoolError as exc:
            log.warning("task %s: %s upload failed: %s", task_id, kind, exc)
            return False

    def _settled(self, task: RunningTask) -> None:
        """The node pool has the task's outcome: it is no longer held here."""
        with self._lock:
            if self.running.get(task.task_id) is task:
                del self.running[task.task_id]

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
            has_archive = self._upload(task.task_id, task.attempt, "result", result_zip)
            result_zip.unlink(missing_ok=True)
        task_log.info(
            "task %s attempt %d %s: %s %s", task.task_id, task.attempt, status, task.name, error
        )
        self.metrics.ran(status, time.monotonic() - task.leased_at)
        result = pb.TaskResult(
            ref=self.conn.ref(task.task_id, task.attempt),
            outcome=OUTCOME_CODES[status],
            result_json=result_json,
            error_message=error,
            has_result_archive=has_archive,
        )
        self.reports.outcome(task, result)


def _task_processes() -> list[psutil.Process]:
    """This worker's task processes: every process under it (the function pool's, and each
    bundle's process group)."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def run_worker(settings: Settings, options: WorkerOptions) -> int:
    """Run a worker in the foreground until SIGTERM (graceful) or a second SIGTERM (now)."""
    home = layout(settings.home).ensure()
    configure_logging(home.worker_log, settings.log_level)
    # A line per task: skip what LOG_FORMAT does not show (the logging docs' "Optimization").
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    task_logger = logging.getLogger("hivemind.task_execution")
    task_logger.addHandler(rotating_handler(home.task_execution_log, buffered=True))
    # Task lines go to task_execution.log only, not again to worker.log and the console.
    task_logger.propagate = False
    guard.start()  # before the function pool: its processes are task processes too
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
