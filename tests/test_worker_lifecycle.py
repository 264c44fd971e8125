"""A worker's life over real processes: checkpoints carried over, graceful and hard stops."""

from __future__ import annotations

import json
import os
import signal
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from hivemind.client import bundle_spec, function_spec
from tests.cluster import Cluster, started_cluster
from tests.helpers import RedisServer, wait_until

pytestmark = pytest.mark.slow

# Attempt 1 saves a checkpoint and then hangs; a later attempt finds it and finishes.
RESUMABLE = """
import time
from pathlib import Path
from hivemind.task import attempt, checkpoint_dir, report_progress

state = checkpoint_dir() / "state.txt"
if state.exists():
    Path("output").mkdir(exist_ok=True)
    Path("output/resumed.txt").write_text(f"{state.read_text()} -> resumed in attempt {attempt()}")
else:
    state.write_text(f"saved by attempt {attempt()}")
    report_progress(0.5, "checkpoint saved")
    time.sleep(600)
"""


def upload_bundle(cluster: Cluster, tmp_path: Path, source: str) -> str:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("main.py", source)
    with cluster.client() as c:
        return c.upload_bundle(path)


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def holder_pid(cluster: Cluster, task_id: str) -> int:
    with cluster.client() as c:
        worker = c.get(task_id).worker
    return cluster.pid(f"worker-{worker}")


def test_checkpoint_of_attempt_one_reaches_attempt_two(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path) as cluster:
        bundle_id = upload_bundle(cluster, tmp_path, RESUMABLE)
        with cluster.client() as c:
            [tid] = c.submit([bundle_spec(bundle_id, retries=2)])
            r = cluster.redis()
            assert wait_until(lambda: r.hget(f"task:{tid}", "has_checkpoint") == "1", 30)
            # The bundle's progress report arrived too.
            assert wait_until(lambda: c.get(tid).progress_message == "checkpoint saved", 10)
            os.kill(holder_pid(cluster, tid), signal.SIGKILL)
            [task] = c.wait([tid], 60)
            assert task.status == "SUCCEEDED", task.error_message
            assert task.attempt == 2
            out = c.fetch_result(tid, tmp_path / "out")
        assert (out / "resumed.txt").read_text() == "saved by attempt 1 -> resumed in attempt 2"


def test_function_checkpoint_reaches_the_next_attempt_on_another_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path) as cluster:
        with cluster.client() as c:
            # Attempt 1 saves a checkpoint and works on for 20 s; its worker dies meanwhile.
            [tid] = c.submit([function_spec("hivemind.examples:resumable", [20], retries=2)])
            r = cluster.redis()
            assert wait_until(lambda: r.hget(f"task:{tid}", "has_checkpoint") == "1", 30)
            first = c.get(tid).worker
            os.kill(cluster.pid(f"worker-{first}"), signal.SIGKILL)
            [task] = c.wait([tid], 60)
        assert task.status == "SUCCEEDED", task.error_message
        assert (task.attempt, task.worker != first) == (2, True)
        assert json.loads(task.result_json) == "saved by attempt 1 -> resumed in attempt 2"


def test_handed_back_function_task_keeps_its_checkpoint(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path, shutdown_grace="0.5") as cluster:
        with cluster.client() as c:
            [tid] = c.submit([function_spec("hivemind.examples:resumable", [20], retries=0)])
            r = cluster.redis()
            assert wait_until(lambda: c.get(tid).progress_message == "checkpoint saved", 30)
            first = c.get(tid).worker
            # Stopped before its checkpoint went up by itself: the hand-back takes it along.
            process = psutil.Process(cluster.pid(f"worker-{first}"))
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            [task] = c.wait([tid], 60)
            assert r.hget(f"task:{tid}", "has_checkpoint") == "1"
        assert task.status == "SUCCEEDED", task.error_message
        # (The stopping worker's open lease call may take it once more and hand it back too.)
        assert task.attempt >= 2 and task.worker != first
        resumed = f"saved by attempt 1 -> resumed in attempt {task.attempt}"
        assert json.loads(task.result_json) == resumed


def test_first_sigterm_hands_unfinished_tasks_back(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path, shutdown_grace="1") as cluster:
        with cluster.client() as c:
            # No retries: handing a task back must not use one up.
            ids = c.submit(
                [function_spec("hivemind.examples:sleep", [4], retries=0) for _ in range(2)]
            )
            assert wait_until(lambda: all(t.status == "RUNNING" for t in c.wait(ids, 0)), 30)
            victim = c.get(ids[0]).worker
            held = [t.id for t in c.wait(ids, 0) if t.worker == victim]
            process = psutil.Process(cluster.pid(f"worker-{victim}"))
            process.send_signal(signal.SIGTERM)
            process.wait(30)  # it leaves by itself after the grace period
            tasks = c.wait(ids, 60)
        assert [t.status for t in tasks] == ["SUCCEEDED", "SUCCEEDED"]
        r = cluster.redis()
        for task_id in held:
            history = r.lrange(f"task:{task_id}:history", 0, -1)
            assert any('"released"' in h for h in history)
            assert cluster.terminal_events(task_id) == ["succeeded"]


def test_second_sigterm_exits_at_once_and_kills_task_processes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    marker = f"hivemind-hard-stop-{os.getpid()}"
    source = (
        "import subprocess, time\n"
        f"subprocess.Popen(['bash', '-c', 'exec -a {marker} sleep 300'])\n"
        "time.sleep(300)\n"
    )
    with started_cluster(redis_server, tmp_path, shutdown_grace="60") as cluster:
        bundle_id = upload_bundle(cluster, tmp_path, source)
        with cluster.client() as c:
            [tid] = c.submit([bundle_spec(bundle_id, retries=1)])

            def marker_alive() -> bool:
                return any(
                    marker in " ".join(p.info["cmdline"] or [])
                    for p in psutil.process_iter(["cmdline"])
                )

            assert wait_until(marker_alive, 30)
            process = psutil.Process(holder_pid(cluster, tid))
            # This attempt's processes: once the lease expires, the next attempt starts its own.
            task_processes = [p.pid for p in process.children(recursive=True)]
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(10)  # (a dead worker is reaped by init, here up to ~2 s later)
            assert time.monotonic() - started < 5
            assert wait_until(lambda: not any(running(pid) for pid in task_processes), 10)
            # Its lease expires and the task runs again elsewhere.
            assert wait_until(lambda: c.get(tid).attempt == 2, 30)
            c.cancel(tid)


def test_worker_killed_with_sigkill_leaves_no_task_process_behind(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    marker = f"hivemind-orphan-{os.getpid()}"
    source = (
        "import subprocess, time\n"
        f"subprocess.Popen(['bash', '-c', 'exec -a {marker} sleep 300'])\n"
        "time.sleep(300)\n"
    )

    def marker_alive() -> bool:
        return any(
            marker in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
        )

    with started_cluster(redis_server, tmp_path, workers=1) as cluster:
        bundle_id = upload_bundle(cluster, tmp_path, source)
        with cluster.client() as c:
            ids = c.submit(
                [
                    bundle_spec(bundle_id, retries=0),
                    function_spec("hivemind.examples:sleep", [300], retries=0),
                ]
            )
            assert wait_until(lambda: all(t.status == "RUNNING" for t in c.wait(ids, 0)), 30)
            assert wait_until(marker_alive, 30)
            worker = psutil.Process(cluster.pid(f"worker-{c.get(ids[0]).worker}"))
            task_processes = [p.pid for p in worker.children(recursive=True)]
            os.kill(worker.pid, signal.SIGKILL)
            # The bundle, what it started, and the pool processes (one runs the sleep) go too.
            assert wait_until(lambda: not any(running(pid) for pid in task_processes), 10)
            assert not marker_alive()
