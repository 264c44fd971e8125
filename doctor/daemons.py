"""Which HiveMind daemons run on this host, from the pid files in ``$HIVEMIND_HOME/run``.

Read once per doctor run (several checks ask). A pid file counts only while its process is
the one that was started (see :func:`hivemind.supervisor.running_pid`), so a recycled pid is
never taken for a daemon.
"""

from __future__ import annotations

from doctor.context import Context
from hivemind.supervisor import running_pid

#: Pid file stem -> the daemon's name in findings; workers are ``worker-<node id>``.
NODEPOOL = "nodepool"
MASTER = "master"
REDIS = "redis"


def running_daemons(ctx: Context) -> dict[str, int]:
    """Pid file stem -> pid of each daemon that runs now (``{}`` when none or no run dir)."""

    def read() -> dict[str, int]:
        folder = ctx.home.run
        if not folder.is_dir():
            return {}
        found = {}
        for pidfile in sorted(folder.glob("*.pid")):
            pid = running_pid(pidfile)
            if pid is not None:
                found[pidfile.stem] = pid
        return found

    return ctx.shared("daemons.running", read)


def is_worker(name: str) -> bool:
    return name.startswith("worker-")
