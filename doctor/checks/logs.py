"""Are the guide's log files there and being written, and what went wrong in the last hour?"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from doctor.context import Context, Unavailable
from doctor.daemons import MASTER, NODEPOOL, is_worker, running_daemons
from doctor.logfiles import OVERSIZED_LIVE_LOG
from doctor.model import Finding
from doctor.probes.logs import ErrorGroup, group_errors, recent_records
from doctor.probes.memory import human_bytes
from doctor.registry import check

STALE_AFTER_SECONDS = 3600.0
ERROR_WINDOW_SECONDS = 3600.0
BURST_PER_MINUTE = 100
#: Groups named in a fix hint; the evidence keeps them all.
GROUPS_IN_HINT = 5


def guide_logs(ctx: Context) -> dict[str, tuple[Path, str]]:
    """The guide's log files, by their path under HIVEMIND_HOME, and the service writing each."""
    home = ctx.home
    return {
        "node_pool/logs/nodepool.log": (home.nodepool_log, NODEPOOL),
        "master/logs/master.log": (home.master_log, MASTER),
        "worker/logs/worker.log": (home.worker_log, "worker"),
        "worker/logs/task_execution.log": (home.task_execution_log, "worker"),
    }


#: Written only while tasks run: an idle worker leaves it alone for hours, rightly.
WRITTEN_ON_DEMAND = frozenset({"worker/logs/task_execution.log"})


def _service_runs(service: str, daemons: dict[str, int]) -> bool:
    if service == "worker":
        return any(is_worker(name) for name in daemons)
    return service in daemons


def _rotated_count(path: Path) -> int:
    try:
        return sum(1 for p in path.parent.glob(path.name + ".*") if p.is_file())
    except OSError:
        return 0


@check(
    "logs.present",
    title="Log files present and written",
    guide="快速診斷: 日誌檢查; 日誌分析: 重要日誌文件",
)
def logs_present(ctx: Context) -> Finding:
    daemons = running_daemons(ctx)
    now = ctx.now()
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for name, (path, service) in guide_logs(ctx).items():
        runs = _service_runs(service, daemons)
        row: dict[str, Any] = {"log": name, "service": service, "service_running": runs}
        try:
            stat = path.stat()
        except OSError:
            row["exists"] = False
            rows.append(row)
            if runs:
                problems.append(f"{name} is missing while the {service} runs")
            continue
        age = now - stat.st_mtime
        row.update(
            exists=True,
            size=stat.st_size,
            written_s_ago=round(age),
            rotated_copies=_rotated_count(path),
        )
        rows.append(row)
        if runs and age > STALE_AFTER_SECONDS and name not in WRITTEN_ON_DEMAND:
            problems.append(f"{name} not written for {age / 3600:.1f} h while the {service} runs")
        if stat.st_size > OVERSIZED_LIVE_LOG:
            problems.append(
                f"{name} is {human_bytes(stat.st_size)}: it is not being rotated "
                f"(rotation keeps it under {human_bytes(OVERSIZED_LIVE_LOG // 2)})"
            )
    evidence = {"home": str(ctx.home.root), "logs": rows}
    if problems:
        return Finding.warn(
            "; ".join(problems),
            "look at the service's console output (node_pool/logs/nodepool.out …) and restart "
            "it; `hivemind doctor --fix` compresses logs that outgrew rotation",
            **evidence,
        )
    present = [row["log"] for row in rows if row.get("exists")]
    if not present and not daemons:
        return Finding.skip(
            f"no HiveMind service runs here and no log exists under {ctx.home.root}", **evidence
        )
    return Finding.ok(f"{len(present)} of {len(rows)} logs present and current", **evidence)


def _group_row(group: ErrorGroup) -> dict[str, Any]:
    row = asdict(group)
    row["first"], row["last"] = group.first[:300], group.last[:300]
    return row


def errors_hint(groups: list[ErrorGroup]) -> str:
    """The first and last line of each group: where to start reading."""
    parts = []
    for group in groups[:GROUPS_IN_HINT]:
        lines = (
            f"first: {group.first[:200]}"
            if group.count == 1
            else f"first: {group.first[:200]} | last: {group.last[:200]}"
        )
        parts.append(f"{group.log} [{group.pattern} ×{group.count}] {lines}")
    more = len(groups) - GROUPS_IN_HINT
    return "\n".join(parts) + (f"\n… and {more} more group(s)" if more > 0 else "")


def errors_finding(groups: list[ErrorGroup], peaks: dict[str, int], read: list[str]) -> Finding:
    """fail: a log had more than ``BURST_PER_MINUTE`` trouble lines in a minute; warn: any group."""
    evidence = {
        "window_s": ERROR_WINDOW_SECONDS,
        "logs_read": read,
        "groups": [_group_row(group) for group in groups],
        "peak_per_minute": peaks,
    }
    if not groups:
        return Finding.ok(f"no error lines in the last hour in {len(read)} log(s)", **evidence)
    bursts = {log: peak for log, peak in peaks.items() if peak > BURST_PER_MINUTE}
    total = sum(group.count for group in groups)
    said = f"{total} error line(s) in the last hour in {len(groups)} group(s)"
    if bursts:
        named = ", ".join(f"{log} {peak}/min" for log, peak in bursts.items())
        return Finding.fail(f"error burst: {named}; {said}", errors_hint(groups), **evidence)
    top = ", ".join(f"{g.pattern} ×{g.count} in {Path(g.log).name}" for g in groups[:3])
    return Finding.warn(f"{said}: {top}", errors_hint(groups), **evidence)


@check(
    "logs.errors",
    title="Recent errors in the logs",
    guide="日誌分析: 常見錯誤模式 (grep error / timeout / memory)",
)
def logs_errors(ctx: Context) -> Finding:
    since = ctx.now() - ERROR_WINDOW_SECONDS
    groups: list[ErrorGroup] = []
    peaks: dict[str, int] = {}
    read: list[str] = []
    for name, (path, _service) in guide_logs(ctx).items():
        try:
            text = ctx.read_text(path)
        except Unavailable:
            continue  # a missing log is logs.present's finding
        read.append(name)
        found, peak = group_errors(name, recent_records(text, since))
        groups += found
        if peak:
            peaks[name] = peak
    if not read:
        raise Unavailable(f"none of the guide's logs exists under {ctx.home.root}")
    groups.sort(key=lambda group: -group.count)
    return errors_finding(groups, peaks, read)
