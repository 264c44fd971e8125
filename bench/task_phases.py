"""The latency and batch phases of one system."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


def run_system(
    system: System, args: argparse.Namespace, log: Callable[[str], None]
) -> SystemResult:
    result = SystemResult(system.name, system.setup)
    log(f"\n== {system.name}: {system.setup}")
    try:
        system.start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the first task proves the workers are up
            try:
                system.one()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
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
