"""logs.present and logs.errors: the parser on a fixture in HiveMind's log format, and the
verdicts on real log files written by HiveMind's own logging into a temporary HIVEMIND_HOME."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from doctor.checks import logs
from doctor.engine import run_doctor
from doctor.model import Finding, Status
from doctor.probes.logs import group_errors, recent_records, trouble_pattern
from hivemind.config import Settings
from hivemind.logs import LOG_FORMAT, rotating_handler
from hivemind.paths import layout
from hivemind.supervisor import PidRecord, start_ticks, write_pidfile
from tests.host_replay import fixture


def check_on_host(settings: Settings, check_id: str) -> Finding:
    return run_doctor(settings, only=[check_id]).result(check_id).finding


# -- the parser ------------------------------------------------------------------------------------


def test_records_of_the_last_hour_grouped_by_the_guides_patterns() -> None:
    text = fixture("hivemind_worker.log")
    since = datetime(2026, 11, 27, 9, 0, 0).timestamp()  # local time, as logging writes it
    records = recent_records(text, since)
    assert records[0].line.startswith("--- 2026-11-27 09:00:00 starting worker")
    assert len(records) == 9  # the two errors before 09:00 are outside the window
    traceback = next(r for r in records if r.line.endswith("lease failed"))
    assert len(traceback.more) == 4 and "ConnectionError" in traceback.more[-1]
    assert trouble_pattern(records[2]) is None  # INFO "connection established" is narration

    groups, peak = group_errors("worker/logs/worker.log", records)
    counts = {group.pattern: group.count for group in groups}
    assert counts == {"timeout": 2, "connection": 1, "memory": 1, "disk": 1, "failed": 1}
    timeout = next(group for group in groups if group.pattern == "timeout")
    assert timeout.first.startswith("2026-11-27 09:02:13,500 WARNING")
    assert timeout.last.startswith("2026-11-27 09:03:02,900 WARNING")
    assert peak == 3  # 09:02 holds a timeout, the ConnectionError and the MemoryError
    assert groups[0].pattern == "timeout"


def test_parser_reads_only_the_tail_of_a_long_log() -> None:
    old = "2026-11-27 07:00:00,000 ERROR hivemind.x: failed\n" * 200_000
    new = "2026-11-27 09:30:00,000 ERROR hivemind.x: failed again\n"
    since = datetime(2026, 11, 27, 9, 0, 0).timestamp()
    began = time.perf_counter()
    records = recent_records(old + new, since)
    assert [r.line for r in records] == [new.strip()]
    assert time.perf_counter() - began < 1.0
    assert recent_records("no stamps at all\njust text\n", since) == []


# -- logs.errors on real log files -----------------------------------------------------------------


@pytest.fixture
def worker_logger(settings: Settings) -> Iterator[logging.Logger]:
    """HiveMind's own rotating handler and format, writing the worker's log in the test home."""
    logger = logging.getLogger(f"hivemind.test-doctor-logs.{os.getpid()}.{time.monotonic_ns()}")
    handler = rotating_handler(layout(settings.home).worker_log)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    handler.close()
    logger.removeHandler(handler)


def test_error_burst_fails_with_first_and_last_lines(
    settings: Settings, worker_logger: logging.Logger
) -> None:
    worker_logger.info("connection established")
    for index in range(150):
        worker_logger.error("lease %d failed: deadline exceeded talking to the node pool", index)
    finding = check_on_host(settings, "logs.errors")
    assert finding.status is Status.FAIL, finding
    assert "error burst: worker/logs/worker.log" in finding.summary
    assert finding.evidence["peak_per_minute"]["worker/logs/worker.log"] >= 101
    [group] = finding.evidence["groups"]
    assert group["pattern"] == "timeout" and group["count"] == 150
    assert "lease 0 failed" in finding.fix and "lease 149 failed" in finding.fix


def test_a_few_errors_warn_and_old_ones_do_not_count(
    settings: Settings, worker_logger: logging.Logger
) -> None:
    home = layout(settings.home)
    two_hours_ago = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 7200))
    home.nodepool_log.write_text(f"{two_hours_ago},000 ERROR hivemind.nodepool: disk full\n" * 500)
    worker_logger.warning("redis connection lost, retrying")
    worker_logger.error("task 12 failed: MemoryError")
    finding = check_on_host(settings, "logs.errors")
    assert finding.status is Status.WARN, finding
    patterns = {(g["log"], g["pattern"]) for g in finding.evidence["groups"]}
    assert patterns == {
        ("worker/logs/worker.log", "connection"),
        ("worker/logs/worker.log", "memory"),
    }
    assert "node_pool/logs/nodepool.log" in finding.evidence["logs_read"]
    assert "first: " in finding.fix and "redis connection lost" in finding.fix


def test_no_log_at_all_skips(settings: Settings) -> None:
    finding = check_on_host(settings, "logs.errors")
    assert finding.status is Status.SKIP and "none of the guide's logs" in finding.summary


def test_quiet_logs_are_ok(settings: Settings, worker_logger: logging.Logger) -> None:
    worker_logger.info("registered as w1 with localhost:50051")
    worker_logger.info("connection established")
    finding = check_on_host(settings, "logs.errors")
    assert finding.status is Status.OK
    assert finding.evidence["logs_read"] == ["worker/logs/worker.log"]


def test_format_is_the_one_hivemind_writes() -> None:
    # The parser follows hivemind.logs; if the format changes, this breaks first.
    assert LOG_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"


# -- logs.present ----------------------------------------------------------------------------------


@pytest.fixture
def running_nodepool(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A live process with the node pool's pid file, as `hivemind up` leaves it."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    info = psutil.Process(proc.pid)
    # The argv we ran, as the supervisor records it: /proc/PID/cmdline can read empty for a
    # moment right after exec.
    record = PidRecord(
        "node pool", proc.pid, tuple(proc.args), info.create_time(), start_ticks(proc.pid)
    )
    write_pidfile(layout(settings.home).run / "nodepool.pid", record)
    yield proc
    proc.kill()
    proc.wait()


def test_missing_log_of_a_running_service_warns(
    settings: Settings, running_nodepool: subprocess.Popen[bytes]
) -> None:
    finding = check_on_host(settings, "logs.present")
    assert finding.status is Status.WARN, finding
    assert "node_pool/logs/nodepool.log is missing while the nodepool runs" in finding.summary
    rows = {row["log"]: row for row in finding.evidence["logs"]}
    assert rows["node_pool/logs/nodepool.log"]["service_running"]
    assert not rows["worker/logs/worker.log"]["service_running"]


def test_stale_log_of_a_running_service_warns(
    settings: Settings, running_nodepool: subprocess.Popen[bytes]
) -> None:
    log = layout(settings.home).nodepool_log
    log.write_text("2026-11-27 09:00:00,000 INFO hivemind.nodepool: serving\n")
    two_hours_ago = time.time() - 7200
    os.utime(log, (two_hours_ago, two_hours_ago))
    finding = check_on_host(settings, "logs.present")
    assert finding.status is Status.WARN
    assert "not written for 2.0 h while the nodepool runs" in finding.summary
    os.utime(log, None)  # written just now
    assert check_on_host(settings, "logs.present").status is Status.OK


def test_a_log_that_escaped_rotation_warns(settings: Settings) -> None:
    log = layout(settings.home).master_log
    with log.open("wb") as out:
        out.truncate(logs.OVERSIZED_LIVE_LOG + 1)  # sparse: big without filling the disk
    finding = check_on_host(settings, "logs.present")
    assert finding.status is Status.WARN
    assert "master/logs/master.log is 40.0 MiB: it is not being rotated" in finding.summary


def test_no_services_and_no_logs_skip(settings: Settings) -> None:
    finding = check_on_host(settings, "logs.present")
    assert finding.status is Status.SKIP
    assert str(Path(settings.home)) in finding.summary
