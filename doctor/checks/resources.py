"""Is this host's CPU, memory, disk and file-descriptor budget enough for HiveMind?"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from doctor.context import Context, Unavailable
from doctor.daemons import NODEPOOL, REDIS, running_daemons
from doctor.fixes import Action, fixer
from doctor.logfiles import (
    compress_rotated,
    copy_truncate,
    log_bytes,
    log_folders,
    oversized_live_logs,
    rotated_copies,
)
from doctor.model import Finding
from doctor.probes.cpu import (
    busy_percent,
    core_count,
    parse_loadavg,
    parse_proc_stat,
    process_cpu_ticks,
)
from doctor.probes.disk import FilesystemSpace, parse_df
from doctor.probes.limits import UNLIMITED, open_files_limit
from doctor.probes.memory import human_bytes, parse_meminfo
from doctor.probes.oom import OomKill, boot_time, parse_oom_kills
from doctor.probes.processes import PS_ARGV, ProcessRow, descendants, parse_ps, top_by_rss
from doctor.registry import check
from doctor.services import systemd_unit
from hivemind.supervisor import read_pidfile

GIB = 1024**3
MIB = 1024**2

CPU_SAMPLE_SECONDS = 0.4
CPU_BUSY_WARN_PERCENT = 90.0
LOAD_PER_CORE_WARN = 2.0
MEMORY_AVAILABLE_WARN_PERCENT = 15.0
MEMORY_AVAILABLE_FAIL_PERCENT = 5.0
SWAP_NEEDED_BELOW = 8 * GIB
SWAP_USED_WARN_PERCENT = 50.0
TOP_PROCESS_COUNT = 5
OOM_WINDOW_SECONDS = 24 * 3600
DISK_WARN_PERCENT, DISK_WARN_BYTES = 15.0, 2 * GIB
DISK_FAIL_PERCENT, DISK_FAIL_BYTES = 5.0, 500 * MIB
NOFILE_WANTED = 65536
NOFILE_FAIL_USE = 0.9

SWAPFILE_COMMANDS = (
    "sudo dd if=/dev/zero of=/swapfile bs=1G count=4 && sudo chmod 600 /swapfile && "
    "sudo mkswap /swapfile && sudo swapon /swapfile"
)


def _concurrency_hint(ctx: Context) -> str:
    return (
        "add workers on other hosts (`hivemind worker`) or lower MAX_CONCURRENT_TASKS "
        f"(now {ctx.settings.effective_max_concurrent_tasks}) in hivemind.toml"
    )


# -- CPU and load ----------------------------------------------------------------------------


@check("resources.cpu", title="CPU use", guide="2 任務執行緩慢: htop", host_probe=True)
def cpu(ctx: Context) -> Finding:
    own_before = process_cpu_ticks(ctx.read_text("/proc/self/stat"))
    before = parse_proc_stat(ctx.read_text("/proc/stat"))
    time.sleep(CPU_SAMPLE_SECONDS)
    after = parse_proc_stat(ctx.read_text("/proc/stat"))
    own = process_cpu_ticks(ctx.read_text("/proc/self/stat")) - own_before
    # The doctor's own concurrent probes are not the host's load.
    percents = busy_percent(before, after, discount=own)
    if "cpu" not in percents:
        raise Unavailable("/proc/stat has no usable cpu line to sample")
    overall = percents.pop("cpu")
    evidence = {"busy_percent": overall, "per_core": percents, "sample_s": CPU_SAMPLE_SECONDS}
    if overall > CPU_BUSY_WARN_PERCENT:
        return Finding.warn(
            f"CPU {overall:.0f} % busy over {CPU_SAMPLE_SECONDS:g} s (above "
            f"{CPU_BUSY_WARN_PERCENT:.0f} %)",
            _concurrency_hint(ctx),
            **evidence,
        )
    return Finding.ok(f"CPU {overall:.0f} % busy over {len(percents)} core(s)", **evidence)


@check("resources.load", title="Load average", guide="3 任務超時: uptime", host_probe=True)
def load(ctx: Context) -> Finding:
    average = parse_loadavg(ctx.read_text("/proc/loadavg"))
    cores = core_count(ctx.read_text("/proc/stat")) or 1
    evidence = {"load1": average.one, "load5": average.five, "load15": average.fifteen}
    evidence["cores"] = cores
    if average.five > LOAD_PER_CORE_WARN * cores:
        return Finding.warn(
            f"5-minute load {average.five:.2f} is over {LOAD_PER_CORE_WARN:g} × {cores} cores",
            f"see resources.top_processes; {_concurrency_hint(ctx)}",
            **evidence,
        )
    return Finding.ok(f"5-minute load {average.five:.2f} on {cores} core(s)", **evidence)


# -- memory ------------------------------------------------------------------------------------


@check(
    "resources.memory",
    title="Available memory",
    guide="2 記憶體使用過高: free -h, /proc/meminfo",
    host_probe=True,
)
def memory(ctx: Context) -> Finding:
    state = parse_meminfo(ctx.read_text("/proc/meminfo"))
    share = state.available_percent
    evidence = {
        "total": state.total,
        "available": state.available,
        "available_percent": round(share, 1),
    }
    said = f"{human_bytes(state.available)} of {human_bytes(state.total)} available ({share:.0f} %)"
    fix = "see resources.top_processes (`ps aux --sort=-%mem | head`)"
    if share < MEMORY_AVAILABLE_FAIL_PERCENT:
        return Finding.fail(said, fix, **evidence)
    if share < MEMORY_AVAILABLE_WARN_PERCENT:
        return Finding.warn(said, fix, **evidence)
    return Finding.ok(said, **evidence)


@check("resources.swap", title="Swap", guide="2 記憶體使用過高: 配置交換文件", host_probe=True)
def swap(ctx: Context) -> Finding:
    state = parse_meminfo(ctx.read_text("/proc/meminfo"))
    evidence = {
        "memory_total": state.total,
        "swap_total": state.swap_total,
        "swap_used": state.swap_used,
        "swap_used_percent": round(state.swap_used_percent, 1),
    }
    if state.swap_total == 0:
        if state.total < SWAP_NEEDED_BELOW:
            return Finding.warn(
                f"no swap on a host with only {human_bytes(state.total)} of memory",
                SWAPFILE_COMMANDS,
                **evidence,
            )
        return Finding.ok(f"no swap; {human_bytes(state.total)} of memory is enough", **evidence)
    said = f"{human_bytes(state.swap_used)} of {human_bytes(state.swap_total)} swap used"
    if state.swap_used_percent > SWAP_USED_WARN_PERCENT:
        return Finding.warn(
            f"{said} ({state.swap_used_percent:.0f} %): memory is short",
            "see resources.top_processes and resources.memory",
            **evidence,
        )
    return Finding.ok(said, **evidence)


# -- processes ---------------------------------------------------------------------------------

_HIVEMIND_COMMAND = re.compile(r"(-m hivemind\b|(^|[\s/])hivemind(\s|$))")


def hivemind_processes(ctx: Context, rows: list[ProcessRow]) -> tuple[set[int], set[int]]:
    """(every HiveMind process, those with a memory budget): the daemons of the pid files and
    their children (a worker's tasks), plus anything run as ``hivemind`` / ``-m hivemind``.
    Redis is HiveMind's but its memory is ``maxmemory``'s business (``redis.memory``)."""
    daemons = running_daemons(ctx)
    redis_pids = {pid for name, pid in daemons.items() if name == REDIS}
    by_command = {row.pid for row in rows if _HIVEMIND_COMMAND.search(row.command)}
    budgeted = descendants(rows, {p for p in daemons.values() if p not in redis_pids} | by_command)
    return budgeted | descendants(rows, redis_pids), budgeted


def _short(command: str) -> str:
    """``/usr/bin/python3 -m hivemind nodepool`` -> ``python3 -m hivemind``: enough to tell."""
    words = command.split()
    if not words:
        return "?"
    return " ".join([words[0].rsplit("/", 1)[-1], *words[1:3]])[:48]


def _process_row(row: ProcessRow, ours: set[int]) -> dict[str, Any]:
    return {
        "pid": row.pid,
        "rss": row.rss,
        "rss_human": human_bytes(row.rss),
        "command": row.command[:160],
        "hivemind": row.pid in ours,
    }


@check(
    "resources.top_processes",
    title="Largest processes",
    guide="2 記憶體使用過高: ps aux --sort=-%mem",
)
def top_processes(ctx: Context) -> Finding:
    output = ctx.run(PS_ARGV)
    rows = parse_ps(output.stdout)
    if output.exit_code != 0 or not rows:
        raise Unavailable(f"ps gave no process list: {output.stderr.strip() or 'empty output'}")
    ours, budgeted = hivemind_processes(ctx, rows)
    budget = ctx.settings.task_memory_limit_mb * MIB
    top = [_process_row(row, ours) for row in top_by_rss(rows, TOP_PROCESS_COUNT)]
    over = [_process_row(row, ours) for row in top_by_rss(rows, len(rows))]
    over = [row for row in over if row["pid"] in budgeted and row["rss"] > budget]
    evidence = {"top": top, "budget": budget, "over_budget": over}
    if over:
        worst = over[0]
        return Finding.warn(
            f"{len(over)} HiveMind process(es) above the {human_bytes(budget)} memory budget; "
            f"largest pid {worst['pid']} at {worst['rss_human']}",
            "find the task that grows (`hivemind doctor explain TASK_ID`), raise "
            "TASK_MEMORY_LIMIT_MB if it needs more, or lower MAX_CONCURRENT_TASKS",
            **evidence,
        )
    largest = ", ".join(f"{_short(row['command'])} ({row['rss_human']})" for row in top[:3])
    return Finding.ok(f"largest: {largest}", **evidence)


# -- OOM kills -----------------------------------------------------------------------------------


def kernel_log(ctx: Context) -> tuple[str, str]:
    """(where from, text) of the kernel log: dmesg, else the journal, else kern.log."""
    reasons = []
    for argv in (("dmesg",), ("journalctl", "-k", "-o", "short-iso", "--no-pager", "-q")):
        try:
            output = ctx.run(argv)
        except Unavailable as missing:
            reasons.append(str(missing))
            continue
        if output.exit_code == 0 and output.stdout.strip():
            return " ".join(argv), output.stdout
        reasons.append(f"{argv[0]}: {output.stderr.strip() or 'no output'}")
    for path in ("/var/log/kern.log", "/var/log/messages"):
        try:
            return path, ctx.read_text(path)
        except Unavailable as missing:
            reasons.append(str(missing))
    raise Unavailable("no kernel log could be read: " + "; ".join(reasons))


def _kill_row(kill: OomKill, ctx: Context, pidfile_pids: set[int]) -> dict[str, Any]:
    ours = kill.pid in pidfile_pids or kill.name in ("hivemind", "redis-server")
    return {
        "pid": kill.pid,
        "process": kill.name,
        "hours_ago": None if kill.at is None else round((ctx.now() - kill.at) / 3600, 1),
        "hivemind": ours,
        "line": kill.line[:200],
    }


def _pidfile_pids(ctx: Context) -> set[int]:
    """Pids the pid files name, live or not: a daemon the OOM killer took leaves its file."""
    folder = ctx.home.run
    records = [read_pidfile(p) for p in folder.glob("*.pid")] if folder.is_dir() else []
    return {record.pid for record in records if record is not None}


@check(
    "resources.oom",
    title="OOM-killer events",
    guide="2 記憶體使用過高: OOM 錯誤, 服務自動重啟",
    host_probe=True,
)
def oom(ctx: Context) -> Finding:
    source, text = kernel_log(ctx)
    try:
        booted = boot_time(ctx.read_text("/proc/stat"))
    except Unavailable:
        booted = None
    kills = parse_oom_kills(text, booted)
    cutoff = ctx.now() - OOM_WINDOW_SECONDS
    recent = [kill for kill in kills if kill.at is not None and kill.at >= cutoff]
    undated = [kill for kill in kills if kill.at is None]
    pids = _pidfile_pids(ctx)
    evidence = {
        "source": source,
        "recent": [_kill_row(kill, ctx, pids) for kill in recent],
        "undated": [_kill_row(kill, ctx, pids) for kill in undated],
        "older": len(kills) - len(recent) - len(undated),
    }
    fix = (
        f"lower MAX_CONCURRENT_TASKS (now {ctx.settings.effective_max_concurrent_tasks}) "
        "or add memory"
    )
    if recent:
        ours = [row for row in evidence["recent"] if row["hivemind"]]
        named = ", ".join(f"{row['process']} (pid {row['pid']})" for row in evidence["recent"][:5])
        return Finding.fail(
            f"{len(recent)} OOM kill(s) in the last 24 h"
            + (f", {len(ours)} of HiveMind's" if ours else "")
            + f": {named}",
            fix,
            **evidence,
        )
    if undated:
        return Finding.warn(
            f"{len(undated)} OOM kill(s) in {source} whose time cannot be told", fix, **evidence
        )
    return Finding.ok(f"no OOM kill in the last 24 h ({source})", **evidence)


# -- disk ------------------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (df needs a path that is there)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _redis_dir(ctx: Context) -> Path | None:
    """Redis's own data dir when it tells (CONFIG GET dir), else the one `hivemind up` uses;
    None for a Redis on another host, whose disk this host cannot see."""
    host = urlsplit(ctx.settings.redis_url).hostname or "localhost"
    if host not in ("localhost", "127.0.0.1", "::1", socket.gethostname()):
        return None
    try:
        folder = ctx.redis_config().get("dir")
    except Unavailable:
        folder = None
    return Path(folder) if folder else ctx.home.redis_dir


def watched_folders(ctx: Context) -> dict[str, Path]:
    folders = {"data": ctx.home.data, "logs": log_folders(ctx.home)[0]}
    redis_dir = _redis_dir(ctx)
    if redis_dir is not None:
        folders["redis"] = redis_dir
    return folders


def disk_verdict(space: FilesystemSpace) -> str:
    """``fail``, ``warn`` or ``ok`` for one filesystem, by the catalog's thresholds."""
    if space.free_percent < DISK_FAIL_PERCENT or space.free < DISK_FAIL_BYTES:
        return "fail"
    if space.free_percent < DISK_WARN_PERCENT or space.free < DISK_WARN_BYTES:
        return "warn"
    return "ok"


def _space_row(space: FilesystemSpace, holds: list[str]) -> dict[str, Any]:
    return {
        "mount": space.mount,
        "holds": holds,
        "free": space.free,
        "free_human": human_bytes(space.free),
        "free_percent": round(space.free_percent, 1),
        "total": space.total,
        "verdict": disk_verdict(space),
    }


def disk_spaces(ctx: Context) -> list[dict[str, Any]]:
    """One row per filesystem holding the data, log or Redis folder."""
    folders = watched_folders(ctx)
    paths = [str(_existing(path)) for path in folders.values()]
    output = ctx.run(("df", "-P", "-k", *paths))
    spaces = parse_df(output.stdout)
    if len(spaces) != len(paths):
        raise Unavailable(f"df did not report every folder: {output.stderr.strip() or output}")
    by_mount: dict[str, tuple[FilesystemSpace, list[str]]] = {}
    for label, space in zip(folders, spaces, strict=True):
        by_mount.setdefault(space.mount, (space, []))[1].append(label)
    return [_space_row(space, holds) for space, holds in by_mount.values()]


@check(
    "resources.disk",
    title="Free disk space",
    guide="2 任務執行緩慢: df -h; 5 數據庫連接失敗: 檢查磁盤空間",
    fixable=True,
    host_probe=True,
)
def disk(ctx: Context) -> Finding:
    rows = disk_spaces(ctx)
    rotated = rotated_copies(ctx.home)
    evidence = {
        "filesystems": rows,
        "hivemind_log_bytes": log_bytes(ctx.home),
        "uncompressed_rotated_logs": len(rotated),
    }
    order = {"fail": 0, "warn": 1, "ok": 2}
    worst = min(rows, key=lambda row: (order[row["verdict"]], row["free_percent"]))
    said = (
        f"{worst['free_human']} ({worst['free_percent']:.0f} %) free on {worst['mount']} "
        f"(holds {', '.join(worst['holds'])})"
    )
    if worst["verdict"] == "ok":
        return Finding.ok(said, **evidence)
    fix = (
        f"free space on {worst['mount']}: remove old backups in {ctx.home.backups}, "
        f"old task data in {ctx.home.data}"
    )
    if rotated or oversized_live_logs(ctx.home):
        fix += "; `hivemind doctor --fix` gzips HiveMind's own rotated logs"
    verdict = Finding.fail if worst["verdict"] == "fail" else Finding.warn
    return verdict(said, fix, **evidence)


@fixer("resources.disk")
def compress_logs(ctx: Context, _finding: Finding) -> list[Action]:
    """Gzip HiveMind's rotated logs (and copy-truncate a live log that escaped rotation)."""
    actions = []
    rotated = rotated_copies(ctx.home)
    if rotated:
        size = sum(path.stat().st_size for path in rotated)

        def gzip_rotated(paths: list[Path] = rotated) -> str:
            done = [compress_rotated(path) for path in paths if path.exists()]
            before = sum(item.bytes_before for item in done)
            after = sum(item.bytes_after for item in done)
            return (
                f"gzipped {len(done)} rotated log(s): {human_bytes(before)} -> {human_bytes(after)}"
            )

        actions.append(
            Action(
                "resources.disk",
                f"gzip {len(rotated)} rotated HiveMind log(s) ({human_bytes(size)}) in place",
                "gzip " + " ".join(str(path) for path in rotated),
                gzip_rotated,
                ("resources.disk",),
            )
        )
    for live in oversized_live_logs(ctx.home):

        def truncate(path: Path = live) -> str:
            done = copy_truncate(path)
            moved = human_bytes(done.bytes_before)
            return f"copied {path} ({moved}) into {done.target} and truncated it"

        actions.append(
            Action(
                "resources.disk",
                f"copy {live} ({human_bytes(live.stat().st_size)}) into a gzip beside it and "
                "truncate it (its writer appends on)",
                f"gzip -c {live} > {live}.$(date +%Y%m%dT%H%M%S).gz && truncate -s 0 {live}",
                truncate,
                ("resources.disk",),
            )
        )
    return actions


# -- open files ------------------------------------------------------------------------------


def _open_fd_count(pid: int | str) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # another user's process: its fds are not ours to count
        return None


def _fd_row(
    ctx: Context, name: str, pid: int | str
) -> tuple[dict[str, Any], int | None, float | None]:
    limit = open_files_limit(ctx.read_text(f"/proc/{pid}/limits"))
    used = _open_fd_count(pid)
    share = None
    if used is not None and limit.soft not in (UNLIMITED, 0):
        share = round(used / limit.soft, 3)
    return {"process": name, "pid": pid, "soft": limit.soft, "hard": limit.hard}, used, share


_NODEPOOL_COMMAND = re.compile(r"(-m hivemind|[\s/]hivemind|^hivemind)\s+nodepool\b")


def unmanaged_nodepools(ctx: Context) -> list[int]:
    """Node pools without a pid file of ours (a systemd unit runs them): found by command."""
    try:
        listing = ctx.run(PS_ARGV)
    except Unavailable:
        return []
    return [row.pid for row in parse_ps(listing.stdout) if _NODEPOOL_COMMAND.search(row.command)]


def nofile_fix() -> str:
    unit = systemd_unit("nodepool")
    if unit:
        return (
            f"`sudo systemctl edit {unit}`, add `LimitNOFILE={NOFILE_WANTED}` under [Service], "
            f"then `sudo systemctl restart {unit}`"
        )
    return (
        f'echo "hivemind soft nofile {NOFILE_WANTED}" | sudo tee -a /etc/security/limits.conf; '
        f'echo "hivemind hard nofile {NOFILE_WANTED}" | sudo tee -a /etc/security/limits.conf; '
        f"log in again (or `ulimit -n {NOFILE_WANTED}`) and restart with `hivemind down && "
        "hivemind up`"
    )


@check(
    "resources.fd_limit",
    title="Open-files limit",
    guide="效能調優建議 3 系統優化: nofile 65536",
)
def fd_limit(ctx: Context) -> Finding:
    processes: list[tuple[str, int | str]] = [("doctor", os.getpid())]
    daemons = running_daemons(ctx)
    processes += sorted(daemons.items())
    if NODEPOOL not in daemons:
        processes += [(NODEPOOL, pid) for pid in unmanaged_nodepools(ctx)]
    rows = []
    for name, pid in processes:
        try:
            row, used, share = _fd_row(ctx, name, pid)
        except (Unavailable, ValueError):
            continue  # exited since the pid files were read, or a kernel without the line
        rows.append({**row, "open": used, "used_share": share})
    if not rows:
        raise Unavailable("no /proc/PID/limits could be read")
    evidence = {"processes": rows, "wanted_soft": NOFILE_WANTED}
    crowded = [row for row in rows if (row["used_share"] or 0.0) > NOFILE_FAIL_USE]
    if crowded:
        worst = max(crowded, key=lambda row: row["used_share"])
        return Finding.fail(
            f"{worst['process']} (pid {worst['pid']}) has {worst['open']} of {worst['soft']} "
            "files open",
            nofile_fix(),
            **evidence,
        )
    nodepool = next((row for row in rows if row["process"] == NODEPOOL), None)
    judged = nodepool or rows[0]
    low = judged["soft"] != UNLIMITED and judged["soft"] < NOFILE_WANTED
    whose = (
        f"the node pool's (pid {judged['pid']})"
        if nodepool
        else "this shell's (a node pool started from here inherits it)"
    )
    if low:
        return Finding.warn(
            f"{whose} open-files soft limit is {judged['soft']}, below {NOFILE_WANTED}",
            nofile_fix(),
            **evidence,
        )
    return Finding.ok(f"{whose} open-files soft limit is {judged['soft']}", **evidence)
