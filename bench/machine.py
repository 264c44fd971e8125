"""Machine facts, and the CPU steal and other processes' share of each measured phase."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# -- machine facts and CPU steal ---------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat, in clock ticks."""

    total: int
    idle: int
    steal: int

    @classmethod
    def read(cls) -> CpuTimes:
        try:
            with open("/proc/stat") as fh:
                fields = fh.readline().split()
        except OSError:
            return cls(0, 0, 0)
        # cpu user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
        # is already counted in user, so the total is the first eight values.
        values = [int(x) for x in fields[1:9]] + [0] * (8 - len(fields[1:9]))
        return cls(total=sum(values), idle=values[3] + values[4], steal=values[7])


#: Marks every process the benchmark starts (inherited through the environment), so that CPU
#: used by anything else on the machine during a phase can be told apart.
RUN_MARK = "BENCH_RUN_ID"
RUN_ID = f"{os.getpid()}-{time.time_ns()}"


def _environment_has_mark(pid: int) -> bool:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{RUN_MARK}={RUN_ID}".encode() in data.split(b"\0")


def own_cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of each process of this run: this one, its descendants and every
    process carrying the run's mark (the HiveMind services outlive `hivemind up`, their
    parent, and are adopted by init)."""
    import psutil

    me = psutil.Process()
    ours = {me, *me.children(recursive=True)}
    for process in psutil.process_iter():
        if process not in ours and _environment_has_mark(process.pid):
            ours.add(process)
    seconds = {}
    for process in ours:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def process_label(pid: int) -> str:
    """A short name for one of the run's processes: what it is, not its pid."""
    import psutil

    if pid == os.getpid():
        return "client"
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return "exited"
    words = [Path(a).name for a in argv]
    if "redis-server" in " ".join(words):
        return "redis"
    if "hivemind" in words:
        after = words[words.index("hivemind") + 1 :]
        return next((w for w in after if not w.startswith("-")), "hivemind")
    if any("multiprocessing" in a for a in argv):
        return "pool process"
    for peer in ("celery", "rq", "dramatiq"):
        if any(w == peer or w.startswith(peer + ".") for w in words):
            return peer
    return words[0] if words else "?"


@dataclass
class PhaseStats:
    name: str
    seconds: float = 0.0
    #: Share of the machine's CPU time the hypervisor stole.
    steal_percent: float = 0.0
    #: Share of the machine's CPU time spent busy, by anything.
    busy_percent: float = 0.0
    #: Share of the machine's CPU time used by processes that are not this run's.
    other_percent: float = 0.0
    noisy: bool = False
    #: CPU seconds the run's own processes used in the phase, summed by process_label.
    cpu_by_process: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NoiseLimits:
    max_steal: float
    max_other: float


@contextlib.contextmanager
def phase(name: str, limits: NoiseLimits, log: Callable[[str], None]) -> Iterator[PhaseStats]:
    """Time a phase; record the CPU steal, the busy share and other processes' share."""
    stats = PhaseStats(name)
    own_before = own_cpu_seconds()
    before, started = CpuTimes.read(), time.perf_counter()
    try:
        yield stats
    finally:
        after = CpuTimes.read()
        stats.seconds = time.perf_counter() - started
        own_after = own_cpu_seconds()
        ticks = after.total - before.total
        if ticks > 0:
            hz = os.sysconf("SC_CLK_TCK")
            steal = after.steal - before.steal
            busy = ticks - (after.idle - before.idle) - steal
            used = {pid: v - own_before.get(pid, 0.0) for pid, v in own_after.items()}
            own = sum(used.values())
            for pid, seconds in used.items():
                label = process_label(pid)
                stats.cpu_by_process[label] = stats.cpu_by_process.get(label, 0.0) + seconds
            stats.steal_percent = 100.0 * steal / ticks
            stats.busy_percent = 100.0 * busy / ticks
            stats.other_percent = max(0.0, 100.0 * (busy / hz - own) / (ticks / hz))
        stats.noisy = (
            stats.steal_percent > limits.max_steal or stats.other_percent > limits.max_other
        )
        flag = "  NOISY" if stats.noisy else ""
        log(
            f"  {name}: {stats.seconds:.1f} s, steal {stats.steal_percent:.1f} %, "
            f"other processes {stats.other_percent:.0f} %, "
            f"cpu busy {stats.busy_percent:.0f} %{flag}"
        )


def wait_quiet(limits: NoiseLimits, timeout: float, log: Callable[[str], None]) -> None:
    """Wait (at most ``timeout`` seconds) for a 2-second window in which steal and other
    processes stay within ``limits``; on a shared machine this keeps phases comparable."""
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        with phase("quiet?", limits, lambda _line: None) as stats:
            time.sleep(2.0)
        if not stats.noisy:
            if waited:
                log("  the machine is quiet again")
            return
        if time.monotonic() >= deadline:
            log(
                f"  still not quiet after {timeout:.0f} s (steal {stats.steal_percent:.1f} %, "
                f"other processes {stats.other_percent:.0f} %); going on"
            )
            return
        if not waited:
            log(
                f"  waiting for the machine to be quiet (steal {stats.steal_percent:.1f} %, "
                f"other processes {stats.other_percent:.0f} %) ..."
            )
            waited = True


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
