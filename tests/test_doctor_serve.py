"""`hivemind doctor serve`: the checks as Prometheus gauges, scraped with prometheus_client's
own text parser, against the session's real Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from doctor import all_checks
from doctor.exporter import Exporter, serve
from doctor.model import CheckSpec, Finding
from doctor.registry import select
from hivemind.config import Settings
from hivemind.taskstore import NewTask, TaskStore
from tests.helpers import REPO_ROOT, free_port, wait_until


def scrape(address: tuple[str, int]) -> tuple[dict[str, float], float]:
    """``hivemind_check_status`` by check id, and how long the scrape took."""
    began = time.monotonic()
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=10) as r:
        text = r.read().decode()
    took = time.monotonic() - began
    statuses = {}
    for family in text_string_to_metric_families(text):
        if family.name == "hivemind_check_status":
            for sample in family.samples:
                statuses[sample.labels["id"]] = sample.value
    return statuses, took


def _hangs(_ctx: object) -> Finding:
    time.sleep(60)
    return Finding.ok("never")


SERVE_ARGS = ("--only", "redis", "--interval", "5")
HANGING = CheckSpec("test.hangs", "A probe that hangs", "none", _hangs)  # type: ignore[arg-type]


@pytest.fixture
def exporter(settings: Settings) -> Iterator[Exporter]:
    specs = [*select(all_checks(), ["workers.count", "redis.persistence"], []), HANGING]
    running = serve(settings, specs, "127.0.0.1", 0, interval=60, timeout=1.5)
    try:
        yield running
    finally:
        running.close()


def test_a_hanging_check_delays_no_scrape_and_shows_as_an_error(exporter: Exporter) -> None:
    statuses, took = scrape(exporter.address)
    assert took < 1.0
    assert statuses["workers.count"] == 1  # warn: no worker is registered
    assert "redis.persistence" in statuses
    assert "test.hangs" not in statuses  # no finding yet, and none made up
    time.sleep(1.6)  # past its timeout
    statuses, took = scrape(exporter.address)
    assert took < 1.0
    assert statuses["test.hangs"] == 3  # error: it hangs


def test_a_fault_injected_shows_in_the_next_scrape(exporter: Exporter, settings: Settings) -> None:
    statuses, _ = scrape(exporter.address)
    assert statuses["workers.count"] == 1
    # The fault: a task is queued and no worker can run it.
    task = NewTask("alice", "job", "function", {"function": "hivemind.examples:noop"}, 60, 0, 0)
    TaskStore(redis.Redis.from_url(settings.redis_url, decode_responses=True)).submit([task])
    statuses, took = scrape(exporter.address)
    assert statuses["workers.count"] == 2 and took < 1.0


def test_the_command_serves_until_sigterm(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hivemind", "doctor", "serve", "--port", str(port), *SERVE_ARGS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def answers() -> bool:
            try:
                return bool(scrape(("127.0.0.1", port))[0])
            except OSError:
                return False

        assert wait_until(answers, 30)
        statuses, _ = scrape(("127.0.0.1", port))
        assert set(statuses) == {s.id for s in select(all_checks(), ["redis"], [])}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "/metrics" in out


def test_a_port_in_use_is_a_clear_error(settings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "hivemind", "doctor", "serve", "--port", str(port)],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
