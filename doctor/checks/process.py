"""Which HiveMind daemons of this HIVEMIND_HOME run here (the guide's `ps aux | grep
node_pool_server`).

A daemon is this home's when a pid file in ``$HIVEMIND_HOME/run`` names it, or, for one
started without a pid file (by hand, by systemd), when its environment, config file or parent
ties it to this home. Another stack on the same host (another HIVEMIND_HOME) is named on a
line of its own and never counted as one of ours; a process whose environment cannot be read
(another user's) is not ours either.

It reads this host's process table (psutil); over SSH it runs inside the remote host's own
`hivemind doctor`, where HIVEMIND_HOME is the remote's.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from doctor.context import Context
from doctor.daemons import pidfile_states
from doctor.fixes import Action, fixer
from doctor.model import Finding
from doctor.registry import check
from doctor.services import UNITS, systemd_unit
from hivemind.config import CONFIG_FILE_NAME
from hivemind.remote import LocalRunner
from hivemind.supervisor import inspect_pidfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: Subcommands of `hivemind` that are daemons.
DAEMONS = ("nodepool", "master", "worker")
#: Options of `hivemind` (and of its daemons) that take a value.
_VALUE_OPTIONS = ("--config", "--node-id")
#: How many processes of other homes the summary names.
_SHOWN_OTHERS = 5

#: Reads the ``home`` a config file sets: (the file exists, its HOME or None).
ConfigReader = Callable[[Path], tuple[bool, "str | None"]]


def _describe(proc: psutil.Process) -> dict[str, Any]:
    with proc.oneshot():
        return {
            "pid": proc.pid,
            "uptime_s": round(time.time() - proc.create_time()),
            "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        }


# -- pure: what a command line and an environment say -------------------------------------------


def parse_daemon_cmdline(cmdline: Sequence[str]) -> tuple[str | None, str | None]:
    """(``nodepool``/``master``/``worker`` or None, the ``--config`` it was given or None)."""
    for index, arg in enumerate(cmdline):
        name = os.path.basename(arg)
        if name == "hivemind" or (
            arg == "-m" and list(cmdline[index + 1 : index + 2]) == ["hivemind"]
        ):
            rest = list(cmdline[index + (2 if arg == "-m" else 1) :])
            verb: str | None = None
            config: str | None = None
            skip_next = False
            for position, word in enumerate(rest):
                if skip_next:
                    skip_next = False
                    continue
                option, eq, value = word.partition("=")
                if option in _VALUE_OPTIONS:
                    if not eq:
                        value = rest[position + 1] if position + 1 < len(rest) else ""
                        skip_next = True
                    if option == "--config" and value:
                        config = value
                    continue
                if word.startswith("-"):
                    continue
                if verb is None:
                    verb = word
            return (verb if verb in DAEMONS else None), config
    return None, None


def daemon_kind(cmdline: Sequence[str]) -> str | None:
    """``nodepool``/``master``/``worker`` for a HiveMind daemon's command line, else None."""
    return parse_daemon_cmdline(cmdline)[0]


def _absolute(value: str, cwd: str | None, environ: Mapping[str, str]) -> Path | None:
    """``value`` as the process saw it: ``~`` is its own HOME, a relative path its cwd's."""
    if value == "~" or value.startswith("~/"):
        user_home = environ.get("HOME")
        if not user_home:
            return None
        value = user_home + value[1:]
    path = Path(value)
    if not path.is_absolute():
        if not cwd:
            return None
        path = Path(cwd) / path
    return Path(os.path.normpath(path))


def _no_config(_path: Path) -> tuple[bool, str | None]:
    return False, None


def claimed_home(
    environ: Mapping[str, str] | None,
    cwd: str | None,
    cmdline: Sequence[str],
    read_config: ConfigReader = _no_config,
) -> Path | None:
    """The HIVEMIND_HOME a HiveMind process runs with, as its settings would load it
    (HIVEMIND_HOME, else HOME in its config file, else ``$HOME/.hivemind``); None when that
    cannot be told (its environment could not be read)."""
    if environ is None:
        return None
    explicit = environ.get("HIVEMIND_HOME")
    if explicit:
        return _absolute(explicit, cwd, environ)
    default = _absolute("~/.hivemind", cwd, environ)
    named = parse_daemon_cmdline(cmdline)[1] or environ.get("HIVEMIND_CONFIG")
    if named:
        candidates = [_absolute(named, cwd, environ)]
    else:
        candidates = [
            _absolute(CONFIG_FILE_NAME, cwd, environ),
            default / CONFIG_FILE_NAME if default else None,
        ]
    for candidate in candidates:
        if candidate is None:
            return None
        exists, home = read_config(candidate)
        if exists:
            return _absolute(home, cwd, environ) if home else default
        if named:
            return None  # a named config that is not there: this process cannot have started
    return default


def same_home(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def others_line(others: Sequence[Mapping[str, Any]]) -> str:
    """``2 HiveMind processes of other homes: nodepool (pid 7, /srv/b), …``."""
    if not others:
        return ""
    shown = [
        f"{d['service']} (pid {d['pid']}, {d['home'] or 'home unknown'})"
        for d in others[:_SHOWN_OTHERS]
    ]
    if len(others) > _SHOWN_OTHERS:
        shown.append(f"{len(others) - _SHOWN_OTHERS} more")
    noun = "process" if len(others) == 1 else "processes"
    return f"{len(others)} HiveMind {noun} of other homes (not counted): {', '.join(shown)}"


# -- the process table --------------------------------------------------------------------------


def _read_config_home(path: Path) -> tuple[bool, str | None]:
    try:
        if not path.is_file():
            return False, None
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, ValueError):
        return True, None  # there but unreadable to us: assume it sets no HOME
    home = next((v for k, v in data.items() if k.lower() == "home"), None)
    return True, home if isinstance(home, str) and home else None


def _home_of(proc: psutil.Process, cmdline: Sequence[str]) -> Path | None:
    """The home ``proc`` runs with; None when its environment is not readable to us."""
    try:
        environ = proc.environ()
    except (psutil.Error, OSError):
        return None
    try:
        cwd: str | None = proc.cwd()
    except (psutil.Error, OSError):
        cwd = None
    return claimed_home(environ, cwd, cmdline, _read_config_home)


def _descends_from(proc: psutil.Process, pids: set[int]) -> int | None:
    try:
        for parent in proc.parents():
            if parent.pid in pids:
                return parent.pid
    except (psutil.Error, OSError):
        return None
    return None


def scan_daemons(
    home: Path, known_pids: set[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """HiveMind daemons with no pid file of ours: (this home's, other homes' or unknown)."""
    ours: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    try:
        procs = list(psutil.process_iter(["pid", "cmdline"]))
    except (psutil.Error, OSError):
        return ours, others
    for proc in procs:
        if proc.pid in known_pids or proc.pid == os.getpid():
            continue
        cmdline = proc.info.get("cmdline") or []
        kind = daemon_kind(cmdline)
        if not kind:
            continue
        try:
            parent = _descends_from(proc, known_pids)
            claimed = _home_of(proc, cmdline) if parent is None else home
            if claimed is not None and same_home(claimed, home):
                tie = f"child of pid {parent}" if parent is not None else "its environment"
                ours.append({"service": kind, "tied_by": tie, **_describe(proc)})
            else:
                others.append(
                    {"service": kind, "pid": proc.pid, "home": str(claimed) if claimed else None}
                )
        except psutil.Error:
            continue
    return ours, others


def unmanaged_daemons(known_pids: set[int], home: Path) -> list[dict[str, Any]]:
    """This home's HiveMind daemons running with no pid file of ours (started by hand or by
    systemd)."""
    return scan_daemons(home, known_pids)[0]


def stale_pidfiles(ctx: Context) -> dict[Path, str]:
    return {path: why for path, (_r, proc, why) in pidfile_states(ctx).items() if proc is None}


def inactive_units(ctx: Context) -> list[str]:
    """Our systemd units that are enabled but not active (empty where systemd is absent)."""
    if not Path("/run/systemd/system").is_dir():
        return []
    inactive = []
    for service in ("nodepool", "master"):
        unit = systemd_unit(service)
        if unit is None:
            continue
        enabled = ctx.run(["systemctl", "is-enabled", unit]).stdout.strip()
        active = ctx.run(["systemctl", "is-active", unit]).stdout.strip()
        if enabled == "enabled" and active != "active":
            inactive.append(unit)
    return inactive


@check(
    "process.services",
    title="HiveMind daemons run, and no pid file is stale",
    guide="1 無法連接到 Node Pool: ps aux | grep node_pool_server",
    fixable=True,
)
def services(ctx: Context) -> Finding:
    if not isinstance(ctx.runner, LocalRunner):
        return Finding.skip(
            f"reads this host's process table; on {ctx.host} it runs in that host's own "
            "`hivemind doctor`"
        )
    running: dict[str, dict[str, Any]] = {}
    stale: dict[str, str] = {}
    for path, (record, proc, why) in pidfile_states(ctx).items():
        if proc is None:
            stale[path.name] = why
            continue
        try:
            running[path.stem] = _describe(proc)
        except psutil.Error as exc:
            stale[path.name] = f"pid {record.pid if record else '?'}: {exc}"
    known = {info["pid"] for info in running.values()}
    unmanaged, others = scan_daemons(ctx.home.root, known)
    evidence: dict[str, Any] = {
        "home": str(ctx.home.root),
        "run_dir": str(ctx.home.run),
        "running": running,
        "stale_pid_files": stale,
        "unmanaged": unmanaged,
        "other_homes": others,
    }
    also = others_line(others)
    tail = f"; {also}" if also else ""
    inactive = inactive_units(ctx)
    if inactive:
        evidence["inactive_units"] = inactive
        return Finding.fail(
            f"installed but not running: {', '.join(inactive)}{tail}",
            " && ".join(f"sudo systemctl restart {unit}" for unit in inactive),
            **evidence,
        )
    if stale:
        names = ", ".join(f"{name} ({why})" for name, why in stale.items())
        return Finding.warn(
            f"stale pid file(s): {names}{tail}",
            "remove them (hivemind doctor --fix --only process.services), then hivemind up",
            **evidence,
        )
    if not running and not unmanaged:
        return Finding.skip(
            f"no HiveMind daemon of {ctx.home.root} runs on this host and none is configured "
            f"(no pid files in {ctx.home.run}, no {', '.join(sorted(UNITS.values()))} units)"
            f"{tail}",
            **evidence,
        )
    names = sorted(running) + [f"{d['service']} (pid {d['pid']})" for d in unmanaged]
    return Finding.ok(f"running: {', '.join(names)}{tail}", **evidence)


@fixer("process.services")
def remove_stale_pidfiles(ctx: Context, _finding: Finding) -> list[Action]:
    actions = []
    for path, why in stale_pidfiles(ctx).items():

        def apply(path: Path = path) -> str:
            # Re-inspect: the service may have been restarted since the plan was shown.
            _record, proc, _why = inspect_pidfile(path)
            if proc is not None:
                return f"{path.name} names a live process again; kept"
            path.unlink(missing_ok=True)
            return f"removed {path}"

        actions.append(
            Action(
                "process.services",
                f"remove the stale pid file {path.name} ({why})",
                f"rm {path}",
                apply,
            )
        )
    return actions
