"""The resources.* checks: each parser on captured (or documented-format) probe output, and each
verdict on this host put into the state where that can be done without root changes to it."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from doctor.checks import resources
from doctor.context import Context
from doctor.engine import run_doctor
from doctor.fixes import actions_log, apply_fixes, plan_fixes
from doctor.model import Finding, Status
from doctor.probes.cpu import (
    busy_percent,
    core_count,
    parse_loadavg,
    parse_proc_stat,
    process_cpu_ticks,
)
from doctor.probes.disk import parse_df
from doctor.probes.limits import open_files_limit, parse_limits
from doctor.probes.memory import parse_meminfo
from doctor.probes.oom import boot_time, parse_oom_kills
from doctor.probes.processes import descendants, parse_ps, top_by_rss
from hivemind.config import Settings
from hivemind.paths import layout
from hivemind.supervisor import PidRecord, start_ticks, write_pidfile
from tests.helpers import wait_until
from tests.host_replay import ReplayContext, fixture, output, run_check

KIB, MIB, GIB = 1024, 1024**2, 1024**3


# -- helpers ---------------------------------------------------------------------------------------


def spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def register_daemon(settings: Settings, name: str, proc: subprocess.Popen[bytes]) -> None:
    """Write the pid file `hivemind up` would have written for ``proc``."""
    info = psutil.Process(proc.pid)
    # The argv we ran, as the supervisor records it: /proc/PID/cmdline can read empty for a
    # moment right after exec.
    record = PidRecord(name, proc.pid, tuple(proc.args), info.create_time(), start_ticks(proc.pid))
    write_pidfile(layout(settings.home).run / f"{name}.pid", record)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def check_on_host(settings: Settings, check_id: str, timeout: float = 5.0) -> object:
    return run_doctor(settings, only=[check_id], timeout=timeout).result(check_id).finding


# -- CPU -------------------------------------------------------------------------------------------


def test_cpu_sample_parsed_from_captured_proc_stat() -> None:
    before = parse_proc_stat(fixture("proc_stat_before.txt"))
    after = parse_proc_stat(fixture("proc_stat_after.txt"))
    assert set(before) == {"cpu", "cpu0", "cpu1"}
    assert core_count(fixture("proc_stat_before.txt")) == 2
    percents = busy_percent(before, after)
    assert set(percents) == {"cpu", "cpu0", "cpu1"}
    assert all(0.0 <= value <= 100.0 for value in percents.values())
    # The all-cores line is the mean of the per-core lines over the same interval.
    elapsed = [after[c].total - before[c].total for c in ("cpu0", "cpu1")]
    mean = sum(percents[c] * e for c, e in zip(("cpu0", "cpu1"), elapsed, strict=True)) / sum(
        elapsed
    )
    assert percents["cpu"] == pytest.approx(mean, abs=1.0)
    # The doctor's own ticks are taken off the total, never below zero.
    spent = after["cpu"].busy - before["cpu"].busy
    assert busy_percent(before, after, discount=spent)["cpu"] == 0.0
    assert process_cpu_ticks(fixture("proc_self_stat.txt")) >= 0


def test_cpu_warns_while_every_core_is_busy(settings: Settings, children: list) -> None:
    for _ in range(os.cpu_count() or 1):
        children.append(spawn("while True: pass"))
    time.sleep(0.3)
    finding = check_on_host(settings, "resources.cpu")
    assert finding.status is Status.WARN, finding
    assert finding.evidence["busy_percent"] > resources.CPU_BUSY_WARN_PERCENT
    assert "MAX_CONCURRENT_TASKS" in finding.fix


# -- load ------------------------------------------------------------------------------------------


def test_load_parsed_and_judged_per_core() -> None:
    assert parse_loadavg(fixture("proc_loadavg_overloaded.txt")).five == 8.75
    replay = ReplayContext(
        Settings(),
        files={
            "/proc/loadavg": fixture("proc_loadavg_overloaded.txt"),
            "/proc/stat": fixture("proc_stat_before.txt"),
        },
    )
    # Why a fixture: a 5-minute load of 2 x cores cannot be built up within a test's time.
    finding = run_check("resources.load", replay)
    assert finding.status is Status.WARN
    assert finding.evidence["cores"] == 2 and "8.75" in finding.summary


def test_load_of_this_host_is_what_the_kernel_reports(settings: Settings) -> None:
    finding = check_on_host(settings, "resources.load")
    assert finding.evidence["load5"] == pytest.approx(os.getloadavg()[1], abs=1.0)
    assert finding.evidence["cores"] == os.cpu_count()
    overloaded = finding.evidence["load5"] > 2 * finding.evidence["cores"]
    assert finding.status is (Status.WARN if overloaded else Status.OK)


# -- memory and swap -------------------------------------------------------------------------------


def test_meminfo_parsed_from_captured_file() -> None:
    state = parse_meminfo(fixture("proc_meminfo.txt"))
    text = fixture("proc_meminfo.txt")
    total_kib = int(
        next(line for line in text.splitlines() if line.startswith("MemTotal")).split()[1]
    )
    assert state.total == total_kib * KIB
    assert 0 < state.available <= state.total
    with pytest.raises(ValueError):
        parse_meminfo("garbage\n")


def test_memory_pressure_fails_and_swap_use_warns() -> None:
    # Why a fixture: squeezing this shared host to 5 % free memory would hurt everyone on it.
    replay = ReplayContext(
        Settings(), files={"/proc/meminfo": fixture("proc_meminfo_pressure.txt")}
    )
    memory = run_check("resources.memory", replay)
    assert memory.status is Status.FAIL
    assert memory.evidence["available_percent"] < 5
    swap = run_check("resources.swap", replay)
    assert swap.status is Status.WARN and swap.evidence["swap_used_percent"] == 75.0


def test_no_swap_on_a_small_host_warns_with_the_guides_commands() -> None:
    text = fixture("proc_meminfo_pressure.txt").replace("2097148", "0").replace("524288", "0")
    replay = ReplayContext(Settings(), files={"/proc/meminfo": text})
    finding = run_check("resources.swap", replay)
    assert finding.status is Status.WARN
    assert "mkswap /swapfile" in finding.fix and "swapon /swapfile" in finding.fix


def test_memory_and_swap_of_this_host(settings: Settings) -> None:
    report = run_doctor(settings, only=["resources.memory", "resources.swap"])
    memory = report.result("resources.memory").finding
    assert memory.evidence["total"] == psutil.virtual_memory().total
    share = 100 * psutil.virtual_memory().available / psutil.virtual_memory().total
    assert memory.evidence["available_percent"] == pytest.approx(share, abs=3)
    swap = report.result("resources.swap").finding
    assert swap.evidence["swap_total"] == psutil.swap_memory().total


# -- processes -------------------------------------------------------------------------------------


def test_ps_output_parsed_and_ranked() -> None:
    rows = parse_ps(fixture("ps_eo.txt"))
    assert len(rows) == len(fixture("ps_eo.txt").splitlines())
    top = top_by_rss(rows, 5)
    assert [row.rss for row in top] == sorted((row.rss for row in rows), reverse=True)[:5]
    assert rows[0].pid == 1 and rows[0].ppid == 0
    assert descendants(rows, {2}) >= {2, 3}  # kthreadd and its kernel threads


def test_a_hivemind_process_above_its_budget_warns(settings: Settings, children: list) -> None:
    worker = spawn(
        "import sys, time; x = bytearray(160 * 2**20); print(1, flush=True); time.sleep(60)"
    )
    children.append(worker)
    assert worker.stdout is not None and worker.stdout.readline()
    register_daemon(settings, "worker-w1", worker)
    settings = settings.replace(task_memory_limit_mb=64)
    finding = check_on_host(settings, "resources.top_processes")
    assert finding.status is Status.WARN, finding
    over = finding.evidence["over_budget"]
    # Other HiveMind processes on this shared host may be over 64 MiB too: all are named.
    mine = next(row for row in over if row["pid"] == worker.pid)
    assert mine["hivemind"] and mine["rss"] > 150 * MIB
    assert all(row["hivemind"] and row["rss"] > 64 * MIB for row in over)
    # The same process within a larger budget is fine.
    relaxed = check_on_host(settings.replace(task_memory_limit_mb=1024), "resources.top_processes")
    assert relaxed.status is Status.OK and len(relaxed.evidence["top"]) == 5


# -- OOM kills -------------------------------------------------------------------------------------


def test_oom_kills_parsed_from_dmesg_and_journal() -> None:
    booted = 1_800_000_000.0
    kills = parse_oom_kills(fixture("dmesg_oom.txt"), booted)
    assert [(k.pid, k.name) for k in kills] == [(40122, "python3"), (41877, "redis-server")]
    assert kills[0].at == pytest.approx(booted + 86012.118720)
    journal = parse_oom_kills(fixture("journal_kernel_oom.txt"))
    assert [(k.pid, k.name) for k in journal] == [(4011, "java"), (5120, "hivemind")]
    assert journal[1].at == datetime.fromisoformat("2026-11-27T09:14:02+00:00").timestamp()
    assert parse_oom_kills(fixture("dmesg.txt"), booted) == []  # this host: segfaults, no OOM
    assert boot_time(fixture("proc_stat_before.txt")) is not None


def test_an_oom_kill_in_the_last_day_fails_and_names_hivemind() -> None:
    # Why a fixture: an OOM kill cannot be provoked on a shared host without harming it.
    now = datetime.fromisoformat("2026-11-27T20:00:00+00:00").timestamp()
    replay = ReplayContext(
        Settings(home=Path("/nonexistent-hivemind-home")),
        clock=lambda: now,
        commands={
            ("dmesg",): output("", 1, "dmesg: read kernel buffer failed: Operation not permitted"),
            ("journalctl", "-k", "-o", "short-iso", "--no-pager", "-q"): output(
                fixture("journal_kernel_oom.txt")
            ),
        },
    )
    finding = run_check("resources.oom", replay)
    assert finding.status is Status.FAIL
    assert [row["pid"] for row in finding.evidence["recent"]] == [5120]
    assert finding.evidence["recent"][0]["hivemind"]
    assert finding.evidence["older"] == 1  # the java kill two days earlier
    assert "MAX_CONCURRENT_TASKS" in finding.fix


def test_oom_on_this_host_reads_the_real_kernel_log(settings: Settings) -> None:
    finding = check_on_host(settings, "resources.oom")
    if finding.status is Status.SKIP:
        assert "kernel log" in finding.summary
    else:
        assert finding.evidence["source"] in ("dmesg", "journalctl -k -o short-iso --no-pager -q")


# -- disk ------------------------------------------------------------------------------------------


def test_df_output_parsed() -> None:
    rows = parse_df(fixture("df_P_k.txt"))
    assert [row.mount for row in rows] == ["/", "/"]
    full = parse_df(fixture("df_P_k_full.txt"))
    assert [row.mount for row in full] == ["/", "/srv/hive mind"]
    assert full[0].free == 563640 * KIB
    assert [resources.disk_verdict(row) for row in full] == ["fail", "warn"]


def test_disk_of_a_real_home_matches_statvfs(settings: Settings) -> None:
    finding = check_on_host(settings, "resources.disk")
    rows = finding.evidence["filesystems"]
    assert {"data", "logs", "redis"} <= {held for row in rows for held in row["holds"]}
    stat = os.statvfs(layout(settings.home).data)
    free = stat.f_bavail * stat.f_frsize
    row = next(row for row in rows if "data" in row["holds"])
    assert row["free"] == pytest.approx(free, rel=0.01)
    roomy = free > resources.DISK_WARN_BYTES and row["free_percent"] > resources.DISK_WARN_PERCENT
    assert (finding.status is Status.OK) == roomy


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 48 MiB tmpfs, unmounted afterwards (mounting needs root; skipped without)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_and_fix_gzips_hivemind_logs(
    settings: Settings, small_filesystem: Path
) -> None:
    home = layout(small_filesystem / "home").ensure()
    settings = settings.replace(home=home.root)
    line = "2026-11-27 09:00:00,000 INFO hivemind.nodepool: leased task 0123456789abcdef\n"
    for index in (1, 2):
        (home.nodepool_log.parent / f"nodepool.log.{index}").write_text(line * 260_000)  # ~19 MiB
    home.nodepool_log.write_text(line)
    user_data = home.data / "result.bin"
    user_data.write_bytes(os.urandom(MIB))

    report = run_doctor(settings, only=["resources.disk"])
    before = report.result("resources.disk")
    assert before.status is Status.FAIL and before.can_fix
    assert before.finding.evidence["uncompressed_rotated_logs"] == 2
    assert "--fix" in before.finding.fix

    context = Context(settings)
    actions = plan_fixes(report, context)
    assert len(actions) == 1 and "gzip 2 rotated HiveMind log(s)" in actions[0].description
    run = apply_fixes(report, actions, context)
    assert run.outcomes[0].applied, run.outcomes[0].message

    logs = sorted(p.name for p in home.nodepool_log.parent.iterdir())
    assert logs == ["nodepool.log", "nodepool.log.1.gz", "nodepool.log.2.gz"]
    with gzip.open(home.nodepool_log.parent / "nodepool.log.1.gz", "rt") as unpacked:
        assert unpacked.read() == line * 260_000  # compressed, not lost
    assert user_data.stat().st_size == MIB and home.nodepool_log.read_text() == line

    after = run.after["resources.disk"]
    small = next(r for r in after.finding.evidence["filesystems"] if "logs" in r["holds"])
    small_before = next(r for r in before.finding.evidence["filesystems"] if "logs" in r["holds"])
    assert small["free"] > small_before["free"] + 30 * MIB
    assert after.finding.evidence["uncompressed_rotated_logs"] == 0
    assert after.finding.evidence["hivemind_log_bytes"] < MIB
    # A 48 MiB filesystem stays below the 500 MiB floor: the re-check says so rather than ok.
    assert after.status is Status.FAIL
    logged = [json.loads(x) for x in actions_log(context).read_text().splitlines()]
    assert logged[-1]["check"] == "resources.disk" and logged[-1]["applied"]
    assert "gzipped 2 rotated log(s)" in logged[-1]["result"]


def test_disk_fix_plans_nothing_without_rotated_logs(settings: Settings) -> None:
    context = Context(settings)
    finding = Finding.warn("low disk", "free space")
    assert resources.compress_logs(context, finding) == []


# -- open files ------------------------------------------------------------------------------------

HOLD_FILES = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {soft}))
held = [open("/dev/null") for _ in range({count})]
print("ready", flush=True)
time.sleep(60)
"""


def test_limits_parsed_from_captured_file() -> None:
    limits = parse_limits(fixture("proc_limits.txt"))
    assert "Max open files" in limits and "Max cpu time" in limits
    assert open_files_limit(fixture("proc_limits.txt")).soft == 20000
    assert limits["Max cpu time"].soft == -1  # unlimited


def test_a_node_pool_near_its_open_files_limit_fails(settings: Settings, children: list) -> None:
    nodepool = spawn(HOLD_FILES.format(soft=64, count=60))
    children.append(nodepool)
    assert nodepool.stdout is not None and nodepool.stdout.readline() == b"ready\n"
    register_daemon(settings, "nodepool", nodepool)
    finding = check_on_host(settings, "resources.fd_limit")
    assert finding.status is Status.FAIL, finding
    assert f"pid {nodepool.pid}" in finding.summary and "of 64 files open" in finding.summary
    assert "nofile 65536" in finding.fix or "LimitNOFILE=65536" in finding.fix


def test_a_node_pool_with_a_low_soft_limit_warns(settings: Settings, children: list) -> None:
    nodepool = spawn(HOLD_FILES.format(soft=1024, count=3))
    children.append(nodepool)
    assert nodepool.stdout is not None and nodepool.stdout.readline() == b"ready\n"
    register_daemon(settings, "nodepool", nodepool)
    assert wait_until(lambda: Path(f"/proc/{nodepool.pid}/limits").exists())
    finding = check_on_host(settings, "resources.fd_limit")
    assert finding.status is Status.WARN, finding
    assert "node pool's" in finding.summary and "1024" in finding.summary
    rows = {row["process"]: row for row in finding.evidence["processes"]}
    assert rows["nodepool"]["soft"] == 1024 and rows["doctor"]["pid"] == os.getpid()


def test_a_node_pool_without_our_pid_file_is_found_by_its_command(
    settings: Settings, children: list
) -> None:
    # As a systemd unit runs it: no pid file in $HIVEMIND_HOME/run, `… -m hivemind nodepool`.
    code = HOLD_FILES.format(soft=2048, count=3)
    nodepool = subprocess.Popen(
        [sys.executable, "-c", code, "-m", "hivemind", "nodepool"], stdout=subprocess.PIPE
    )
    children.append(nodepool)
    assert nodepool.stdout is not None and nodepool.stdout.readline() == b"ready\n"
    finding = check_on_host(settings, "resources.fd_limit")
    rows = [row for row in finding.evidence["processes"] if row["pid"] == nodepool.pid]
    assert rows and rows[0]["process"] == "nodepool" and rows[0]["soft"] == 2048
    assert finding.status is Status.WARN and "node pool's" in finding.summary
