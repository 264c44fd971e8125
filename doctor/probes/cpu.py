"""CPU use from two ``/proc/stat`` samples (what ``top`` and ``htop`` compute) and the load
average from ``/proc/loadavg`` (what ``uptime`` prints)."""

from __future__ import annotations

from dataclasses import dataclass

#: Columns of a ``cpu`` line that are idle time: idle and iowait.
_IDLE_COLUMNS = (3, 4)
#: guest and guest_nice are already counted inside user and nice.
_COUNTED_COLUMNS = 8


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


@dataclass(frozen=True)
class LoadAverage:
    one: float
    five: float
    fifteen: float


def parse_proc_stat(text: str) -> dict[str, CpuTimes]:
    """Jiffies per ``cpu`` line: ``cpu`` (all cores) and ``cpu0`` … ``cpuN``."""
    times: dict[str, CpuTimes] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        try:
            values = [int(v) for v in parts[1 : 1 + _COUNTED_COLUMNS]]
        except ValueError:
            continue
        if len(values) < 4:
            continue
        idle = sum(values[i] for i in _IDLE_COLUMNS if i < len(values))
        times[parts[0]] = CpuTimes(busy=sum(values) - idle, total=sum(values))
    return times


def core_count(proc_stat: str) -> int:
    return sum(1 for name in parse_proc_stat(proc_stat) if name != "cpu")


def busy_percent(
    before: dict[str, CpuTimes], after: dict[str, CpuTimes], discount: int = 0
) -> dict[str, float]:
    """Percent busy per ``cpu`` line between two samples (cores that went offline are left out).

    ``discount`` ticks (a process's own use over the sample) are taken off the ``cpu`` total
    line; which core they ran on is not known, so per-core figures keep them.
    """
    percents: dict[str, float] = {}
    for name, end in after.items():
        start = before.get(name)
        if start is None:
            continue
        elapsed = end.total - start.total
        if elapsed <= 0:
            continue
        busy = end.busy - start.busy - (discount if name == "cpu" else 0)
        busy = min(max(busy, 0), elapsed)
        percents[name] = round(100.0 * busy / elapsed, 1)
    return percents


def parse_loadavg(text: str) -> LoadAverage:
    parts = text.split()
    if len(parts) < 3:
        raise ValueError(f"not a /proc/loadavg line: {text.strip()!r}")
    return LoadAverage(float(parts[0]), float(parts[1]), float(parts[2]))


def process_cpu_ticks(proc_pid_stat: str) -> int:
    """Clock ticks a process and its reaped children used (``/proc/PID/stat`` utime, stime,
    cutime, cstime), in the units of ``/proc/stat``."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = proc_pid_stat.rpartition(")")[2].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14))
