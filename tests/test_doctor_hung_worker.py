"""A worker frozen with SIGSTOP while it holds a task, as a new user would meet it: the doctor
names the worker and its task as soon as its heartbeat is one interval late, and keeps
naming it after the node pool has marked the worker lost."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from hivemind.client import function_spec
from tests.cluster import Cluster, started_cluster
from tests.helpers import RedisServer, wait_until

pytestmark = pytest.mark.slow

INTERVAL = 0.5  # the cluster's HEARTBEAT_INTERVAL


def doctor(cluster: Cluster, *checks: str) -> dict[str, dict[str, object]]:
    args = [arg for check in checks for arg in ("--only", check)]
    proc = cluster.cli("doctor", "--json", *args, check=False)
    return {row["id"]: row for row in json.loads(proc.stdout)["checks"]}


def test_a_frozen_worker_holding_a_task_is_flagged_by_name(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # A long lease: the task stays with the frozen worker for the whole test.
    with started_cluster(redis_server, tmp_path, lease_timeout="60") as cluster:
        with cluster.client() as client:
            [task_id] = client.submit([function_spec("hivemind.examples:sleep", [60])])
            assert wait_until(lambda: client.get(task_id).status == "RUNNING", 30)
            worker = client.get(task_id).worker
        before = doctor(cluster, "workers.heartbeat", "workers.count")
        assert before["workers.heartbeat"]["status"] == "ok", before["workers.heartbeat"]
        assert before["workers.count"]["status"] == "ok"
        pid = cluster.pid(f"worker-{worker}")
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            time.sleep(2 * INTERVAL + 0.3)  # the beat due after the last one is an interval late
            flagged = doctor(cluster, "workers.heartbeat")["workers.heartbeat"]
            took = time.monotonic() - stopped_at
            assert flagged["status"] == "warn", flagged
            assert worker in flagged["summary"] and task_id in flagged["summary"]
            assert flagged["evidence"]["holding"] == {worker: [task_id]}
            assert took < 10
            # Marked lost by the node pool after three intervals: still seen by both checks.
            r = cluster.redis()
            assert wait_until(lambda: r.hget(f"worker:{worker}", "status") == "lost", 10)
            later = doctor(cluster, "workers.heartbeat", "workers.count")
            assert later["workers.heartbeat"]["status"] == "warn"
            assert f"{worker} (lost" in later["workers.heartbeat"]["summary"]
            count = later["workers.count"]
            assert count["status"] == "warn", count
            assert f"{worker} (lost) holds 1 task(s) {task_id}" in count["summary"]
        finally:
            os.kill(pid, signal.SIGCONT)
        with cluster.client() as client:
            client.cancel(task_id)
