"""End to end over real processes: `hivemind up`, real workers, real Redis, real gRPC."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hivemind.client import bundle_spec, function_spec, result_value
from tests.cluster import Cluster, make_cluster, started_cluster
from tests.helpers import RedisServer, wait_until

pytestmark = pytest.mark.slow

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello"


def bundle_zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def upload(cluster: Cluster, tmp: Path, files: dict[str, str]) -> str:
    path = tmp / f"b{abs(hash(tuple(files.items())))}.zip"
    path.write_bytes(bundle_zip(files))
    with cluster.client() as c:
        return c.upload_bundle(path)


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("e2e")
    c = make_cluster(root, redis_server.url.rsplit("/", 1)[0] + "/5")
    redis_server.client().execute_command("SELECT", 5)
    c.up(workers=2)
    try:
        yield c
    finally:
        c.down()


def test_up_is_healthy_and_idempotent(cluster: Cluster) -> None:
    again = cluster.up(workers=2)
    assert "already running" in again.stdout or "healthy" in again.stdout
    status = cluster.cli("status", "--json")
    assert json.loads(status.stdout)["healthy"] is True


def test_fifty_bundles_and_two_hundred_functions_all_succeed(
    cluster: Cluster, tmp_path: Path
) -> None:
    script = (
        "import sys\nfrom pathlib import Path\n"
        "n = int(sys.argv[1])\n"
        "Path('output').mkdir(exist_ok=True)\n"
        "Path('output/square.txt').write_text(str(n * n))\nprint('done', n)\n"
    )
    with cluster.client() as c:
        specs = []
        for n in range(50):
            manifest = json.dumps({"entrypoint": ["python", "main.py", str(n)]})
            bundle_id = upload(cluster, tmp_path, {"main.py": script, "task.json": manifest})
            specs.append(bundle_spec(bundle_id, name=f"square-{n}"))
        specs += [function_spec("hivemind.examples:add", [n, 1000]) for n in range(200)]
        ids = c.submit(specs)
        deadline = time.monotonic() + 240
        done = []
        while time.monotonic() < deadline:
            done = c.wait(ids[:], timeout=20)
            if all(t.status in ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELLED") for t in done):
                break
        assert [t.status for t in done] == ["SUCCEEDED"] * 250, [
            (t.id, t.status, t.error_message) for t in done if t.status != "SUCCEEDED"
        ]
        assert [result_value(t) for t in done[50:]] == [n + 1000 for n in range(200)]
        for n in (0, 7, 49):
            out = c.fetch_result(ids[n], tmp_path / f"out{n}")
            assert (out / "square.txt").read_text() == str(n * n)
        log = "".join(c.stream_log(ids[7]))
        assert "done 7" in log


def test_cli_submit_bundle_wait_and_fetch_result(cluster: Cluster, tmp_path: Path) -> None:
    proc = cluster.cli("submit", str(HELLO), "--wait", "--json")
    [task] = json.loads(proc.stdout)
    assert task["status"] == "SUCCEEDED" and task["progress"] == 1
    cluster.cli("task", "result", task["id"], "-o", str(tmp_path / "res"))
    assert (tmp_path / "res" / "sum.txt").read_text().strip() == "55"
    logs = cluster.cli("task", "logs", task["id"]).stdout
    assert "hello from a HiveMind worker" in logs
    add = cluster.cli(
        "submit", "hivemind.examples:add", "--arg", "2", "--arg", "3", "--wait", "--json"
    )
    assert json.loads(add.stdout)[0]["result"] == 5
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(str(i) for i in range(10)) + "\n")
    mapped = cluster.cli(
        "submit", "--map", "hivemind.examples:square", "--items", str(items), "--wait", "--json"
    )
    assert [t["result"] for t in json.loads(mapped.stdout)] == [i * i for i in range(10)]
    listing = json.loads(cluster.cli("tasks", "--json").stdout)
    assert {t["id"] for t in listing} >= {task["id"]}


def test_failed_task_exits_one_with_its_error(cluster: Cluster) -> None:
    proc = cluster.cli("submit", "hivemind.examples:fail", "--wait", check=False)
    assert proc.returncode == 1
    assert "this task fails on purpose" in proc.stdout
    # No live worker allows `os`: refused at submit, before a task exists.
    refused = cluster.cli("submit", "os:system", "--arg", "true", "--wait", check=False)
    assert refused.returncode != 0
    assert "no live worker runs functions of module 'os'" in refused.stdout + refused.stderr


def test_guides_commands_work(cluster: Cluster) -> None:
    port = cluster.redis_url.rsplit(":", 1)[1].split("/")[0]
    cli = ["redis-cli", "-p", port, "-n", "5"]
    nodes = subprocess.run([*cli, "hgetall", "worker_nodes"], capture_output=True, text=True)
    assert "local-1" in nodes.stdout and "local-2" in nodes.stdout
    heartbeat = subprocess.run(
        [*cli, "hget", "worker:local-1", "last_heartbeat"], capture_output=True, text=True
    )
    assert abs(float(heartbeat.stdout) - time.time()) < 10
    queue = subprocess.run([*cli, "llen", "task_queue"], capture_output=True, text=True)
    assert queue.stdout.strip().isdigit()
    with cluster.client() as c:
        [tid] = c.submit([function_spec("hivemind.examples:noop")])
        c.wait([tid], 10)
    status = subprocess.run([*cli, "hget", f"task:{tid}", "status"], capture_output=True, text=True)
    assert status.stdout.strip() == "SUCCEEDED"
    count = subprocess.run(
        ["sqlite3", "node_pool/users.db", "SELECT count(*) FROM users;"],
        cwd=cluster.home,
        capture_output=True,
        text=True,
    )
    assert count.stdout.strip() == "1"
    for log in (
        "node_pool/logs/nodepool.log",
        "worker/logs/worker.log",
        "worker/logs/task_execution.log",
    ):
        assert (cluster.home / log).stat().st_size > 0, log


def test_timeout_kills_the_whole_process_group(cluster: Cluster, tmp_path: Path) -> None:
    marker = f"hivemind-runaway-{os.getpid()}"
    script = (
        "import subprocess, time\n"
        f"subprocess.Popen(['bash', '-c', 'exec -a {marker} sleep 300'])\n"
        "while True: time.sleep(1)\n"
    )
    bundle_id = upload(cluster, tmp_path, {"main.py": script})
    with cluster.client() as c:
        [tid] = c.submit([bundle_spec(bundle_id, timeout=2)])
        assert wait_until(
            lambda: any(
                marker in " ".join(p.info["cmdline"] or [])
                for p in psutil.process_iter(["cmdline"])
            ),
            20,
        )
        [task] = c.wait([tid], 30)
    assert task.status == "TIMEOUT", task.error_message
    assert wait_until(
        lambda: (
            not any(
                marker in " ".join(p.info["cmdline"] or [])
                for p in psutil.process_iter(["cmdline"])
            )
        ),
        5,
    )


def test_cancel_stops_a_running_task_within_two_seconds(cluster: Cluster) -> None:
    with cluster.client() as c:
        [tid] = c.submit([function_spec("hivemind.examples:sleep", [60])])
        assert wait_until(lambda: c.get(tid).status == "RUNNING", 20)
        started = time.monotonic()
        c.cancel(tid)
        [task] = c.wait([tid], 10)
        elapsed = time.monotonic() - started
    assert task.status == "CANCELLED"
    assert elapsed < 2.0


def test_hostile_bundles_are_refused_and_write_nothing_outside(
    cluster: Cluster, tmp_path: Path
) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("main.py", "print('hi')")
        zf.writestr("../../../../escaped.txt", "pwned")
    before = set(cluster.home.parent.rglob("escaped.txt"))
    proc = cluster.cli("submit", str(evil), check=False)
    assert proc.returncode != 0 and "escaped.txt" in proc.stderr
    # Uploaded behind the CLI's back, the worker refuses it too.
    with cluster.client() as c:
        bundle_id = c.upload_bundle(evil)
        [tid] = c.submit([bundle_spec(bundle_id)])
        [task] = c.wait([tid], 30)
    assert task.status == "FAILED" and "bundle refused" in task.error_message
    assert set(cluster.home.parent.rglob("escaped.txt")) == before == set()
    assert not Path("/escaped.txt").exists()


# -- disruptive tests get a cluster each -----------------------------------------------------
@pytest.fixture
def own_cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    with started_cluster(redis_server, tmp_path) as cluster:
        yield cluster


def test_worker_killed_costs_time_and_nothing_else(own_cluster: Cluster) -> None:
    c = own_cluster
    with c.client() as client:
        ids = client.submit(
            [function_spec("hivemind.examples:sleep", [1.5], retries=3) for _ in range(8)]
        )
        victim_pid = c.pid("worker-local-1")
        assert wait_until(
            lambda: any(
                t.worker == "local-1" and t.status == "RUNNING" for t in client.wait(ids, 0)
            ),
            20,
        )
        held = [t.id for t in client.wait(ids, 0) if t.worker == "local-1"]
        os.kill(victim_pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            tasks = client.wait(ids, 10)
            if all(t.status == "SUCCEEDED" for t in tasks):
                break
    assert [t.status for t in tasks] == ["SUCCEEDED"] * 8
    by_id = {t.id: t for t in tasks}
    assert held and all(by_id[t].attempt > 1 for t in held)
    for task_id in ids:
        assert c.terminal_events(task_id) == ["succeeded"]


def test_node_pool_killed_and_restarted_loses_nothing(own_cluster: Cluster) -> None:
    c = own_cluster
    with c.client() as client:
        ids = client.submit(
            [function_spec("hivemind.examples:sleep", [1.0], retries=3) for _ in range(12)]
        )
        assert wait_until(lambda: any(t.status == "RUNNING" for t in client.wait(ids, 0)), 20)
    os.kill(c.pid("nodepool"), signal.SIGKILL)
    time.sleep(1.0)
    c.up(workers=2)  # brings the node pool back; the workers reconnect by themselves
    with c.client() as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tasks = client.wait(ids, 10)
            if all(t.status == "SUCCEEDED" for t in tasks):
                break
    assert [t.status for t in tasks] == ["SUCCEEDED"] * 12, [
        (t.id, t.status, t.error_message) for t in tasks
    ]
    for task_id in ids:
        assert c.terminal_events(task_id) == ["succeeded"]
    conn = sqlite3.connect(c.home / "node_pool" / "users.db")
    assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
