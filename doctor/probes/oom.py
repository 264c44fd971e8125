"""OOM-killer kills in the kernel log: ``dmesg`` (seconds since boot), ``journalctl -k -o
short-iso`` or ``/var/log/kern.log`` (wall-clock time).

The kernel names the victim in one of these lines (older and newer kernels)::

    Out of memory: Killed process 4242 (python3) total-vm:…, anon-rss:…
    Memory cgroup out of memory: Killed process 4242 (python3) total-vm:…
    Out of memory: Kill process 4242 (python3) score 912 or sacrifice child
    oom-kill:constraint=CONSTRAINT_NONE,…,task=python3,pid=4242,uid=1000
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_DMESG_STAMP = re.compile(r"^\[\s*(?P<uptime>\d+(?:\.\d+)?)\]\s*")
_ISO_STAMP = re.compile(
    r"^(?P<iso>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:?\d{2}|Z)?)\s"
)
_KILLED = re.compile(r"(?:Killed|Kill) process (?P<pid>\d+) \((?P<name>[^)]*)\)")
_OOM_KILL = re.compile(r"oom-kill:.*?\btask=(?P<name>[^,]*),pid=(?P<pid>\d+)")


@dataclass(frozen=True)
class OomKill:
    pid: int
    name: str
    #: Unix time of the kill; None when the line carried no usable time.
    at: float | None
    line: str


def _line_time(line: str, boot_time: float | None) -> tuple[float | None, str]:
    match = _DMESG_STAMP.match(line)
    if match:
        at = None if boot_time is None else boot_time + float(match["uptime"])
        return at, line[match.end() :]
    match = _ISO_STAMP.match(line)
    if match:
        iso = match["iso"].replace("Z", "+00:00")
        if re.search(r"[+-]\d{4}$", iso):  # journalctl writes +0000, fromisoformat wants +00:00
            iso = f"{iso[:-2]}:{iso[-2:]}"
        try:
            return datetime.fromisoformat(iso).timestamp(), line[match.end() :]
        except ValueError:
            return None, line
    return None, line


def parse_oom_kills(text: str, boot_time: float | None = None) -> list[OomKill]:
    """Each killed process once (a kill is logged in several lines), oldest first.

    ``boot_time`` (``btime`` of ``/proc/stat``) turns dmesg's seconds-since-boot into unix time.
    """
    kills: dict[int, OomKill] = {}
    for raw in text.splitlines():
        at, line = _line_time(raw.strip(), boot_time)
        match = _KILLED.search(line) or _OOM_KILL.search(line)
        if not match:
            continue
        pid = int(match["pid"])
        if pid not in kills or (kills[pid].at is None and at is not None):
            kills[pid] = OomKill(pid, match["name"], at, raw.strip())
    return sorted(kills.values(), key=lambda kill: (kill.at or 0.0, kill.pid))


def boot_time(proc_stat: str) -> float | None:
    for line in proc_stat.splitlines():
        if line.startswith("btime "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None
