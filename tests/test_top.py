"""`hivemind top`: one frame against a real stack (every worker, the queue by label, the
slowest task), the same over a real sshd, and a frame that still renders with Redis down."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivemind import keys
from hivemind.client import function_spec
from hivemind.top import Rates, Snapshot, sparkline
from tests.cluster import Cluster, make_cluster
from tests.helpers import free_port, wait_until
from tests.sshd import SSHD

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Cluster]:
    # Its own Redis (nothing answers on this port, so `up` starts one): the test stops it.
    cluster = make_cluster(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    cluster.up(workers=2)
    try:
        yield cluster
    finally:
        cluster.down()


def remote_hivemind(cluster: Cluster) -> str:
    """How the sshd's side runs hivemind: this interpreter, with the stack's settings."""
    env = {k: v for k, v in cluster.env.items() if k.startswith(("HIVEMIND_", "XDG_"))}
    env["PYTHONPATH"] = cluster.env["PYTHONPATH"]
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"env {assignments} {shlex.quote(sys.executable)} -m hivemind"


def test_one_frame_shows_every_worker_the_queue_and_the_slowest_task(
    stack: Cluster, sshd: SSHD
) -> None:
    r = stack.redis()
    assert wait_until(lambda: len(r.hkeys(keys.WORKER_NODES)) == 2, 30)
    nodes = sorted(r.hkeys(keys.WORKER_NODES))
    with stack.client() as client:
        [slow] = client.submit([function_spec("hivemind.examples:sleep", [60], name="slow")])
        waiting = client.submit(
            [function_spec("hivemind.examples:noop", labels=["gpu-x"]) for _ in range(3)]
        )
        assert wait_until(lambda: client.get(slow).status == "RUNNING", 30)
        frame = stack.cli("top", "--once").stdout
        for node in nodes:
            assert node in frame
        assert "4 queued" not in frame and "3 queued (gpu-x: 3), 1 running" in frame
        assert slow in frame and "slow" in frame
        snapshot = Snapshot.from_dict(json.loads(stack.cli("top", "--once", "--json").stdout))
        assert sorted(w.node_id for w in snapshot.workers) == nodes
        assert (snapshot.queued, snapshot.queued_by_label) == (3, {"gpu-x": 3})
        assert [t.task_id for t in snapshot.slowest] == [slow]

        ssh = [
            "--host", sshd.target, "--ssh-key", str(sshd.client_key),
            "--known-hosts", str(sshd.known_hosts), "--remote-hivemind", remote_hivemind(stack),
        ]  # fmt: skip
        remote = stack.cli("top", "--once", *ssh).stdout
        assert "3 queued (gpu-x: 3), 1 running" in remote
        for node in nodes:
            assert node in remote
        client.cancel(slow)
        for task_id in waiting:
            client.cancel(task_id)


def test_with_the_node_pool_and_then_redis_down_it_still_renders_and_says_so(
    stack: Cluster,
) -> None:
    r = stack.redis()
    assert wait_until(lambda: len(r.hkeys(keys.WORKER_NODES)) == 2, 30)
    nodepool = stack.pid("nodepool")
    os.kill(nodepool, signal.SIGKILL)
    assert wait_until(lambda: not _alive(nodepool), 10)
    without_nodepool = Snapshot.from_dict(json.loads(stack.cli("top", "--once", "--json").stdout))
    states = {s.name: s.state for s in without_nodepool.services}
    assert states["node pool"] == "stopped" and states["redis"] == "healthy"
    assert len(without_nodepool.workers) == 2  # Redis still has the cluster's state
    pid = stack.pid("redis")
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not _alive(pid), 10)
    began = time.monotonic()
    shown = stack.cli("top", "--once")
    assert time.monotonic() - began < 30
    assert "Redis is down" in shown.stdout
    assert "node pool" in shown.stdout  # the services are still listed
    snapshot = Snapshot.from_dict(json.loads(stack.cli("top", "--once", "--json").stdout))
    assert snapshot.redis_down and snapshot.workers == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _snapshot(at: float, succeeded: int, failed: int) -> Snapshot:
    return Snapshot(
        "h", at, [], finished_totals={"SUCCEEDED": succeeded, "FAILED": failed}, per_minute=[]
    )


def test_rates_come_from_successive_totals_and_forget_past_the_window() -> None:
    rates = Rates(window=60)
    for second in range(5):
        rates.add(_snapshot(1000.0 + second, 10 * second, second))
    assert rates.per_second() == [11.0, 11.0, 11.0, 11.0]
    per_second, failed = rates.last_minute(_snapshot(1004.0, 40, 4))
    assert per_second == 11.0 and failed == pytest.approx(4 / 44)
    rates.add(_snapshot(2000.0, 50, 4))  # much later: the old samples are dropped
    assert rates.per_second() == []
    # No history (a single --once): the newest full minute's count, per second.
    once = Snapshot("h", 0, [], per_minute=[{"SUCCEEDED": 120, "FAILED": 30}, {"SUCCEEDED": 1}])
    assert Rates().last_minute(once) == (2.5, 0.2)


def test_sparkline_scales_to_its_maximum() -> None:
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert sparkline([]) == ""


def test_the_live_view_refreshes_until_q(tmp_path: Path) -> None:
    import pty
    import select
    import subprocess

    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    env.update(
        HIVEMIND_HOME=str(tmp_path / "home"),
        HIVEMIND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing answers there
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hivemind", "top", "--interval", "0.5"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while seen.count(b"q quits") < 2 and time.monotonic() < deadline:  # two frames
            if select.select([primary], [], [], 1.0)[0]:
                seen += os.read(primary, 65536)
        assert seen.count(b"q quits") >= 2, seen[-500:]
        assert b"Redis is down" in seen
        os.write(primary, b"q")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
