"""Which HiveMind daemons run on this host, from the pid files in ``$HIVEMIND_HOME/run``.

Read once per doctor run (several checks ask). A pid file counts only while its process is
the one that was started (see :func:`hivemind.supervisor.running_pid`), so a recycled pid is
never taken for a daemon.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from doctor.context import Context
from hivemind.supervisor import PidRecord, inspect_pidfile

PidfileState = tuple[PidRecord | None, psutil.Process | None, str]

#: Pid file stem -> the daemon's name in findings; workers are ``worker-<node id>``.
NODEPOOL = "nodepool"
MASTER = "master"
REDIS = "redis"


def pidfile_states(ctx: Context) -> dict[Path, PidfileState]:
    """Each pid file in the run dir -> (its record, its live process or None, why stale)."""

    def read() -> dict[Path, PidfileState]:
        folder = ctx.home.run
        if not folder.is_dir():
            return {}
        return {path: inspect_pidfile(path) for path in sorted(folder.glob("*.pid"))}

    return ctx.shared("daemons.pidfiles", read)


def running_daemons(ctx: Context) -> dict[str, int]:
    """Pid file stem -> pid of each daemon that runs now (``{}`` when none or no run dir)."""
    return {path.stem: proc.pid for path, (_r, proc, _w) in pidfile_states(ctx).items() if proc}


def is_worker(name: str) -> bool:
    return name.startswith("worker-")
