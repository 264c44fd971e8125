"""The outage drill, as a test: a stack started by `hivemind up` (with its own Redis) loses
Redis, the node pool and the workers to kill -9 and some pid files with them; `hivemind
recover` brings it back to a doctor run with no fail, and no task is lost."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hivemind.client import function_spec
from tests.cluster import Cluster, make_cluster
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.slow

TASKS = 12


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Cluster]:
    # Nothing answers on this port, so `up` starts its own Redis, with a pid file and its
    # persistence in $HIVEMIND_HOME/redis: the drill kills that one.
    cluster = make_cluster(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    cluster.up(workers=2)
    try:
        yield cluster
    finally:
        cluster.down()


def home_state(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """Every file under HIVEMIND_HOME with its size and mtime.

    SQLite's shared-memory index (users.db-shm) is left out: the doctor's read-only look at
    users.db maps it, which touches its mtime without changing any data."""
    return {
        str(p.relative_to(cluster.home)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(cluster.home.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


def kill_everything(cluster: Cluster) -> None:
    run = cluster.home / "run"
    services = ["redis", "nodepool", *(p.stem for p in sorted(run.glob("worker-*.pid")))]
    procs = [psutil.Process(cluster.pid(name)) for name in services]
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    # Some pid files go with them; the others are left stale.
    (run / "nodepool.pid").unlink()
    (run / "worker-local-2.pid").unlink()


def test_outage_drill_recover_brings_the_stack_back_and_loses_no_task(stack: Cluster) -> None:
    with stack.client() as client:
        ids = client.submit(
            [function_spec("hivemind.examples:sleep", [0.5], retries=3) for _ in range(TASKS)]
        )
        assert wait_until(lambda: any(t.status == "RUNNING" for t in client.wait(ids, 0)), 20)
    time.sleep(1.5)  # Redis's append-only file is fsynced every second
    kill_everything(stack)

    # --dry-run: the plan, and nothing changes.
    before = home_state(stack)
    plan = stack.cli("recover", "--dry-run", check=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    text = " ".join(plan.stdout.split())
    assert "would start redis" in text and "nothing was changed" in text
    assert home_state(stack) == before

    began = time.monotonic()
    done = stack.cli("recover", check=False, timeout=300)
    took = time.monotonic() - began
    output = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"healthy after ([0-9.]+)s \(time to healthy\)", output)
    assert match, output
    print(f"\noutage drill: time to healthy {match.group(1)} s (wall {took:.1f} s)")

    doctor = stack.cli("doctor", "--json", check=False)
    report = json.loads(doctor.stdout)
    assert [c["id"] for c in report["checks"] if c["status"] == "fail"] == []

    with stack.client() as client:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            tasks = client.wait(ids, 10)
            if all(t.status == "SUCCEEDED" for t in tasks):
                break
    assert [t.status for t in tasks] == ["SUCCEEDED"] * TASKS

    audit = (stack.home / "recovery" / "audit.log").read_text().splitlines()
    entries = [json.loads(line) for line in audit]
    assert {"who", "at", "host", "step", "before", "after", "duration_s"} <= set(entries[0])
    assert any(e["step"] == "Start Redis" and e["status"] == "changed" for e in entries)

    # A second recover on the healthy stack does nothing, and says so.
    again = stack.cli("recover", check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in " ".join(again.stdout.split())
    assert (stack.home / "recovery" / "audit.log").read_text().splitlines() == audit
