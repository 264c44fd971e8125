"""A warm pool of processes that run ``module:function`` tasks.

Each pool process is started once (``spawn``: the worker has gRPC threads, which plain
fork would copy in a broken state) and then serves calls over its own pipe, so a call
costs no interpreter start. A call that times out or is cancelled gets its process killed
and replaced, without disturbing the calls running in the others. Only modules the worker
was started with ``--allow`` may run, which is checked before dispatch and again in the
pool process before anything is imported.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import re
import selectors
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from hivemind import task as task_api
from hivemind.errors import HivemindError
from hivemind.function_names import module_allowed, split_function_name
from hivemind.worker.guard import guard

_log = logging.getLogger(__name__)

#: Progress goes to the worker at most this often; the latest report is never lost.
_PROGRESS_INTERVAL = 0.1
#: Wait before restarting a process that died before it was ready, to avoid a crash loop.
_RESPAWN_BACKOFF = 1.0
_STOP_TIMEOUT = 2.0
#: The dispatcher looks at deadlines at least this often, so that starting a call with a
#: timeout (the common case) never has to wake it.
_TICK = 0.25
_MESSAGE_MAX_CHARS = 500


class FunctionError(HivemindError):
    """A function task names something this worker will not or cannot run."""


@dataclass
class FunctionCall:
    task_id: str
    attempt: int
    #: ``module:function``.
    function: str
    args: list[Any]
    #: Seconds; 0 or less means no limit.
    timeout: float


@dataclass
class FunctionOutcome:
    #: "succeeded" | "failed" | "timeout" | "cancelled"
    status: str
    #: JSON of the return value on success; "" otherwise.
    result_json: str
    error_message: str
    duration: float


# -- naming and resolving functions (used on both sides) --------------------------------------


@functools.lru_cache(maxsize=1024)
def check_function_name(name: str, allowed: tuple[str, ...]) -> tuple[str, str]:
    """Split ``module:function`` and check the module is allowed, importing nothing.

    Cached: a worker checks every call, and most calls name the same few functions."""
    parts = split_function_name(name)
    if parts is None:
        raise FunctionError(f"function must be written 'module:function', got {name!r}")
    module, attribute = parts
    if not module_allowed(module, allowed):
        raise FunctionError(f"module {module!r} is not allowed on this worker (--allow)")
    return module, attribute


def resolve_function(name: str, allowed: Sequence[str]) -> Callable[..., Any]:
    """Import and return the function ``module:function`` names, if its module is allowed."""
    module_name, attribute = check_function_name(name, tuple(allowed))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FunctionError(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:
        raise FunctionError(f"importing {module_name!r} failed: {_describe(exc)}") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise FunctionError(f"module {module_name!r} has no function {attribute!r}")
    if not callable(function):
        raise FunctionError(f"{name!r} is not callable")
    # An allowed module's namespace also holds what it imported (``from os import system``):
    # that must not become a way round the allow list.
    if inspect.isroutine(function) or inspect.isclass(function):
        origin = getattr(function, "__module__", None)
        if isinstance(origin, str) and not module_allowed(origin, allowed):
            raise FunctionError(
                f"{name!r} comes from module {origin!r}, which is not allowed on this worker "
                "(--allow)"
            )
    return function


#: Characters of a failed call's traceback kept in its error message (its last ones).
TRACEBACK_MAX = 8000


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text


_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def task_folder_name(task_id: str) -> str:
    """The name of a task's own folder under the worker's work root (ids are safe already)."""
    if _SAFE_NAME.fullmatch(task_id):
        return task_id
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)[:64] or "_"


def checkpoint_folder(work_root: Path, task_id: str) -> Path:
    """Where a function task's ``checkpoint_dir()`` is; its parent is the task's own folder."""
    return work_root / task_folder_name(task_id) / "checkpoint"


# -- the pool process -------------------------------------------------------------------------


class _ProgressSender:
    """Sends a call's progress to the worker, throttled, from a helper thread.

    Every message to the worker goes through ``lock``, so no progress can overtake the
    call's result and be taken for the next call's.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.lock = threading.Condition()
        self._pending: tuple[str, int, float, str] | None = None
        self._last_sent = -math.inf
        threading.Thread(target=self._run, name="hivemind-progress", daemon=True).start()

    def report(self, task_id: str, attempt: int, fraction: float, message: str) -> None:
        with self.lock:
            self._pending = (task_id, attempt, fraction, message[:_MESSAGE_MAX_CHARS])
            self.lock.notify()

    def flush_locked(self) -> None:
        if self._pending is not None:
            self._conn.send(("progress", *self._pending))
            self._pending = None
            self._last_sent = time.monotonic()

    def _run(self) -> None:
        with self.lock:
            while True:
                delay = self._last_sent + _PROGRESS_INTERVAL - time.monotonic()
                if self._pending is None or delay > 0:
                    self.lock.wait(None if self._pending is None else delay)
                else:
                    self.flush_locked()


def _run_call(
    call: tuple[str, int, str, list[Any]],
    cache: dict[str, Callable[..., Any]],
    allowed: Sequence[str],
    work_root: Path,
    progress: _ProgressSender,
) -> tuple[str, str, str, float]:
    task_id, attempt, name, args = call
    started = time.perf_counter()

    def report(fraction: float, message: str) -> None:
        progress.report(task_id, attempt, fraction, message)

    task_api._set_context(task_id, attempt, checkpoint_folder(work_root, task_id), report)
    error = ""
    try:
        function = cache.get(name)
        if function is None:
            function = cache[name] = resolve_function(name, allowed)
        result = function(*args)
    except FunctionError as exc:
        error = str(exc)
    except SystemExit as exc:
        error = f"function called sys.exit({exc.code!r})"
    except BaseException as exc:
        # Whatever the function raises is its failure, reported; the process lives on. The
        # traceback follows the one-line summary (the Python API re-raises it with this).
        trace = "".join(traceback.format_exception(exc))[-TRACEBACK_MAX:]
        error = f"{_describe(exc)}\n{trace}"
    finally:
        task_api._clear_context()
    duration = time.perf_counter() - started
    if error:
        return "failed", "", error, duration
    try:
        return "succeeded", json.dumps(result, allow_nan=False), "", duration
    except (TypeError, ValueError, RecursionError) as exc:
        return "failed", "", f"result is not JSON-serialisable: {exc}", duration


def _serve(conn: Connection, allowed: Sequence[str], work_root: Path) -> None:
    """Main loop of a pool process: one call at a time until told to stop."""
    # Own process group: killing the group also takes anything the function started, and
    # Ctrl-C in the worker's terminal is the worker's business, not ours.
    os.setsid()
    progress = _ProgressSender(conn)
    cache: dict[str, Callable[..., Any]] = {}
    with progress.lock:
        conn.send(("ready",))
    while True:
        try:
            call = conn.recv()
        except EOFError:
            return  # the worker is gone
        if call is None:
            return
        status, result, error, duration = _run_call(call, cache, allowed, work_root, progress)
        with progress.lock:
            progress.flush_locked()
            conn.send(("done", status, result, error, duration))


# -- the pool (worker side) ---------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    call: FunctionCall
    future: Future[FunctionOutcome]
    started: float = 0.0
    deadline: float = math.inf
    finished: bool = False


@dataclass(eq=False)
class _Slot:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    #: Killed on purpose (timeout, cancel, shutdown); replaced once its pipe closes.
    doomed: bool = False
    job: _Job | None = None

    @property
    def idle(self) -> bool:
        return self.ready and not self.doomed and self.job is None


class FunctionPool:
    """``size`` warm processes running allowed ``module:function`` calls.

    ``on_progress(task_id, attempt, fraction, message)`` is called from the pool's
    dispatcher thread and should return quickly. Checkpoints of function tasks live in
    ``work_root/<task_id>/checkpoint``; the caller removes ``work_root/<task_id>`` once the
    task is over for good.
    """

    def __init__(
        self,
        size: int,
        allowed_modules: Sequence[str],
        work_root: Path,
        on_progress: Callable[[str, int, float, str], None],
    ) -> None:
        if size < 1:
            raise ValueError("a function pool needs at least one process")
        self._context = multiprocessing.get_context("spawn")
        self._allowed = tuple(name.strip() for name in allowed_modules if name.strip())
        self._work_root = Path(work_root)
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._slots: list[_Slot] = []
        self._outcomes: list[tuple[Future[FunctionOutcome], FunctionOutcome]] = []
        self._closing = False
        self._next_wake = math.inf
        self._respawn_at: list[float] = []
        self._selector = selectors.DefaultSelector()
        self._wake_lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        try:
            for _ in range(size):
                self._spawn()
        except BaseException:
            for slot in self._slots:
                _kill_process(slot.process)
            raise
        atexit.register(self.shutdown, False)
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="hivemind-function-pool", daemon=True
        )
        self._dispatcher.start()

    # -- public API --
    def submit(self, call: FunctionCall) -> Future[FunctionOutcome]:
        """Queue a call; the future always gets an outcome (a refusal is a failed outcome)."""
        future: Future[FunctionOutcome] = Future()
        try:
            check_function_name(call.function, self._allowed)
        except FunctionError as exc:
            future.set_result(FunctionOutcome("failed", "", str(exc), 0.0))
            return future
        job = _Job(call, future)
        with self._locked():
            if self._closing:
                raise RuntimeError("the function pool has been shut down")
            slot = next((s for s in self._slots if s.idle), None)
            if slot is None:
                self._queue.append(job)
            else:
                self._start_job(slot, job)
            wake = job.deadline < self._next_wake
        if wake:
            self._wake()
        return future

    def cancel(self, task_id: str) -> bool:
        """Cancel every queued or running call of ``task_id``; True if there was one."""
        with self._locked():
            queued = [job for job in self._queue if job.call.task_id == task_id]
            for job in queued:
                self._queue.remove(job)
                self._finish(job, "cancelled", "cancelled")
            running = [s for s in self._slots if s.job and s.job.call.task_id == task_id]
            for slot in running:
                self._stop_slot(slot, "cancelled", "cancelled")
        return bool(queued or running)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool.

        ``wait=True`` lets queued and running calls finish first; ``wait=False`` cancels
        them and kills the processes at once.
        """
        with self._locked():
            self._closing = True
            if not wait:
                while self._queue:
                    self._finish(self._queue.popleft(), "cancelled", "cancelled")
                for slot in self._slots:
                    self._stop_slot(slot, "cancelled", "cancelled")
        atexit.unregister(self.shutdown)
        self._wake()
        if wait and threading.current_thread() is not self._dispatcher:
            self._dispatcher.join()

    # -- bookkeeping, under self._lock --
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            yield
            outcomes, self._outcomes = self._outcomes, []
        # Delivered outside the lock: a future's callbacks may well submit the next call.
        for future, outcome in outcomes:
            with contextlib.suppress(InvalidStateError):  # the caller cancelled it already
                future.set_result(outcome)

    def _finish(
        self, job: _Job, status: str, error: str, result: str = "", duration: float = -1.0
    ) -> None:
        if not job.finished:
            job.finished = True
            if duration < 0:
                duration = time.monotonic() - job.started if job.started else 0.0
            self._outcomes.append((job.future, FunctionOutcome(status, result, error, duration)))

    def _start_job(self, slot: _Slot, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return  # the caller cancelled the future while it was queued
        call = job.call
        job.started = time.monotonic()
        job.deadline = job.started + call.timeout if call.timeout > 0 else math.inf
        try:
            slot.conn.send((call.task_id, call.attempt, call.function, call.args))
        except (OSError, ValueError) as exc:
            # The process is dying; it is replaced once its pipe reports end of file.
            self._stop_slot(slot, "failed", f"worker process unreachable: {exc}")
            self._finish(job, "failed", f"worker process unreachable: {exc}")
        except Exception as exc:
            self._finish(job, "failed", f"arguments cannot be sent: {exc}")
        else:
            slot.job = job

    def _stop_slot(self, slot: _Slot, status: str, error: str) -> None:
        if slot.job is not None:
            self._finish(slot.job, status, error)
            slot.job = None
        slot.doomed = True
        _kill_process(slot.process)

    def _fill_idle_slots(self) -> None:
        for slot in self._slots:
            while self._queue and slot.idle:
                self._start_job(slot, self._queue.popleft())

    # -- processes --
    def _spawn(self) -> None:
        """Start a pool process; it takes calls once it has said it is ready."""
        parent_end, child_end = self._context.Pipe(duplex=True)
        args = (child_end, self._allowed, self._work_root)
        process = self._context.Process(target=_serve, args=args, name="hivemind-function")
        process.start()
        if process.pid is not None:
            guard.hold(process.pid)  # it leads a group of its own (setsid in _serve)
        # Our copy of the child's end must go, or its death would never show as end of file.
        child_end.close()
        slot = _Slot(process, parent_end)
        with self._lock:
            self._slots.append(slot)
            self._selector.register(slot.conn, selectors.EVENT_READ, slot)

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_write >= 0:  # else the dispatcher has finished
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_write, b"x")  # a full pipe already means "wake up"

    # -- the dispatcher thread --
    def _dispatch_loop(self) -> None:
        try:
            while not self._dispatch_once():
                pass
        finally:
            self._stop_all()

    def _dispatch_once(self) -> bool:
        """One round: expire calls, restart processes, handle messages; True when done."""
        now = time.monotonic()
        with self._locked():
            next_wake = min([now + _TICK, *self._respawn_at])
            for slot in self._slots:
                if slot.job is not None and now >= slot.job.deadline:
                    timeout = slot.job.call.timeout
                    self._stop_slot(slot, "timeout", f"killed after {timeout:g} s timeout")
                elif slot.job is not None:
                    next_wake = min(next_wake, slot.job.deadline)
            if self._closing and not self._queue and all(s.job is None for s in self._slots):
                return True
            self._next_wake = next_wake
            due = [t for t in self._respawn_at if t <= now]
            self._respawn_at = [t for t in self._respawn_at if t > now]
        for _ in due:
            self._respawn()
        for key, _ in self._selector.select(max(0.0, next_wake - now)):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 4096)
            else:
                self._receive(key.data)
        return False

    def _respawn(self) -> None:
        if self._closing and not self._queue:
            return
        try:
            self._spawn()
        except OSError as exc:
            _log.error("function pool: cannot start a process: %s", exc)
            with self._lock:
                self._respawn_at.append(time.monotonic() + _RESPAWN_BACKOFF)

    def _receive(self, slot: _Slot) -> None:
        # One message per wake-up: the selector reports the pipe again if more is waiting,
        # and every extra poll would hand the GIL away (and wait to get it back).
        try:
            message = slot.conn.recv()
        except (EOFError, OSError):
            self._bury(slot)
        else:
            self._handle(slot, message)

    def _handle(self, slot: _Slot, message: tuple[Any, ...]) -> None:
        progress = None
        with self._locked():
            if message[0] == "ready":
                slot.ready = True
            elif message[0] == "progress":
                job = slot.job
                if job is not None and (job.call.task_id, job.call.attempt) == message[1:3]:
                    progress = message[1:]
            elif message[0] == "done":
                _, status, result, error, duration = message
                if slot.job is not None:
                    self._finish(slot.job, status, error, result, duration)
                    slot.job = None
            self._fill_idle_slots()
        if progress is not None:
            try:
                self._on_progress(*progress)
            except Exception:
                _log.exception("function pool: progress callback failed")

    def _bury(self, slot: _Slot) -> None:
        """A process's pipe closed: fail its call unless we killed it, reap it, replace it."""
        with self._lock:
            # Out of the list before it is reaped, so nothing can signal a reused pid.
            self._slots.remove(slot)
        self._selector.unregister(slot.conn)
        slot.conn.close()
        slot.process.join(_STOP_TIMEOUT)
        if slot.process.pid is not None and slot.process.exitcode is not None:
            guard.release(slot.process.pid)
        reason = _exit_description(slot.process.exitcode)
        with self._locked():
            if slot.job is not None:
                self._finish(slot.job, "failed", f"worker process died ({reason})")
            delay = 0.0
            if not slot.ready and not slot.doomed:
                _log.error("function pool: a process died while starting (%s)", reason)
                delay = _RESPAWN_BACKOFF
            self._respawn_at.append(time.monotonic() + delay)

    def _stop_all(self) -> None:
        for slot in self._slots:
            if slot.doomed:
                _kill_process(slot.process)
            else:
                with contextlib.suppress(OSError, ValueError):
                    slot.conn.send(None)
        for slot in self._slots:
            slot.process.join(_STOP_TIMEOUT)
            if slot.process.is_alive():
                _kill_process(slot.process)
                slot.process.join(_STOP_TIMEOUT)
            if slot.process.pid is not None and slot.process.exitcode is not None:
                guard.release(slot.process.pid)
            slot.conn.close()
        self._slots.clear()
        self._selector.close()
        with self._wake_lock:
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_read = self._wake_write = -1


def _kill_process(process: BaseProcess) -> None:
    # An exit code means it was already reaped: its pid (the group id) may now belong to an
    # unrelated process, which a killpg would hit. Until reaped, the pid cannot be reused.
    if process.pid is None or process.exitcode is not None:
        return
    try:
        # The process leads its own group (it called setsid), which may hold its children.
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        # Not yet a group leader, or already gone: kill just the process.
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
