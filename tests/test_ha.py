"""`hivemind up --ha` end to end: three Redis, three Sentinels, two node pools and two
workers, all real processes on free loopback ports, over TLS.

The tests run in file order on one stack (each leaves it whole again): bad configuration,
the Redis primary killed during 2,000 tasks, split brain, a node pool killed with two
tasks running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from hivemind import ha_stack, redis_client
from hivemind.client import Client, function_spec
from hivemind.config import Settings, load_settings
from hivemind.errors import HivemindError
from hivemind.paths import layout
from hivemind.supervisor import read_pidfile, start_service
from tests.cluster import Cluster, make_cluster
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.slow

BATCH = 100


def _ports(count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        # The node pools' enrolment ports are theirs + 1: keep neighbours free too.
        if port not in taken and port + 1 not in taken:
            ports.append(port)
            taken.update((port, port + 1))
    return ports


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    taken: set[int] = set()
    data, sentinels, pools = _ports(3, taken), _ports(3, taken), _ports(2, taken)
    hosts = ",".join(f"127.0.0.1:{port}" for port in sentinels)
    cluster = make_cluster(
        tmp_path_factory.mktemp("ha"),
        f"redis+sentinel://{hosts}/hivemind/0",
        ha_redis_ports=",".join(f"127.0.0.1:{port}" for port in data),
        nodepool_address=",".join(f"127.0.0.1:{port}" for port in pools),
        tls="on",
        nodepool_metrics_port="0",
        worker_metrics_port="0",
    )
    cluster.address = cluster.env["HIVEMIND_NODEPOOL_ADDRESS"]
    cluster.cli("up", "--ha", "--workers", "2", timeout=180)
    try:
        yield cluster
    finally:
        cluster.down()


def _settings(cluster: Cluster, **changes: str) -> Settings:
    env = {**cluster.env, **{f"HIVEMIND_{k.upper()}": v for k, v in changes.items()}}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _primary(cluster: Cluster) -> redis.Redis:
    return redis_client.connect(_settings(cluster), decode_responses=True)


def _primary_port(cluster: Cluster) -> int:
    target = redis_client.sentinel_target(_settings(cluster))
    assert target is not None
    return redis_client.locate_primary(target)[1]


def _doctor(cluster: Cluster, *checks: str, **env: str) -> dict[str, dict[str, object]]:
    """The doctor's findings by check id (``checks``: only those), run as a user would,
    with ``env`` (setting -> value) over the cluster's own settings."""
    args = [arg for check in checks for arg in ("--only", check)]
    proc = subprocess.run(
        [sys.executable, "-m", "hivemind", "doctor", "--json", *args],
        env={**cluster.env, **{f"HIVEMIND_{k.upper()}": v for k, v in env.items()}},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return {check["id"]: check for check in json.loads(proc.stdout)["checks"]}


def _finish_events(client: redis.Redis, task_id: str) -> list[str]:
    history = [json.loads(e) for e in client.lrange(f"task:{task_id}:history", 0, -1)]
    return [e["event"] for e in history if e["event"] in ("succeeded", "failed")]


# -- bad configuration: a clear error, not a hang ---------------------------------------------
def test_no_sentinel_reachable_is_one_clear_line(ha: Cluster) -> None:
    dead = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hivemind", "nodepool"],
        env={**ha.env, "HIVEMIND_REDIS_URL": f"redis+sentinel://{dead}/hivemind/0",
             "HIVEMIND_NODEPOOL_ADDRESS": "", "HIVEMIND_GRPC_PORT": str(free_port())},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "no Sentinel answers" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - began < 20


def test_a_wrong_master_name_is_named(ha: Cluster) -> None:
    url = ha.redis_url.replace("/hivemind/0", "/nosuchmaster/0")
    began = time.monotonic()
    with pytest.raises(HivemindError, match="watch no master named 'nosuchmaster'"):
        redis_client.check_reachable(_settings(ha, redis_url=url))
    assert time.monotonic() - began < 10
    found = _doctor(ha, "redis.sentinel", redis_url=url)
    assert found["redis.sentinel"]["status"] == "fail"
    assert "nosuchmaster" in str(found["redis.sentinel"]["summary"])


def test_a_dead_address_in_the_node_pool_list_is_skipped_and_reported(ha: Cluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    address = f"{dead},{ha.address}"
    with Client(address, _token(ha), security=ha.security()) as client:
        [done] = client.submit_and_wait([function_spec("hivemind.examples:add", [1, 2])], 30)
    assert done.status == "SUCCEEDED"
    peers = _doctor(ha, "nodepool.peers", nodepool_address=address)["nodepool.peers"]
    assert peers["status"] == "warn" and dead in str(peers["summary"])


def _token(cluster: Cluster) -> str:
    from hivemind.credentials import load_token

    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = cluster.env["XDG_CONFIG_HOME"]
    try:
        return load_token(cluster.address) or ""
    finally:
        if old is None:
            del os.environ["XDG_CONFIG_HOME"]
        else:
            os.environ["XDG_CONFIG_HOME"] = old


# -- the Redis primary dies -------------------------------------------------------------------
def test_the_primary_killed_during_2000_tasks_loses_and_repeats_nothing(ha: Cluster) -> None:
    old_port = _primary_port(ha)
    acknowledged: list[str] = []
    errors: list[str] = []

    def submit_all() -> None:
        with ha.client() as client:
            for _ in range(2000 // BATCH):
                specs = [function_spec("hivemind.examples:add", [1, 2])] * BATCH
                try:
                    acknowledged.extend(client.submit(specs))
                except HivemindError as exc:  # not acknowledged: not counted
                    errors.append(str(exc))

    submitter = threading.Thread(target=submit_all)
    submitter.start()
    assert wait_until(lambda: len(acknowledged) >= 500, 60)
    record = read_pidfile(ha.home / "run" / f"redis-{old_port}.pid")
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    killed_at = time.time()
    assert wait_until(lambda: _primary_port(ha) != old_port, 30, interval=0.1)
    promoted_at = time.time()
    submitter.join(120)
    assert not submitter.is_alive()

    tasks = ha.wait_all(acknowledged, timeout=180)
    assert len(acknowledged) == 2000, errors  # every batch was acknowledged in the end
    assert [t.id for t in tasks if t.status != "SUCCEEDED"] == []
    client = _primary(ha)
    twice = [i for i in acknowledged if _finish_events(client, i) != ["succeeded"]]
    assert twice == []
    # Finished after Sentinel named the new primary: finished on it.
    after = sorted(t.finished_at for t in tasks if t.finished_at > promoted_at)
    assert after, "no task finished on the new primary"
    print(f"kill -9 of the primary: new primary named after {promoted_at - killed_at:.2f} s, "
          f"first task finished on it after {after[0] - killed_at:.2f} s; "
          f"submit errors: {len(errors)}")  # fmt: skip

    # The old primary comes back (`up --ha` restarts it) as a replica, and all is clean.
    ha.cli("up", "--ha", "--workers", "2", timeout=180)
    old = redis.Redis(port=old_port, password=_password(ha), decode_responses=True)
    assert wait_until(lambda: old.info("replication")["role"] == "slave", 30)
    assert wait_until(lambda: _clean(ha), 30), _unclean(ha)


def _password(cluster: Cluster) -> str:
    return (cluster.home / "redis" / "redis.password").read_text().strip()


HA_CHECKS = ("redis.replication", "redis.sentinel", "nodepool.peers", "ports.redis",
             "ports.nodepool", "process.services", "workers.count", "tasks.stuck")  # fmt: skip


def _unclean(cluster: Cluster) -> dict[str, str]:
    """The findings that keep the stack from being doctor-clean: any fail or error, and the
    HA and service checks that are not ok (others may warn about this shared machine)."""
    found = _doctor(cluster)
    return {
        check: f"{result['status']}: {result['summary']}"
        for check, result in found.items()
        if result["status"] in ("fail", "error")
        or (check in HA_CHECKS and result["status"] != "ok")
    }


def _clean(cluster: Cluster) -> bool:
    return not _unclean(cluster)


# -- split brain --------------------------------------------------------------------------------
def test_an_old_primary_that_comes_back_is_reported_then_demoted(ha: Cluster) -> None:
    settings = _settings(ha)
    planned = ha_stack.ha_settings(settings)[1]
    old_port = _primary_port(ha)
    record = read_pidfile(ha.home / "run" / f"redis-{old_port}.pid")
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    assert wait_until(lambda: _primary_port(ha) != old_port, 30)
    # It comes back believing it is still the primary (as Sentinel's last rewrite of its
    # config left it: a primary's config names no primary of its own). Sentinel waits 8 s
    # (4 of its publish periods) before it demotes a primary it did not expect back.
    conf = ha.home / "ha" / f"redis-{old_port}" / "redis.conf"
    lines = conf.read_text().splitlines()
    conf.write_text("\n".join(x for x in lines if not x.startswith("replicaof")) + "\n")
    spec = next(
        s for s in ha_stack.redis_specs(layout(ha.home), planned, _password(ha))
        if s.name == f"redis {old_port}"
    )  # fmt: skip
    start_service(spec, 30)
    stray = redis.Redis(port=old_port, password=_password(ha), decode_responses=True)
    assert stray.info("replication")["role"] == "master"
    found = _doctor(ha, "redis.replication")["redis.replication"]
    assert stray.info("replication")["role"] == "master"  # still, after the doctor ran
    assert found["status"] == "fail" and str(old_port) in json.dumps(found), found
    # Meanwhile it refuses writes: it has no replica (min-replicas-to-write 1).
    with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
        stray.set("split-brain-probe", "1")
    assert wait_until(lambda: stray.info("replication")["role"] == "slave", 30)
    assert wait_until(lambda: _clean(ha), 30), _unclean(ha)


# -- a node pool dies -----------------------------------------------------------------------------
def test_a_node_pool_killed_with_two_running_hands_over_to_the_other(ha: Cluster) -> None:
    first = ha.address.split(",")[0]
    with ha.client() as client:
        ids = client.submit([function_spec("hivemind.examples:sleep", [3])] * 2)
        assert wait_until(lambda: all(client.get(i).status == "RUNNING" for i in ids), 30)
    os.kill(ha.pid("nodepool"), signal.SIGKILL)
    # New calls go to the other node pool; the workers finish and report there.
    tasks = ha.wait_all(ids, timeout=60)
    assert [t.status for t in tasks] == ["SUCCEEDED", "SUCCEEDED"]
    client_redis = _primary(ha)
    for task_id in ids:
        assert _finish_events(client_redis, task_id) == ["succeeded"]
        assert client_redis.hget(f"task:{task_id}", "attempt") == "1"  # never run twice
    with ha.client() as client:
        [more] = client.submit_and_wait([function_spec("hivemind.examples:add", [2, 3])], 30)
    assert more.status == "SUCCEEDED"

    # Restarted, it rejoins: it serves on its own address again.
    ha.cli("up", "--ha", "--workers", "2", timeout=180)
    with Client(first, _token(ha), security=ha.security()) as alone:
        [again] = alone.submit_and_wait([function_spec("hivemind.examples:add", [3, 4])], 30)
    assert again.status == "SUCCEEDED"
    assert wait_until(lambda: _clean(ha), 30), _unclean(ha)


# -- recover ----------------------------------------------------------------------------------
def test_recover_restarts_only_what_is_down_and_touches_no_data(ha: Cluster) -> None:
    client = _primary(ha)
    tasks_before = client.zcard("tasks:all")
    primary = _primary_port(ha)
    planned = ha_stack.ha_settings(_settings(ha))[1]
    replica = next(port for port in planned.data_ports if port != primary)
    master_pid = ha.pid("master")
    os.kill(ha.pid("nodepool-2"), signal.SIGKILL)
    os.kill(ha.pid(f"redis-{replica}"), signal.SIGKILL)

    proc = ha.cli("recover", "--json", check=False, timeout=300)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout
    assert [c["playbook"] for c in report["chosen"]] == ["ha-recover"]
    assert report["healthy"]
    # What ran is running again; what ran on was left alone; Redis kept every task.
    assert ha.pid("master") == master_pid
    assert _primary_port(ha) == primary
    assert client.zcard("tasks:all") == tasks_before
    assert wait_until(lambda: _clean(ha), 30), _unclean(ha)
