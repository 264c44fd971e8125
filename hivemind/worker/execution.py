"""Run one attempt of a bundle task in its own process group, and clean up after it.

The task gets a fresh work dir, a scrubbed environment (the worker's holds tokens and
passwords), an ``output/`` folder that becomes its result zip, and a checkpoint folder
restored from its previous attempt. It runs inside the worker's :class:`~hivemind.sandbox.Sandbox`
(bubblewrap, a task user, a cgroup: whatever the host has). Its output is streamed live, its
progress file and checkpoint folder are polled, and on timeout, cancel or its end its cgroup
and process group are killed, so nothing it started outlives it.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import logging
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

import hivemind
from hivemind.bundle import MIB, extract_archive, extract_bundle, zip_output
from hivemind.errors import BundleError
from hivemind.sandbox import Sandbox, TaskCgroup
from hivemind.task import ENV_ATTEMPT, ENV_CHECKPOINT_DIR, ENV_PROGRESS_FILE, ENV_TASK_ID
from hivemind.worker.checkpoints import CheckpointWatch
from hivemind.worker.guard import guard

_log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.1
#: A partial line (no newline yet) is passed on once it has waited this long.
_PARTIAL_LINE_DELAY = 0.2
_STDERR_TAIL_CHARS = 8192
_PROGRESS_READ_MAX = MIB
_MESSAGE_MAX_CHARS = 500
_KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")
#: How long to wait for processes to disappear after SIGKILL, and for pipes to drain.
_REAP_TIMEOUT = 5.0
_DEAD = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
#: The launcher's exit code when the task's program cannot be started.
_LAUNCH_FAILED = 127


@dataclass
class BundleRun:
    task_id: str
    attempt: int
    #: The downloaded bundle.
    zip_path: Path
    #: A fresh work dir ``<task_id>-<attempt>-<random>`` is made under it, and removed after.
    work_root: Path
    #: Seconds; 0 or less means no limit.
    timeout: float
    #: RLIMIT_AS of the task's processes, in MiB; 0 means none.
    memory_limit_mb: int
    #: Spec-level variables, added over the bundle's own ``env``.
    extra_env: dict[str, str]
    #: The previous attempt's checkpoint, restored before the task starts.
    checkpoint_zip: Path | None
    max_output_size: int
    #: What isolates the task; the default isolates nothing and only sets RLIMIT_AS.
    sandbox: Sandbox = field(default_factory=Sandbox)
    #: cgroup cpu.max of the task, in cores, where the cgroup has the cpu controller.
    cpus: float = 0.0


@dataclass
class RunOutcome:
    #: "succeeded" | "failed" | "timeout" | "cancelled"
    status: str
    exit_code: int | None
    #: Empty on success.
    error_message: str
    #: The zip of ``output/``, outside the work dir; the caller owns it.
    result_zip: Path | None
    duration: float


@functools.cache
def _hivemind_import_root() -> str | None:
    """The folder to put on PYTHONPATH so tasks can import hivemind, if it is not installed."""
    parent = Path(hivemind.__file__).resolve().parent.parent
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    return None if parent in installed else str(parent)


def clean_environment(extra: Mapping[str, str], context: Mapping[str, str]) -> dict[str, str]:
    """A task's environment, built from scratch.

    Only a few harmless variables are taken from the worker's own environment, which holds
    secrets. ``extra`` (the task's env) comes next; ``context`` (HIVEMIND_TASK_*, HOME,
    TMPDIR, set by the worker) wins over everything.
    """
    env = {name: os.environ[name] for name in _KEPT_VARIABLES if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    root = _hivemind_import_root()
    if root:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    env.update(context)
    return env


def _file_stem(task_id: str, attempt: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', task_id)[:64]}-{attempt}"


def _guarded(callback: Callable[..., None], *args: Any) -> None:
    # The caller's callbacks must not be able to stop the run halfway (the task would be
    # left running); their failures are logged instead.
    try:
        callback(*args)
    except Exception:
        _log.exception("task callback %r failed", callback)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    # A task may leave folders without write or search permission; open them up first,
    # never following links out of the tree.
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):  # rmtree reports whatever is then left
                    os.chmod(child, 0o700)

    def report(_func: Any, failed: str, exc_info: Any) -> None:
        _log.warning("could not remove %s from a task's work dir: %s", failed, exc_info[1])

    shutil.rmtree(path, onerror=report)


class _OutputPump:
    """Streams the task's stdout and stderr to ``on_output`` from one reader thread."""

    def __init__(self, stdout: IO[bytes], stderr: IO[bytes], on_output: Callable[[str], None]):
        self._streams = (stdout, stderr)
        self._stderr_fd = stderr.fileno()
        self._on_output = on_output
        self._stop = threading.Event()
        self.stderr_tail = ""
        self._thread = threading.Thread(target=self._run, name="hivemind-task-output", daemon=True)
        self._thread.start()

    def _emit(self, fd: int, text: str) -> None:
        if not text:
            return
        if fd == self._stderr_fd:
            self.stderr_tail = (self.stderr_tail + text)[-_STDERR_TAIL_CHARS:]
        _guarded(self._on_output, text)

    def _run(self) -> None:
        open_fds = {stream.fileno() for stream in self._streams}
        decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in open_fds}
        pending = dict.fromkeys(open_fds, "")
        pending_since: dict[int, float] = {}
        while open_fds and not self._stop.is_set():
            ready, _, _ = select.select(list(open_fds), [], [], _PARTIAL_LINE_DELAY / 2)
            for fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    open_fds.discard(fd)
                text = pending[fd] + decoders[fd].decode(data, final=not data)
                cut = text.rfind("\n") + 1
                self._emit(fd, text[:cut])
                pending[fd] = text[cut:]
                if not pending[fd]:
                    pending_since.pop(fd, None)
                else:
                    pending_since.setdefault(fd, time.monotonic())
            now = time.monotonic()
            for fd, since in list(pending_since.items()):
                if fd not in open_fds or now - since >= _PARTIAL_LINE_DELAY:
                    self._emit(fd, pending[fd])
                    pending[fd] = ""
                    del pending_since[fd]

    def finish(self) -> None:
        """Wait for both pipes to reach end of file, then close them."""
        self._thread.join(_REAP_TIMEOUT)
        if self._thread.is_alive():
            # Something that escaped the process group still holds the pipes open.
            _log.warning("task output pipes still open after its processes were killed")
            self._stop.set()
            self._thread.join(_REAP_TIMEOUT)
        for stream in self._streams:
            stream.close()

    def last_stderr_line(self) -> str:
        lines = [line.strip() for line in self.stderr_tail.splitlines() if line.strip()]
        return lines[-1] if lines else ""


class _Attempt:
    def __init__(
        self,
        run: BundleRun,
        work_dir: Path,
        on_output: Callable[[str], None],
        on_progress: Callable[[float, str], None],
        on_checkpoint: Callable[[Path], None],
    ) -> None:
        self.run = run
        self.work_dir = work_dir
        self.on_output = on_output
        self.on_progress = on_progress
        self.on_checkpoint = on_checkpoint
        self.started = time.monotonic()
        self.bundle_dir = work_dir / "bundle"
        self.output_dir = self.bundle_dir / "output"
        self.checkpoint_dir = work_dir / ".checkpoint"
        self.progress_file = work_dir / ".progress.jsonl"
        self._progress_offset = 0
        self._last_progress: tuple[float, str] | None = None
        self.checkpoints: CheckpointWatch | None = None  # from prepare() on
        self.env: dict[str, str] = {}
        self.cgroup: TaskCgroup | None = None  # from spawn() on

    def outcome(self, status: str, exit_code: int | None, message: str) -> RunOutcome:
        return RunOutcome(status, exit_code, message, None, time.monotonic() - self.started)

    # -- preparing ---------------------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Unpack the bundle and the checkpoint; returns the command. Raises BundleError."""
        manifest = extract_bundle(self.run.zip_path, self.bundle_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise BundleError("'output' must be a folder: the task's results are collected there")
        self.output_dir.mkdir(exist_ok=True)
        if self.run.checkpoint_zip is not None:
            try:
                extract_archive(self.run.checkpoint_zip, self.checkpoint_dir)
            except BundleError as exc:
                # A damaged checkpoint must not block the task for good: start from scratch.
                _log.warning("task %s: checkpoint not restored: %s", self.run.task_id, exc)
                _guarded(self.on_output, f"[hivemind] previous checkpoint not restored: {exc}\n")
        self.checkpoint_dir.mkdir(exist_ok=True)
        self.checkpoints = CheckpointWatch(
            self.checkpoint_dir, self.work_dir, self.run.max_output_size
        )
        (self.work_dir / "tmp").mkdir()
        self.progress_file.touch()
        self.env = clean_environment(
            {**manifest.env, **self.run.extra_env},
            {
                ENV_TASK_ID: self.run.task_id,
                ENV_ATTEMPT: str(self.run.attempt),
                ENV_PROGRESS_FILE: str(self.progress_file),
                ENV_CHECKPOINT_DIR: str(self.checkpoint_dir),
                "HOME": str(self.work_dir),
                "TMPDIR": str(self.work_dir / "tmp"),
            },
        )
        self.run.sandbox.hand_over(self.work_dir)
        return manifest.command()

    # -- polling -----------------------------------------------------------------------------

    def poll_progress(self) -> None:
        try:
            with self.progress_file.open("rb") as handle:
                handle.seek(self._progress_offset)
                data = handle.read(_PROGRESS_READ_MAX)
        except OSError:
            return  # the task removed or broke its own progress file: it loses progress only
        complete = data[: data.rfind(b"\n") + 1]
        if not complete and len(data) == _PROGRESS_READ_MAX:
            complete = data  # one absurdly long line: skip it rather than stall on it
        self._progress_offset += len(complete)
        latest = None
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
                fraction = float(entry["fraction"])
                message = str(entry.get("message", ""))[:_MESSAGE_MAX_CHARS]
            except (ValueError, KeyError, TypeError, AttributeError):
                _log.debug("task %s: ignoring progress line %r", self.run.task_id, line[:200])
                continue
            if math.isfinite(fraction):
                latest = (min(max(fraction, 0.0), 1.0), message)
        # Only the newest report of each poll is passed on: a task may report in a tight loop.
        if latest is not None and latest != self._last_progress:
            self._last_progress = latest
            _guarded(self.on_progress, *latest)

    def poll_checkpoint(self, final: bool) -> None:
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.send(final, functools.partial(_guarded, self.on_checkpoint))
        except BundleError as exc:
            _guarded(self.on_output, f"[hivemind] checkpoint not saved: {exc}\n")

    # -- running -----------------------------------------------------------------------------

    def spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        sandbox, memory = self.run.sandbox, self.run.memory_limit_mb * MIB
        self.cgroup = sandbox.cgroup_for(self.work_dir.name, memory, self.run.cpus)
        if self.cgroup is not None:
            guard.hold_cgroup(str(self.cgroup.path))
        argv = sandbox.command(command, self.work_dir, self.bundle_dir, memory, self.cgroup)
        process = subprocess.Popen(
            argv,
            cwd=self.bundle_dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        guard.hold(process.pid)
        return process

    def kill_cgroup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()
            guard.release_cgroup(str(self.cgroup.path))

    def watch(self, process: subprocess.Popen[bytes], cancel: threading.Event) -> str | None:
        """Poll until the task's leader exits; returns "timeout"/"cancelled" if we stop it."""
        timeout = self.run.timeout
        deadline = time.monotonic() + timeout if timeout > 0 else math.inf
        while not _leader_exited(process):
            if cancel.is_set():
                return "cancelled"
            if time.monotonic() >= deadline:
                return "timeout"
            self.poll_progress()
            self.poll_checkpoint(final=False)
            cancel.wait(_POLL_INTERVAL)
        return None

    def classify(self, stopped: str | None, returncode: int, pump: _OutputPump) -> RunOutcome:
        if stopped == "cancelled":
            return self.outcome("cancelled", None, "cancelled")
        if stopped == "timeout":
            return self.outcome("timeout", None, f"killed after {self.run.timeout:g} s timeout")
        if returncode == 0:
            return self.outcome("succeeded", 0, "")
        last = pump.last_stderr_line()
        if returncode == _LAUNCH_FAILED and last.startswith("cannot start "):
            return self.outcome("failed", returncode, last)
        limit = self.run.memory_limit_mb
        limit_text = f" (limit {limit} MiB)" if limit > 0 else ""
        if "MemoryError" in pump.stderr_tail:
            message = f"out of memory{limit_text}"
        elif returncode < 0:
            name = _signal_name(-returncode)
            message = f"killed by {name}"
            if -returncode == signal.SIGKILL and limit > 0:
                message += f", probably out of memory{limit_text}"
        else:
            message = f"exit code {returncode}"
        if last:
            message += f": {last}"
        return self.outcome("failed", returncode, message)

    def collect_result(self, outcome: RunOutcome) -> RunOutcome:
        if outcome.status == "cancelled":
            return outcome
        target = self.run.work_root / f"{_file_stem(self.run.task_id, self.run.attempt)}-result.zip"
        try:
            outcome.result_zip = zip_output(self.output_dir, target, self.run.max_output_size)
        except BundleError as exc:
            if outcome.status == "succeeded":
                outcome.status = "failed"
                outcome.error_message = str(exc)
            else:
                outcome.error_message += f"; {exc}"
        return outcome

    def execute(self, cancel: threading.Event) -> RunOutcome:
        try:
            command = self.prepare()
        except BundleError as exc:
            return self.outcome("failed", None, f"bundle refused: {exc}")
        try:
            process = self.spawn(command)
        except (OSError, subprocess.SubprocessError) as exc:
            self.kill_cgroup()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return self.outcome("failed", None, f"cannot start {command[0]!r}: {reason}")
        assert process.stdout is not None and process.stderr is not None
        pump = _OutputPump(process.stdout, process.stderr, self.on_output)
        stopped: str | None = None
        try:
            stopped = self.watch(process, cancel)
        finally:
            # Also on a normal exit: whatever the task left running in the background goes,
            # the cgroup first: it holds the setsid children the process group does not.
            self.kill_cgroup()
            _kill_group(process)
            pump.finish()
        self.poll_progress()
        self.poll_checkpoint(final=True)
        outcome = self.classify(stopped, process.returncode, pump)
        outcome = self.collect_result(outcome)
        outcome.duration = time.monotonic() - self.started
        return outcome


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _leader_exited(process: subprocess.Popen[bytes]) -> bool:
    # WNOWAIT leaves the leader a zombie, so its pid (the group id) cannot be reused before
    # the rest of the group has been killed.
    try:
        state = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return state is not None


def _group_alive(group: int) -> bool:
    """Whether any process of ``group`` still runs (zombies are dead, just not yet reaped)."""
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == group and psutil.Process(pid).status() not in _DEAD:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue  # exited while we looked
    return False


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the task's process group until no member runs, then reap the leader."""
    group = process.pid
    deadline = time.monotonic() + _REAP_TIMEOUT
    while True:
        # Repeated, in case a member forked while the previous signal was in flight.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        if not _group_alive(group):
            break
        if time.monotonic() > deadline:
            _log.warning("processes of task group %d still run after SIGKILL", group)
            break
        time.sleep(0.01)
    # Reaped only now: while the leader is a zombie its pid, the group id, cannot be reused.
    process.wait()
    guard.release(group)


def run_bundle(
    run: BundleRun,
    on_output: Callable[[str], None],
    on_progress: Callable[[float, str], None],
    on_checkpoint: Callable[[Path], None],
    cancel: threading.Event,
) -> RunOutcome:
    """Run one attempt of a bundle task; never raises for anything the task or bundle does.

    ``on_output`` gets decoded text as it comes: whole lines (with their newline), or a
    partial line once it has waited 200 ms. ``on_checkpoint`` gets a zip that is deleted
    when the call returns: copy or move it to keep it.
    """
    started = time.monotonic()
    prefix = f"{_file_stem(run.task_id, run.attempt)}-"
    try:
        run.work_root.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=run.sandbox.work_root(run.work_root)))
    except OSError as exc:
        message = f"worker cannot create a work dir: {exc}"
        return RunOutcome("failed", None, message, None, time.monotonic() - started)
    try:
        attempt = _Attempt(run, work_dir, on_output, on_progress, on_checkpoint)
        return attempt.execute(cancel)
    except OSError as exc:
        _log.exception("task %s attempt %d: worker-side failure", run.task_id, run.attempt)
        return RunOutcome("failed", None, f"worker error: {exc}", None, time.monotonic() - started)
    finally:
        _remove_tree(work_dir)
