"""A pid-file supervisor: start background services, check them, stop them.

Every service runs in its own session, with stdout/stderr appended to its log and a JSON
pid file (``{"pid", "cmdline", "started_at", "name"}``). The pid file records the command
line and the process's start time, so a pid is signalled only while it still belongs to
the process that was started: pids are recycled, and a stale pid file must never kill a
stranger. :mod:`hivemind.stack` builds `hivemind up/down/status` on top of this.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from hivemind.errors import StackError
from hivemind.logs import open_log_fd

EventSink = Callable[[str], None]
LOG_TAIL_LINES = 10
#: Slack when comparing a process's start time with the one its pid file recorded.
_START_TIME_SLACK = 1.0
_POLL = 0.1


def _ignore(_message: str) -> None:
    return None


# -- pid files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    cmdline: tuple[str, ...]
    #: The process's own start time (psutil ``create_time``), seconds since the epoch.
    started_at: float
    #: Its start in clock ticks since boot (/proc/PID/stat), immune to wall-clock steps;
    #: None where /proc is not there.
    start_ticks: int | None = None


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def write_pidfile(path: Path, record: PidRecord) -> None:
    data = {
        "pid": record.pid,
        "cmdline": list(record.cmdline),
        "started_at": record.started_at,
        "start_ticks": record.start_ticks,
        "name": record.name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_pidfile(path: Path) -> PidRecord | None:
    """The record in ``path``; None when the file is missing or not a valid pid file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return PidRecord(
            name=str(data.get("name") or path.stem),
            pid=int(data["pid"]),
            cmdline=tuple(str(arg) for arg in data["cmdline"]),
            started_at=float(data["started_at"]),
            start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


#: Children spawned by this process, kept so they are reaped (not left as zombies) and
#: so their exit is seen at once. Pids wrap (pid_max is often 32768), so an entry counts
#: only for the pid record whose start time it was written with.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILD_STARTED: dict[int, float] = {}


def _own_child(pid: int, started_at: float) -> subprocess.Popen[bytes] | None:
    """Our Popen for ``pid`` if it is the process that started at ``started_at``."""
    child = _CHILDREN.get(pid)
    if child is not None and _CHILD_STARTED.get(pid) != started_at:
        # A child of ours that is long gone; this pid now names another process.
        _forget_child(pid)
        return None
    return child


def _forget_child(pid: int) -> None:
    _CHILDREN.pop(pid, None)
    _CHILD_STARTED.pop(pid, None)


def _same_program(actual: Sequence[str], recorded: Sequence[str]) -> bool:
    if list(actual) == list(recorded):
        return True
    # Programs that retitle themselves keep argv[0] in front ("redis-server 127.0.0.1:6379").
    head = next((arg for arg in actual if arg), "")
    return bool(recorded) and head.startswith(recorded[0] + " ")


def _inspect(record: PidRecord) -> tuple[psutil.Process | None, str]:
    """The live process ``record`` describes, or None and why it is not there any more."""
    child = _own_child(record.pid, record.started_at)
    if child is not None and child.poll() is not None:
        _forget_child(record.pid)
        return None, f"pid {record.pid} exited with code {child.returncode}"
    try:
        proc = psutil.Process(record.pid)
        if child is not None:
            # Our own unreaped child: its pid cannot have been reused, so no need to compare
            # command lines (which a process may rewrite).
            return proc, ""
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None, f"pid {record.pid} has exited"
        ticks = start_ticks(record.pid) if record.start_ticks is not None else None
        if ticks is not None:
            same_start = ticks == record.start_ticks
        else:
            same_start = abs(proc.create_time() - record.started_at) <= _START_TIME_SLACK
        if not (same_start and _same_program(proc.cmdline(), record.cmdline)):
            return None, f"pid {record.pid} now belongs to another program ({proc.name()})"
    except psutil.NoSuchProcess:
        return None, f"pid {record.pid} is gone"
    except psutil.AccessDenied:
        return None, f"pid {record.pid} now belongs to another user's program"
    return proc, ""


def inspect_pidfile(pidfile: Path) -> tuple[PidRecord | None, psutil.Process | None, str]:
    """The record in ``pidfile``, its live process (None when stale) and why it is stale."""
    record = read_pidfile(pidfile)
    if record is None:
        return None, None, "unreadable pid file" if pidfile.exists() else "no pid file"
    proc, why = _inspect(record)
    return record, proc, why


def running_pid(pidfile: Path) -> int | None:
    """The pid of the live process ``pidfile`` names, else None."""
    record = read_pidfile(pidfile)
    if record is None:
        return None
    proc, _ = _inspect(record)
    return proc.pid if proc is not None else None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, start: int = 0) -> str:
    """The last ``lines`` lines of ``path`` after byte ``start``."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept) if kept else "(the log is empty)"


# -- services ----------------------------------------------------------------------------------


def _always_healthy() -> bool:
    return True


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one background service and how to tell that it is up."""

    name: str
    argv: Sequence[str]
    log: Path
    pidfile: Path
    health: Callable[[], bool] = _always_healthy
    #: The child's whole environment; None inherits this process's.
    env: Mapping[str, str] | None = None
    #: The child's umask (e.g. 0o027, so the files it creates are not world-readable);
    #: None keeps this process's.
    umask: int | None = None


@dataclass(frozen=True)
class StartedService:
    name: str
    pid: int
    #: False when the service was already running and was left alone.
    started: bool
    log: Path


@dataclass
class ServiceState:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    detail: str
    log: Path | None
    started_by_up: bool
    #: False for a service that is not installed; it does not count against health.
    enabled: bool = True


StopOutcome = Literal["stopped", "killed", "stale"]


@dataclass(frozen=True)
class StopResult:
    name: str
    pid: int | None
    outcome: StopOutcome
    detail: str

    @property
    def stopped(self) -> bool:
        return self.outcome != "stale"


@dataclass
class _Launch:
    spec: ServiceSpec
    pid: int
    proc: subprocess.Popen[bytes] | None
    log_offset: int


def _spawn(spec: ServiceSpec) -> _Launch:
    spec.log.parent.mkdir(parents=True, exist_ok=True)
    # 0640: a console log holds what a service printed, task output included.
    with os.fdopen(open_log_fd(spec.log), "ab") as log:
        offset = log.tell()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- {stamp} starting {spec.name}: {shlex.join(spec.argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if spec.env is None else dict(spec.env),
                start_new_session=True,
                umask=-1 if spec.umask is None else spec.umask,
            )
        except OSError as exc:
            raise StackError(f"cannot start {spec.name}: {spec.argv[0]}: {exc.strerror}") from None
    # Popen returns after the exec, so this is the start time of the service itself.
    started_at = psutil.Process(proc.pid).create_time()
    _CHILDREN[proc.pid] = proc
    _CHILD_STARTED[proc.pid] = started_at
    record = PidRecord(spec.name, proc.pid, tuple(spec.argv), started_at, start_ticks(proc.pid))
    write_pidfile(spec.pidfile, record)
    return _Launch(spec, proc.pid, proc, offset)


def _claim(spec: ServiceSpec, emit: EventSink) -> _Launch | None:
    """The already running instance of ``spec``, after clearing a stale pid file."""
    if not spec.pidfile.exists():
        return None
    record = read_pidfile(spec.pidfile)
    if record is None:
        spec.pidfile.unlink(missing_ok=True)
        emit(f"removed unreadable pid file {spec.pidfile}")
        return None
    proc, why = _inspect(record)
    if proc is None:
        spec.pidfile.unlink(missing_ok=True)
        emit(f"removed stale pid file {spec.pidfile}: {why}")
        return None
    offset = spec.log.stat().st_size if spec.log.exists() else 0
    return _Launch(spec, proc.pid, None, offset)


def _exit_text(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def _await_health(launch: _Launch, timeout: float) -> None:
    spec = launch.spec
    deadline = time.monotonic() + timeout
    while True:
        code = launch.proc.poll() if launch.proc is not None else None
        if code is not None:
            _forget_child(launch.pid)
            spec.pidfile.unlink(missing_ok=True)
            raise StackError(
                f"{spec.name} {_exit_text(code)} while starting; last lines of {spec.log}:\n"
                + log_tail(spec.log, start=launch.log_offset)
            )
        if launch.proc is None and running_pid(spec.pidfile) != launch.pid:
            raise StackError(
                f"{spec.name} (pid {launch.pid}) stopped while waiting to become healthy; "
                f"last lines of {spec.log}:\n" + log_tail(spec.log)
            )
        if spec.health():
            if launch.proc is None or launch.proc.poll() is None:
                return
            continue  # it answered and died: report the exit above
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    tail = log_tail(spec.log, start=launch.log_offset)
    if launch.proc is None:
        raise StackError(
            f"{spec.name} is already running (pid {launch.pid}, {spec.pidfile}) but is not "
            f"healthy after {timeout:g} s; if its settings changed, run `hivemind down` "
            f"first. Last lines of {spec.log}:\n{tail}"
        )
    _stop_process(psutil.Process(launch.pid), 5.0)
    spec.pidfile.unlink(missing_ok=True)
    raise StackError(
        f"{spec.name} (pid {launch.pid}) did not become healthy within {timeout:g} s and "
        f"was stopped; last lines of {spec.log}:\n{tail}"
    )


def start_services(
    specs: Sequence[ServiceSpec], timeout: float = 30.0, on_event: EventSink | None = None
) -> list[StartedService]:
    """Start the services that are not running, then wait until each one is healthy.

    All are launched before any is waited for, so they start in parallel. A service that
    dies or stays unhealthy for ``timeout`` seconds raises :class:`StackError` with the
    tail of its log; one that this call started is stopped first.
    """
    emit = on_event or _ignore
    launches: list[_Launch] = []
    for spec in specs:
        launch = _claim(spec, emit)
        if launch is None:
            launch = _spawn(spec)
            emit(f"started {spec.name} (pid {launch.pid}), log: {spec.log}")
        else:
            emit(f"{spec.name} already running (pid {launch.pid})")
        launches.append(launch)
    for launch in launches:
        _await_health(launch, timeout)
        if launch.proc is not None:
            emit(f"{launch.spec.name} is up")
    return [
        StartedService(launch.spec.name, launch.pid, launch.proc is not None, launch.spec.log)
        for launch in launches
    ]


def start_service(
    spec: ServiceSpec, timeout: float = 30.0, on_event: EventSink | None = None
) -> StartedService:
    return start_services([spec], timeout, on_event)[0]


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    child = _own_child(proc.pid, proc.create_time())
    try:
        if child is not None:
            child.wait(timeout)
            _forget_child(proc.pid)
        else:
            proc.wait(timeout)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        return False
    return True


def _kill(proc: psutil.Process) -> None:
    if not proc.is_running():  # gone: its pid may already name another process
        return
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        # The service leads its own session: kill what it spawned too, not only itself.
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


def _stop_process(proc: psutil.Process, timeout: float) -> bool:
    """SIGTERM, wait, SIGKILL. True when the process exited on SIGTERM."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
    if _wait_gone(proc, timeout):
        return True
    _kill(proc)
    _wait_gone(proc, 5.0)
    return False


def stop_services(
    pidfiles: Sequence[Path], timeout: float = 10.0, on_event: EventSink | None = None
) -> list[StopResult]:
    """Stop the processes the pid files name, all at once; remove the pid files.

    A pid file whose process is gone, or whose pid now belongs to another program, is
    only removed: nothing is signalled.
    """
    emit = on_event or _ignore
    results: list[StopResult] = []
    stopping: list[tuple[Path, PidRecord, psutil.Process]] = []
    for pidfile in pidfiles:
        record = read_pidfile(pidfile)
        if record is None:
            if pidfile.exists():
                pidfile.unlink(missing_ok=True)
                detail = f"removed unreadable pid file {pidfile}"
                emit(detail)
                results.append(StopResult(pidfile.stem, None, "stale", detail))
            continue
        proc, why = _inspect(record)
        if proc is None:
            pidfile.unlink(missing_ok=True)
            detail = f"removed stale pid file {pidfile}: {why}"
            emit(detail)
            results.append(StopResult(record.name, record.pid, "stale", detail))
            continue
        emit(f"stopping {record.name} (pid {record.pid})")
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
        stopping.append((pidfile, record, proc))
    deadline = time.monotonic() + timeout
    for pidfile, record, proc in stopping:
        if _wait_gone(proc, max(deadline - time.monotonic(), 0.0)):
            outcome: StopOutcome = "stopped"
            detail = f"stopped {record.name} (pid {record.pid})"
        else:
            _kill(proc)
            _wait_gone(proc, 5.0)
            outcome = "killed"
            detail = (
                f"killed {record.name} (pid {record.pid}): "
                f"still running {timeout:g} s after SIGTERM"
            )
        pidfile.unlink(missing_ok=True)
        emit(detail)
        results.append(StopResult(record.name, record.pid, outcome, detail))
    return results


def stop_pid(pidfile: Path, timeout: float = 10.0) -> bool:
    """Stop the process ``pidfile`` names; True if something was stopped."""
    return any(result.stopped for result in stop_services([pidfile], timeout))


def service_state(
    name: str, pidfile: Path, health: Callable[[], bool], log: Path | None = None
) -> ServiceState:
    """What ``pidfile`` says about a service, checked against the live process table."""
    record = read_pidfile(pidfile)
    if record is None:
        if pidfile.exists():
            return ServiceState(
                name, None, False, False, f"unreadable pid file {pidfile}", log, True
            )
        return ServiceState(name, None, False, False, "not running", log, False)
    proc, why = _inspect(record)
    if proc is None:
        return ServiceState(name, record.pid, False, False, f"stale pid file: {why}", log, True)
    healthy = health()
    detail = f"running (pid {record.pid})" + ("" if healthy else " but not healthy")
    return ServiceState(name, record.pid, True, healthy, detail, log, True)
