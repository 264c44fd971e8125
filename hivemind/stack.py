"""The local stack behind `hivemind up/down/status`.

`up` starts Redis (unless one answers at REDIS_URL), the node pool, the master (when
installed) and local workers, each supervised through a pid file in ``$HIVEMIND_HOME/run``
(:mod:`hivemind.supervisor`); `down` stops only what has a pid file, in reverse order.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hivemind import ha_stack
from hivemind.client_certs import ensure_node_pool_files
from hivemind.config import (
    ENV_PREFIX,
    SECRET_SETTINGS,
    Settings,
    effective_redis_url,
    is_local_redis_url,
    redact_url,
    redis_password_source,
    redis_url_with_password,
    url_password,
)
from hivemind.errors import StackError
from hivemind.paths import HomeLayout, layout
from hivemind.redis_client import describe_redis, sentinel_target
from hivemind.redis_server import (
    Answer,
    ensure_password_file,
    redis_answers,
    redis_reply,
    start_redis,
)
from hivemind.service_health import grpc_serving, port_listening, worker_online
from hivemind.supervisor import (
    EventSink,
    ServiceSpec,
    ServiceState,
    StopResult,
    running_pid,
    service_state,
    start_service,
    start_services,
    stop_services,
)
from hivemind.tls import client_security, server_uses_tls

#: The command that runs `hivemind` subcommands as children.
DEFAULT_LAUNCHER: tuple[str, ...] = (sys.executable, "-m", "hivemind")


def _ignore(_message: str) -> None:
    return None


@dataclass
class StackStatus:
    services: list[ServiceState]
    redis_url: str
    embedded_redis: bool
    #: What `down` stopped or cleared; empty for `up` and `status`.
    stopped: list[StopResult] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(service.healthy for service in self.services if service.enabled)


def master_installed() -> bool:
    return importlib.util.find_spec("hivemind.master") is not None


def child_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) plus every setting as HIVEMIND_<NAME>.

    Children then see exactly the settings `up` was given, whatever file or variable they
    came from. Empty secrets are left out, so a child falls back to its own (secret.key).
    """
    env = dict(os.environ if base is None else base)
    for f in fields(settings):
        var = ENV_PREFIX + f.name.upper()
        value = getattr(settings, f.name)
        if f.name in SECRET_SETTINGS and not value:
            env.pop(var, None)
        elif f.name == "home":
            env[var] = str(layout(value).root)
        else:
            env[var] = str(value)
    return env


def _pidfile(home: HomeLayout, service: str) -> Path:
    return home.run / f"{service}.pid"


def _console(log: Path) -> Path:
    """Where a service's stdout/stderr go: next to the log it writes itself, never into it.

    The services write their own log files (``nodepool.log`` …); appending their console
    to the same file would double every line.
    """
    return log.with_suffix(".out")


def worker_spec_paths(home: HomeLayout, node_id: str) -> tuple[Path, Path]:
    """(pid file, console log) of worker ``node_id``: where `up`, `down` and `join` look."""
    return _pidfile(home, f"worker-{node_id}"), _worker_console(home, node_id)


def _worker_console(home: HomeLayout, node_id: str) -> Path:
    return home.worker_log.with_name(f"worker-{node_id}.out")


def _natural_key(path: Path) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem)]


def _worker_pidfiles(home: HomeLayout) -> list[Path]:
    return sorted(home.run.glob("worker-*.pid"), key=_natural_key) if home.run.is_dir() else []


@contextlib.contextmanager
def _stack_lock(home: HomeLayout) -> Iterator[None]:
    """One `up` or `down` at a time per home, or two could start the same service."""
    fd = os.open(home.run / "stack.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(
                f"another `hivemind up` or `hivemind down` is working on {home.root}; "
                "wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _refused(settings: Settings, home: HomeLayout, error: str) -> str:
    """Why a Redis that answers refuses our credentials, and what to do about it."""
    shown = redact_url(settings.redis_url)
    source = redis_password_source(settings)
    file = home.redis_password_file
    if not source:
        text = (
            f"a Redis answers at {shown} but needs a password ({error}): put it in "
            "REDIS_PASSWORD or in REDIS_URL (redis://:PASSWORD@host:port/db)"
        )
        pid = running_pid(_pidfile(home, "redis"))
        if pid is not None:
            text += (
                f"; it is the Redis `hivemind up` started (pid {pid}) and {file} is gone: "
                "`hivemind down` stops it, and the next `hivemind up` starts it again with "
                "a new password"
            )
        return text
    if source == str(file):
        return (
            f"a Redis answers at {shown} but refuses the password in {file} ({error}); that "
            "file holds the password of the Redis `hivemind up` starts: if this Redis is "
            "another one, put its own password in REDIS_PASSWORD (or REDIS_URL)"
        )
    return f"a Redis answers at {shown} but refuses the password from {source} ({error})"


def _ensure_redis(settings: Settings, home: HomeLayout, timeout: float, emit: EventSink) -> None:
    url = effective_redis_url(settings)
    pidfile = _pidfile(home, "redis")
    answer, error = redis_reply(url)
    if answer is Answer.PONG:
        pid = running_pid(pidfile)
        if pid is None:
            emit(f"using the Redis at {redact_url(settings.redis_url)}")
            return
        emit(f"redis already running (pid {pid})")
        if url_password(url) is None:
            emit(
                "warning: that Redis has no password (it was started without one); "
                "`hivemind down` then `hivemind up` restarts it with a generated one"
            )
        return
    if answer is Answer.REFUSED:
        raise StackError(_refused(settings, home, error))
    if sentinel_target(settings) is not None:
        raise StackError(f"no Redis primary through {describe_redis(settings)}: {error}")
    plain = settings.redis_url
    if url_password(plain) is None and not settings.redis_password and is_local_redis_url(plain):
        # Our own Redis gets a password: generated once (0600), reused by every later start.
        url = redis_url_with_password(plain, ensure_password_file(home.redis_password_file))
    start_redis(
        url, home.redis_dir, pidfile, home.redis_dir / "redis.log", wait=timeout, on_event=emit
    )


def ensure_redis(
    settings: Settings, timeout: float = 60.0, on_event: EventSink | None = None
) -> bool:
    """Start Redis the way `up` does unless one answers at REDIS_URL; True if it started one.

    For tools that need Redis while the rest of the stack is stopped (restore).
    """
    if redis_answers(effective_redis_url(settings)):
        return False
    home = layout(settings.home).ensure()
    _ensure_redis(settings, home, timeout, on_event or _ignore)
    return True


def stop_redis(settings: Settings, on_event: EventSink | None = None) -> None:
    """Stop the Redis `up` (or :func:`ensure_redis`) started, if its pid file says so."""
    pidfile = _pidfile(layout(settings.home), "redis")
    if pidfile.exists():
        stop_services([pidfile], 10.0, on_event or _ignore)


def _start_unless_answering(
    spec: ServiceSpec, address: str, timeout: float, emit: EventSink
) -> None:
    if running_pid(spec.pidfile) is None and spec.health():
        emit(f"{spec.name} already answers at {address} (not started by `hivemind up`); using it")
        return
    start_service(spec, timeout, emit)


def up(
    settings: Settings,
    workers: int = 1,
    timeout: float = 60.0,
    on_event: EventSink | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    launcher: Sequence[str] = DEFAULT_LAUNCHER,
    ha: bool = False,
) -> StackStatus:
    """Start Redis (unless one answers), the node pool, the master and ``workers`` workers.

    Services already running are left alone. Each gets ``timeout`` seconds to become
    healthy. ``config`` is passed on to the node pool as ``--config``; ``launcher`` is the
    command that runs ``hivemind`` subcommands. ``ha``: three Redis, three Sentinels and
    two node pools instead (:mod:`hivemind.ha_stack`); ``settings`` must then be the ones
    :func:`hivemind.ha_stack.ha_settings` gives.
    """
    if workers < 0:
        raise StackError(f"the number of workers must not be negative, got {workers}")
    emit = on_event or _ignore
    home = layout(settings.home).ensure()
    with _stack_lock(home):
        _record_shape(home, workers, config, ha)
        for service in STACK_SERVICES:
            _start_one(settings, home, service, workers, timeout, emit, config, launcher, ha)
    return status(settings)


#: The services of the stack, in the order `up` starts them.
STACK_SERVICES = ("redis", "nodepool", "master", "workers")


def _shape_file(home: HomeLayout) -> Path:
    return home.run / "stack.json"


def _record_shape(
    home: HomeLayout, workers: int, config: str | os.PathLike[str] | None, ha: bool
) -> None:
    """What `up` was asked for, so a recovery can start the same stack after a crash that
    also lost pid files."""
    shape = {
        "workers": workers,
        "config": str(Path(config).absolute()) if config else None,
        "ha": ha,
    }
    _shape_file(home).write_text(json.dumps(shape) + "\n", encoding="utf-8")


def recorded_shape(settings: Settings) -> dict[str, Any]:
    """``{"workers": n, "config": path|None}`` of the last `up`, or the defaults."""
    try:
        shape = json.loads(_shape_file(layout(settings.home)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        shape = {}
    workers = shape.get("workers")
    return {
        "workers": workers if isinstance(workers, int) and workers >= 0 else 1,
        "config": shape.get("config") if isinstance(shape.get("config"), str) else None,
        "ha": shape.get("ha") is True,
    }


def _start_one(
    settings: Settings,
    home: HomeLayout,
    service: str,
    workers: int,
    timeout: float,
    emit: EventSink,
    config: str | os.PathLike[str] | None,
    launcher: Sequence[str],
    ha: bool = False,
) -> None:
    if service == "redis":
        if ha:
            ha_stack.start_redis_set(settings, home, timeout, emit)
        else:
            _ensure_redis(settings, home, timeout, emit)
        return
    env = child_environment(settings)
    if service == "nodepool":
        if server_uses_tls(settings):
            # Made here, before it starts, so the first health check can already verify it.
            _files, made = ensure_node_pool_files(settings)
            if made:
                emit(f"TLS: {made}")
        extra = ["--config", str(Path(config).absolute())] if config else []
        if ha:
            argv = [*launcher, "nodepool", *extra]
            ha_stack.start_nodepools(
                settings, home, child_environment, argv, _console, timeout, emit
            )
            return
        nodepool = ServiceSpec(
            name="node pool",
            argv=[*launcher, "nodepool", *extra],
            log=_console(home.nodepool_log),
            pidfile=_pidfile(home, "nodepool"),
            # Read each time: the node pool makes its CA on its first TLS start.
            health=lambda: grpc_serving(
                settings.client_address, security=client_security(settings)
            ),
            env=env,
        )
        _start_unless_answering(nodepool, settings.client_address, timeout, emit)
    elif service == "master":
        if not master_installed():
            emit("master not installed; skipped")
            return
        master = ServiceSpec(
            name="master",
            argv=[*launcher, "master"],
            log=_console(home.master_log),
            pidfile=_pidfile(home, "master"),
            health=lambda: port_listening(settings.master_host, settings.master_port),
            env=env,
        )
        _start_unless_answering(master, f"port {settings.master_port}", timeout, emit)
    else:
        start_services(_worker_specs(settings, home, workers, env, launcher), timeout, emit)


def start_named(
    settings: Settings,
    service: str,
    timeout: float = 60.0,
    on_event: EventSink | None = None,
    *,
    launcher: Sequence[str] = DEFAULT_LAUNCHER,
) -> None:
    """Start one service of the stack (``redis``, ``nodepool``, ``master`` or ``workers``)
    as the last `up` did, unless it runs; wait until it is healthy."""
    if service not in STACK_SERVICES:
        raise StackError(f"unknown service {service!r} (one of {', '.join(STACK_SERVICES)})")
    home = layout(settings.home).ensure()
    shape = recorded_shape(settings)
    with _stack_lock(home):
        _start_one(
            settings,
            home,
            service,
            shape["workers"],
            timeout,
            on_event or _ignore,
            shape["config"],
            launcher,
            shape["ha"],
        )


def stop_named(
    settings: Settings, service: str, on_event: EventSink | None = None
) -> list[StopResult]:
    """Stop one service of the stack, if `up` started it (it has a pid file)."""
    if service not in STACK_SERVICES:
        raise StackError(f"unknown service {service!r} (one of {', '.join(STACK_SERVICES)})")
    emit = on_event or _ignore
    home = layout(settings.home)
    if not home.run.is_dir():
        return []
    with _stack_lock(home):
        if service == "workers":
            pidfiles = list(reversed(_worker_pidfiles(home)))
            return stop_services(pidfiles, settings.shutdown_grace + 5.0, emit)
        pidfile = _pidfile(home, service)
        return stop_services([pidfile], 10.0, emit) if pidfile.exists() else []


def _worker_specs(
    settings: Settings,
    home: HomeLayout,
    count: int,
    env: Mapping[str, str],
    launcher: Sequence[str],
) -> list[ServiceSpec]:
    specs = []
    for number in range(1, count + 1):
        node_id = f"local-{number}"
        pidfile = _pidfile(home, f"worker-{node_id}")
        worker_env = dict(env)
        if running_pid(pidfile) is None:
            # Imported here: hivemind.auth pulls in the token machinery only `up` needs.
            from hivemind.auth import issue_worker_token

            worker_env["HIVEMIND_WORKER_TOKEN"] = issue_worker_token(settings, node_id)
        if settings.require_client_cert:
            from hivemind.client_certs import issue_local

            issue_local(settings, node_id)  # mutual TLS: each worker presents its own
        specs.append(
            ServiceSpec(
                name=f"worker {node_id}",
                argv=[*launcher, "worker", "--node-id", node_id],
                log=_worker_console(home, node_id),
                pidfile=pidfile,
                health=lambda node_id=node_id: worker_online(settings, node_id),
                env=worker_env,
            )
        )
    return specs


def down(settings: Settings, on_event: EventSink | None = None) -> StackStatus:
    """Stop what `up` started (only services with pid files): workers, master, node pool, Redis.

    Returns the status afterwards, whose ``stopped`` lists what was stopped or cleared.
    """
    emit = on_event or _ignore
    home = layout(settings.home)
    results: list[StopResult] = []
    if home.run.is_dir():
        with _stack_lock(home):
            # A worker gets its shutdown grace to hand its tasks back, plus time to say so.
            results += stop_services(
                list(reversed(_worker_pidfiles(home))), settings.shutdown_grace + 5.0, emit
            )
            for service in ("master", "nodepool", "redis"):
                pidfile = _pidfile(home, service)
                if pidfile.exists():
                    results += stop_services([pidfile], 10.0, emit)
                if service == "nodepool":  # the rest of an `up --ha`, in its own order
                    for pidfile in ha_stack.recorded_pidfiles(home):
                        results += stop_services([pidfile], 10.0, emit)
    if not results:
        emit("nothing to stop: `hivemind up` started nothing that is still recorded")
    after = status(settings)
    after.stopped = results
    return after


def _with_outsider(state: ServiceState, health: Callable[[], bool], where: str) -> ServiceState:
    """A service without a pid file may still run, started by someone else."""
    if state.started_by_up or not health():
        return state
    detail = f"answers at {where}; not started by `hivemind up`"
    return ServiceState(state.name, None, True, True, detail, None, False)


def status(settings: Settings) -> StackStatus:
    """The state of every service of the stack. Reads only; changes nothing."""
    home = layout(settings.home)
    url = effective_redis_url(settings)
    shown = redact_url(settings.redis_url)
    redis_pidfile = _pidfile(home, "redis")
    redis_log = home.redis_dir / "redis.log"

    def redis_health() -> bool:
        return redis_answers(url)

    redis_state = service_state("redis", redis_pidfile, redis_health, redis_log)
    redis_state = _with_outsider(redis_state, redis_health, shown)
    if not redis_state.healthy:
        # "Answers but refuses our password" is a Redis that runs, not a missing one.
        answer, error = redis_reply(url)
        if answer is Answer.REFUSED:
            why = f"answers at {shown} but refuses our credentials ({error})"
            if redis_state.started_by_up:
                redis_state.detail += f"; it {why}"
            else:
                redis_state = ServiceState(
                    "redis", None, True, False, f"{why}; not started by `hivemind up`", None, False
                )
    if not redis_state.running:
        redis_state.detail += f"; no Redis answers at {shown}"

    own_address = settings.client_address.split(",")[0]  # of a list, the first is this one

    def nodepool_health() -> bool:
        return grpc_serving(own_address, security=client_security(settings))

    nodepool = service_state(
        "node pool", _pidfile(home, "nodepool"), nodepool_health, _console(home.nodepool_log)
    )
    services = [redis_state, _with_outsider(nodepool, nodepool_health, own_address)]
    services += ha_stack.service_states(settings, home)

    if master_installed():

        def master_health() -> bool:
            return port_listening(settings.master_host, settings.master_port)

        master = service_state(
            "master", _pidfile(home, "master"), master_health, _console(home.master_log)
        )
        services.append(_with_outsider(master, master_health, f"port {settings.master_port}"))
    else:
        services.append(
            ServiceState("master", None, False, False, "not installed", None, False, enabled=False)
        )

    for pidfile in _worker_pidfiles(home):
        node_id = pidfile.stem.removeprefix("worker-")
        services.append(
            service_state(
                f"worker {node_id}",
                pidfile,
                lambda node_id=node_id: worker_online(settings, node_id),
                _worker_console(home, node_id),
            )
        )
    return StackStatus(services, shown, embedded_redis=redis_pidfile.exists())


def _stack_pidfiles(home: HomeLayout) -> list[Path]:
    return sorted(home.run.glob("*.pid")) if home.run.is_dir() else []


def run_foreground(
    settings: Settings,
    workers: int = 1,
    timeout: float = 60.0,
    on_event: EventSink | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    launcher: Sequence[str] = DEFAULT_LAUNCHER,
) -> int:
    """`up --foreground`: start the stack, wait for SIGINT/SIGTERM, then stop it all.

    Returns 0 after a requested stop, 1 when a service exited on its own (the rest is
    then stopped too) and 130 when interrupted during start-up.
    """
    emit = on_event or _ignore
    home = layout(settings.home).ensure()
    live = [p.stem for p in _stack_pidfiles(home) if running_pid(p) is not None]
    if live:
        raise StackError(
            f"the stack already runs in the background ({', '.join(live)}); "
            "run `hivemind down` first"
        )
    stop = threading.Event()

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    def request_stop(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        # Until everything is up, a stop signal aborts the start-up at once.
        signal.signal(signal.SIGTERM, interrupt)
        up(settings, workers, timeout, emit, config=config, launcher=launcher)
        for sig in previous:
            signal.signal(sig, request_stop)
        emit("the stack is up; press Ctrl-C to stop it")
        while not stop.wait(0.5):
            gone = [p.stem for p in _stack_pidfiles(home) if running_pid(p) is None]
            if gone:
                emit(f"{', '.join(gone)} exited; stopping the stack")
                code = 1
                break
    except KeyboardInterrupt:
        code = 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        down(settings, emit)
    return code
