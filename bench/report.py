"""The report: the run's header, the tables and the raw results as JSON."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from bench.heartbeat import HeartbeatResult
from bench.machine import NoiseLimits, PhaseStats, cpu_model, version_of
from bench.processes import ROOT
from bench.task_phases import SystemResult

# -- report ------------------------------------------------------------------------------------


def fmt_number(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(value: float, reference: float) -> str:
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return "-"
    return f"{value / reference:.2f}x"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text, the first column left-aligned and the others right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _noise(stats: PhaseStats | None, limits: NoiseLimits) -> list[str]:
    """The steal and other-processes cells of a phase, NOISY marking the one over its limit."""
    if stats is None:
        return ["-", "-"]
    steal, other = f"{stats.steal_percent:.1f}", f"{stats.other_percent:.0f}"
    if stats.steal_percent > limits.max_steal:
        steal += " NOISY"
    if stats.other_percent > limits.max_other:
        other += " NOISY"
    return [steal, other]


def _cpu_per_task(results: list[SystemResult]) -> list[str]:
    """Each system's CPU per task in each phase, by process (client, Redis, workers …)."""
    lines = ["  CPU per task, by process (ms):"]
    for r in results:
        for name, stats, tasks in (
            ("latency", r.latency_phase, len(r.latency_ms)),
            ("batch", r.batch_phase, r.batch.succeeded if r.batch else 0),
        ):
            used = stats.cpu_by_process if stats else {}
            if not used or not tasks:
                continue
            parts = sorted(used.items(), key=lambda kv: -kv[1])
            shares = ", ".join(
                f"{label} {1000 * seconds / tasks:.2f}" for label, seconds in parts if seconds > 0
            )
            total = 1000 * sum(used.values()) / tasks
            lines.append(f"    {r.system:<9} {name:<8} {total:.2f} in all: {shares}")
    return lines


def render(
    results: list[SystemResult],
    heartbeat: HeartbeatResult | None,
    args: argparse.Namespace,
    header: dict[str, str],
) -> str:
    out = ["", "=" * 100, "HiveMind throughput benchmark"]
    out += [f"  {k}: {v}" for k, v in header.items()]
    reference = next((r for r in results if r.system == "hivemind" and not r.error), None)
    if results:
        out += ["", "Setups:"] + [f"  {r.system:<9} {r.setup}" for r in results]
        ref_tp = reference.throughput if reference else math.nan
        rows = []
        for r in results:
            b = r.batch
            rows.append(
                [
                    r.system,
                    fmt_number(r.throughput, 0),
                    fmt_number(b.total_seconds, 2) if b else "-",
                    fmt_number(b.submit_seconds, 2) if b else "-",
                    f"{b.succeeded}/{b.submitted}" if b else "-",
                    *_noise(r.batch_phase, args.limits),
                    _ratio(r.throughput, ref_tp),
                ]
            )
        out += [
            "",
            f"Batch throughput: {args.tasks:,} no-op tasks submitted at once, "
            "timed until the client has seen every result",
            text_table(
                [
                    "system",
                    "tasks/s",
                    "total s",
                    "submit s",
                    "ok",
                    "steal %",
                    "other %",
                    "vs HiveMind",
                ],
                rows,
            ),
        ]
        ref50 = reference.p50 if reference else math.nan
        ref99 = reference.p99 if reference else math.nan
        rows = []
        for r in results:
            rows.append(
                [
                    r.system,
                    fmt_number(r.p50, 2),
                    fmt_number(r.p99, 2),
                    fmt_number(statistics.fmean(r.latency_ms), 2) if r.latency_ms else "-",
                    str(len(r.latency_ms)),
                    *_noise(r.latency_phase, args.limits),
                    _ratio(r.p50, ref50),
                    _ratio(r.p99, ref99),
                ]
            )
        out += [
            "",
            "Latency: one task at a time on an idle cluster, submit -> result seen "
            f"({args.latency_samples} samples after {args.warmup} warm-up)",
            text_table(
                [
                    "system",
                    "p50 ms",
                    "p99 ms",
                    "mean ms",
                    "n",
                    "steal %",
                    "other %",
                    "p50 vs HM",
                    "p99 vs HM",
                ],
                rows,
            ),
        ]
        out += [
            "  vs HiveMind (HM) = the system's figure / HiveMind's: above 1x means more "
            "tasks/s (better)",
            "  in the first table and a slower round trip (worse) in the second. steal % = "
            "CPU stolen by",
            "  the hypervisor; other % = CPU used by processes outside this run; both as a "
            "share of the machine.",
        ]
        out += _cpu_per_task(results)
        for r in results:
            for note in r.notes:
                out.append(f"  {r.system}: {note}")
            if r.error:
                out.append(f"  {r.system}: FAILED: {r.error}")
    if heartbeat is not None:
        h = heartbeat
        out += [
            "",
            f"Heartbeat load: {h.workers} simulated workers, 1 heartbeat/s each, "
            f"{h.seconds:.0f} s measured after {h.warmup:.0f} s warm-up;",
            f"  {h.pinned}",
        ]
        if h.error:
            out.append(f"  FAILED: {h.error}")
        errors = ", ".join(f"{k} {v}" for k, v in sorted(h.errors.items())) or "none"
        rss_ok = "PASS" if h.rss_peak_mb <= 150.0 else "FAIL"
        out += [
            f"  offered       {fmt_number(h.offered_per_s)} heartbeats/s ({h.sent} sent)",
            f"  achieved      {fmt_number(h.achieved_per_s)} heartbeats/s (worst full second "
            f"{fmt_number(h.worst_second_per_s, 0)}); answered {h.answered}",
            f"  errors        {errors}"
            + (
                f" (median {fmt_number(h.failed_after_p50_ms, 0)} ms after sending)"
                if h.errors
                else ""
            ),
            f"  RPC latency   p50 {fmt_number(h.p50_ms, 2)} ms, p99 {fmt_number(h.p99_ms, 2)} ms, "
            f"max {fmt_number(h.max_ms, 2)} ms",
            f"  generator     send lag p99 {fmt_number(h.generator_lag_p99_ms, 2)} ms "
            "(how late the load generator sent)",
            f"  CPU           node pool {fmt_number(h.nodepool_cpu_percent)} %, Redis "
            f"{fmt_number(h.redis_cpu_percent)} %, load generator "
            f"{fmt_number(h.generator_cpu_percent)} % (100 % = one core)",
            f"  RSS           node pool idle {fmt_number(h.rss_idle_mb, 0)} MB, with {h.workers} "
            f"registered {fmt_number(h.rss_registered_mb, 0)} MB, peak under load "
            f"{fmt_number(h.rss_peak_mb, 0)} MB, end {fmt_number(h.rss_end_mb, 0)} MB",
            f"                target <= 150 MB: {rss_ok}",
            f"  registration  {fmt_number(h.register_seconds, 1)} s for {h.workers} workers; "
            f"online afterwards: {h.online_after}",
            "  noise         "
            + (
                f"steal {h.phase.steal_percent:.1f} %, other processes "
                f"{h.phase.other_percent:.0f} %" + (" NOISY" if h.phase.noisy else "")
                if h.phase
                else "-"
            ),
            "  keeps up      "
            + ("YES" if h.keeps_up else "NO")
            + " (= no errors, every heartbeat answered, achieved >= 98 % of offered, p99 < 1 s)",
        ]
    phases = [p for r in results for p in (r.latency_phase, r.batch_phase) if p is not None]
    if heartbeat is not None and heartbeat.phase is not None:
        phases.append(heartbeat.phase)
    noisy = [p.name for p in phases if p.noisy]
    out.append("")
    limits = args.limits
    if noisy:
        out.append(
            f"NOISY (steal > {limits.max_steal:g} % or other processes > "
            f"{limits.max_other:g} %): {', '.join(noisy)}."
        )
        out.append("Do not compare these rows; run again when the machine is quiet.")
    elif phases:
        out.append(
            f"Steal <= {limits.max_steal:g} % and other processes <= "
            f"{limits.max_other:g} % in every phase: the figures are comparable."
        )
    return "\n".join(out)


def machine_header(args: argparse.Namespace) -> dict[str, str]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}, {platform.system()} "
        f"{platform.release()}",
        "python": platform.python_version(),
        "versions": ", ".join(
            f"{d} {version_of(d)}"
            for d in ("grpcio", "redis", "celery", "rq", "dramatiq", "distributed")
        ),
        "hivemind": hivemind_revision(),
        "options": f"--tasks {args.tasks} --latency-samples {args.latency_samples} "
        f"--warmup {args.warmup} --hivemind-concurrency {args.hivemind_concurrency} "
        f"--rq-worker-class {args.rq_worker_class}"
        + (" --interleave" if getattr(args, "interleave", False) else ""),
    }


def hivemind_revision() -> str:
    """The commit measured, and whether hivemind/ differed from it."""

    def git(*command: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(ROOT), *command],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    if not git("status", "--porcelain", "--", "hivemind"):
        return f"commit {commit}"
    digest = hashlib.sha256(git("diff", "HEAD", "--", "hivemind").encode()).hexdigest()[:12]
    return f"commit {commit} + uncommitted changes in hivemind/ (diff sha256 {digest})"


def write_json(
    path: Path,
    header: dict[str, str],
    results: list[SystemResult],
    heartbeat: HeartbeatResult | None,
) -> None:
    """The raw results, for --json."""
    path.write_text(
        json.dumps(
            {
                "header": header,
                "systems": [
                    asdict(r) | {"p50_ms": r.p50, "p99_ms": r.p99, "tasks_per_s": r.throughput}
                    for r in results
                ],
                "heartbeat": asdict(heartbeat) if heartbeat else None,
            },
            indent=2,
            default=str,
        )
    )
