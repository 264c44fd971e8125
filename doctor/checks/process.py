"""Which HiveMind daemons run here (the guide's `ps aux | grep node_pool_server`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

from doctor.context import Context
from doctor.daemons import pidfile_states
from doctor.fixes import Action, fixer
from doctor.model import Finding
from doctor.registry import check
from doctor.services import UNITS, systemd_unit
from hivemind.supervisor import inspect_pidfile

#: Subcommands of `hivemind` that are daemons.
DAEMONS = ("nodepool", "master", "worker")


def _describe(proc: psutil.Process) -> dict[str, Any]:
    with proc.oneshot():
        return {
            "pid": proc.pid,
            "uptime_s": round(time.time() - proc.create_time()),
            "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        }


def daemon_kind(cmdline: list[str]) -> str | None:
    """``nodepool``/``master``/``worker`` for a HiveMind daemon's command line, else None."""
    for index, arg in enumerate(cmdline):
        name = os.path.basename(arg)
        if name == "hivemind" or (arg == "-m" and cmdline[index + 1 : index + 2] == ["hivemind"]):
            rest = cmdline[index + (2 if arg == "-m" else 1) :]
            verb = next((a for a in rest if not a.startswith("-")), None)
            return verb if verb in DAEMONS else None
    return None


def unmanaged_daemons(known_pids: set[int]) -> list[dict[str, Any]]:
    """HiveMind daemons running with no pid file of ours (started by hand or by systemd)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid in known_pids:
            continue
        kind = daemon_kind(proc.info["cmdline"] or [])
        if kind:
            try:
                found.append({"service": kind, **_describe(proc)})
            except psutil.Error:
                continue
    return found


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
    evidence: dict[str, Any] = {
        "run_dir": str(ctx.home.run),
        "running": running,
        "stale_pid_files": stale,
        "unmanaged": unmanaged_daemons(known),
    }
    inactive = inactive_units(ctx)
    if inactive:
        evidence["inactive_units"] = inactive
        return Finding.fail(
            f"installed but not running: {', '.join(inactive)}",
            " && ".join(f"sudo systemctl restart {unit}" for unit in inactive),
            **evidence,
        )
    if stale:
        names = ", ".join(f"{name} ({why})" for name, why in stale.items())
        return Finding.warn(
            f"stale pid file(s): {names}",
            "remove them (hivemind doctor --fix --only process.services), then hivemind up",
            **evidence,
        )
    if not running and not evidence["unmanaged"]:
        return Finding.skip(
            f"no HiveMind daemon runs on this host and none is configured (no pid files in "
            f"{ctx.home.run}, no {', '.join(sorted(UNITS.values()))} units)",
            **evidence,
        )
    names = sorted(running) + [f"{d['service']} (pid {d['pid']})" for d in evidence["unmanaged"]]
    return Finding.ok(f"running: {', '.join(names)}", **evidence)


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
