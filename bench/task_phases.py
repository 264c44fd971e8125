"""The latency and batch phases of one system."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bench.hivemind_runner import HiveMind
from bench.machine import PhaseStats, percentile, phase, wait_quiet
from bench.system import BatchOutcome, System

#: Seconds a system gets to run its first task (start-up included).
START_TIMEOUT = 90.0


# -- task phases -------------------------------------------------------------------------------


@dataclass
class SystemResult:
    system: str
    setup: str
    latency_ms: list[float] = field(default_factory=list)
    latency_phase: PhaseStats | None = None
    batch: BatchOutcome | None = None
    batch_phase: PhaseStats | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return percentile(self.latency_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latency_ms, 0.99)

    @property
    def throughput(self) -> float:
        if self.batch is None or self.batch.total_seconds <= 0:
            return math.nan
        return self.batch.succeeded / self.batch.total_seconds


#: The process labels (see ``process_label``) that belong to each system; the client and
#: Redis are shared by all of them.
OWN_PROCESSES = {
    "hivemind": ("nodepool", "worker", "master", "pool process", "hivemind"),
    "celery": ("celery",),
    "rq": ("rq",),
    "dramatiq": ("dramatiq",),
}


def _start(system: System) -> None:
    system.start()
    deadline = time.monotonic() + START_TIMEOUT
    while True:  # the first task proves the workers are up
        try:
            system.one()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_system(
    system: System,
    args: argparse.Namespace,
    log: Callable[[str], None],
    measured: SystemResult | None = None,
) -> SystemResult:
    """Both phases of ``system``; only the batch when ``measured`` has its latency already."""
    result = SystemResult(system.name, system.setup)
    log(f"\n== {system.name}: {system.setup}")
    try:
        _start(system)
        if measured is not None:
            result.latency_ms, result.latency_phase = measured.latency_ms, measured.latency_phase
            result.error, result.notes = measured.error, list(measured.notes)
        else:
            wait_quiet(args.limits, args.wait_quiet, log)
            for _ in range(args.warmup):
                system.one()
            with phase(f"{system.name} latency", args.limits, log) as stats:
                for _ in range(args.latency_samples):
                    started = time.perf_counter()
                    system.one()
                    result.latency_ms.append((time.perf_counter() - started) * 1000)
            result.latency_phase = stats
        time.sleep(1.0)  # let background work settle before the batch
        wait_quiet(args.limits, args.wait_quiet, log)
        with phase(f"{system.name} batch", args.limits, log) as stats:
            result.batch = system.batch(args.tasks, args.batch_timeout)
        result.batch_phase = stats
        if result.batch.timed_out:
            result.notes.append(
                f"batch timed out after {args.batch_timeout:.0f} s: "
                f"{result.batch.succeeded}/{result.batch.submitted} results seen"
            )
        if isinstance(system, HiveMind):
            result.notes.append(f"node pool RSS after the batch: {system.nodepool_rss_mb():.0f} MB")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"  FAILED: {result.error}")
    finally:
        try:
            system.stop()
        except Exception as exc:
            log(f"  stopping {system.name} failed: {exc}")
    return result


def run_interleaved_latency(
    systems: list[System], args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, SystemResult]:
    """Every system's latency samples taken in turns, all systems up at once, so that the
    machine's drift over minutes touches them alike: round i starts with system i mod n.

    Each result's CPU figures keep only the system's own processes (the client and Redis
    serve every system in the phase)."""
    results = {s.name: SystemResult(s.name, s.setup) for s in systems}
    running: list[System] = []
    log("\n== interleaved latency: " + ", ".join(s.name for s in systems))
    try:
        for system in systems:
            try:
                _start(system)
                running.append(system)
            except Exception as exc:
                results[system.name].error = f"{type(exc).__name__}: {exc}"
                log(f"  {system.name} FAILED to start: {results[system.name].error}")
        wait_quiet(args.limits, args.wait_quiet, log)
        for _ in range(args.warmup):
            for system in running:
                system.one()
        with phase("interleaved latency", args.limits, log) as stats:
            for round_ in range(args.latency_samples):
                shift = round_ % max(1, len(running))
                for system in running[shift:] + running[:shift]:
                    started = time.perf_counter()
                    system.one()
                    results[system.name].latency_ms.append((time.perf_counter() - started) * 1000)
        for system in running:
            own = OWN_PROCESSES.get(system.name, (system.name,))
            results[system.name].latency_phase = replace(
                stats,
                cpu_by_process={k: v for k, v in stats.cpu_by_process.items() if k in own},
            )
            results[system.name].notes.append(
                "latency interleaved with the other systems; its CPU figures leave out the "
                "client and Redis, which served them all"
            )
    except Exception as exc:
        for result in results.values():
            result.error = result.error or f"interleaved latency: {type(exc).__name__}: {exc}"
        log(f"  FAILED: {type(exc).__name__}: {exc}")
    finally:
        for system in running:
            try:
                system.stop()
            except Exception as exc:
                log(f"  stopping {system.name} failed: {exc}")
    return results
