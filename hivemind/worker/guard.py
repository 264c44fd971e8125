"""Task processes must not outlive their worker.

A worker stops its task processes itself on every way out but one: SIGKILL (or a crash).
For that one, a small guard process holds the ids of the task process groups (bundles' and
the function pool's, each of which leads a group of its own) and SIGKILLs them all when its
pipe from the worker closes, which the kernel does however the worker dies.

``guard`` is the worker process's; it does nothing until :meth:`GroupGuard.start`, so code
that runs tasks outside a worker (tests, tools) needs no guard.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

log = logging.getLogger("hivemind.worker")

# Runs with -I -S: no site packages, no environment; only what it needs. When the worker
# writes "+ 123" it holds group 123, "- 123" lets it go; "c+ PATH" and "c- PATH" do the same
# for a task's cgroup (which holds its setsid children too); at end of file, it kills the rest.
_GUARD_SOURCE = """
import os, signal, sys
groups = set()
cgroups = set()
for line in sys.stdin:
    op, _, value = line.rstrip("\\n").partition(" ")
    if op == "+":
        groups.add(int(value))
    elif op == "-":
        groups.discard(int(value))
    elif op == "c+":
        cgroups.add(value)
    elif op == "c-":
        cgroups.discard(value)
for cgroup in cgroups:
    try:
        with open(os.path.join(cgroup, "cgroup.kill"), "w") as kill:
            kill.write("1")
    except OSError:
        pass
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        try:
            os.kill(group, signal.SIGKILL)  # not a group leader yet: just the process
        except OSError:
            pass
"""


class GroupGuard:
    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the guard process (once)."""
        with self._lock:
            if self._process is not None:
                return
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD_SOURCE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                # Its own group: Ctrl-C in the worker's terminal and the worker's own group
                # kills are not for it; it leaves when the worker has gone.
                start_new_session=True,
            )

    def hold(self, group: int) -> None:
        """Kill process group ``group`` if this worker dies before :meth:`release`."""
        self._send(f"+ {group}\n")

    def release(self, group: int) -> None:
        """``group`` is gone (reaped) or taken care of."""
        self._send(f"- {group}\n")

    def hold_cgroup(self, path: str) -> None:
        """Kill all in cgroup ``path`` if this worker dies before :meth:`release_cgroup`."""
        self._send(f"c+ {path}\n")

    def release_cgroup(self, path: str) -> None:
        self._send(f"c- {path}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._process is None or self._process.stdin is None:
                return
            try:
                self._process.stdin.write(line)
                self._process.stdin.flush()
            except (OSError, ValueError) as exc:
                # Someone killed the guard: the worker goes on without one.
                log.warning("task process guard is gone (%s); continuing without it", exc)
                self._process = None


guard = GroupGuard()
