"""The high-availability doctor checks (redis.replication, redis.sentinel, nodepool.peers):
their readers on fixture replies, then the checks against a real primary, two replicas and
three Sentinels (tests/ha_support.py) and real node pools."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doctor.checks.ha import (
    NodeAnswer,
    SentinelAnswer,
    peers_finding,
    pools_on_primary,
    replication_finding,
    sentinel_finding,
)
from doctor.context import Context
from doctor.engine import run_doctor
from doctor.model import CheckResult, Status
from doctor.probes.replication import (
    read_replication,
    record_address,
    record_flags,
    reply_fields,
    reply_records,
)
from hivemind.addresses import SentinelTarget
from hivemind.config import Settings
from hivemind.redis_server import start_redis
from hivemind.supervisor import stop_pid
from tests.ha_support import RedisSet, start_redis_set
from tests.helpers import free_port, wait_until
from tests.nodepool_support import node_pool_serving

HA_CHECKS = ("redis.replication", "redis.sentinel", "nodepool.peers")

# -- fixture replies ----------------------------------------------------------------------------

INFO_PRIMARY = """\
# Replication
role:master
connected_slaves:2
slave0:ip=10.0.0.2,port=6379,state=online,offset=1000,lag=0
slave1:ip=10.0.0.3,port=6379,state=online,offset=400,lag=15
master_failover_state:no-failover
master_replid:3c1e0e3d8c7f5b7d0f1b2a8e9d6c5b4a3f2e1d0c
master_repl_offset:1000
"""
INFO_REPLICA_DOWN = """\
# Replication
role:slave
master_host:10.0.0.1
master_port:6379
master_link_status:down
master_last_io_seconds_ago:-1
master_sync_in_progress:0
slave_repl_offset:900
master_link_down_since_seconds:42
connected_slaves:0
"""
#: SENTINEL MASTER as RESP2 sends it (a flat list); RESP3 sends the same as a map.
SENTINEL_MASTER = [
    "name", "hivemind", "ip", "10.0.0.1", "port", "6379", "flags", "master",
    "num-slaves", "2", "num-other-sentinels", "2", "quorum", "2",
]  # fmt: skip
SENTINEL_REPLICAS = [
    ["name", "10.0.0.2:6379", "ip", "10.0.0.2", "port", "6379", "flags", "slave"],
    ["name", "10.0.0.3:6379", "ip", "10.0.0.3", "port", "6379", "flags", "s_down,slave"],
]
SENTINEL_PEERS = [
    {"name": "a1", "ip": "10.0.1.2", "port": "26379", "flags": "sentinel"},
    {"name": "a2", "ip": "10.0.1.3", "port": "26379", "flags": "s_down,sentinel"},
]
PRIMARY, R1, R2 = ("10.0.0.1", 6379), ("10.0.0.2", 6379), ("10.0.0.3", 6379)
S1, S2, S3 = ("10.0.1.1", 26379), ("10.0.1.2", 26379), ("10.0.1.3", 26379)


def test_info_replication_reads_text_and_redis_py_dicts() -> None:
    primary = read_replication(INFO_PRIMARY)
    assert primary.is_primary and primary.offset == 1000
    assert [(r.address, r.state, r.offset, r.lag) for r in primary.replicas] == [
        (R1, "online", 1000, 0),
        (R2, "online", 400, 15),
    ]
    parsed = {  # what redis-py's INFO callback makes of the same text
        "role": "master",
        "master_repl_offset": 1000,
        "slave0": {"ip": "10.0.0.2", "port": 6379, "state": "online", "offset": 1000, "lag": 0},
    }
    assert read_replication(parsed).replicas[0].address == R1
    replica = read_replication(INFO_REPLICA_DOWN)
    assert not replica.is_primary and replica.master == PRIMARY
    assert not replica.link_up and replica.link_down_seconds == 42 and replica.offset == 900


def test_sentinel_replies_read_flat_lists_and_maps() -> None:
    master = reply_fields(SENTINEL_MASTER)
    mapped = dict(zip(SENTINEL_MASTER[::2], SENTINEL_MASTER[1::2], strict=True))
    assert reply_fields(mapped) == master
    assert record_address(master) == PRIMARY and record_flags(master) == {"master"}
    replicas = reply_records(SENTINEL_REPLICAS)
    assert [record_address(r) for r in replicas] == [R1, R2]
    assert record_flags(replicas[1]) == {"s_down", "slave"}
    assert [record_address(p) for p in reply_records(SENTINEL_PEERS)] == [S2, S3]


def _node(address: tuple[str, int], info: str) -> NodeAnswer:
    return NodeAnswer(address, replication=read_replication(info))


def _replica_of(primary: tuple[str, int], offset: int = 1000) -> str:
    return (
        f"role:slave\nmaster_host:{primary[0]}\nmaster_port:{primary[1]}\n"
        f"master_link_status:up\nslave_repl_offset:{offset}\n"
    )


def test_replication_verdicts_name_the_replica_or_the_two_primaries() -> None:
    healthy_info = INFO_PRIMARY.replace("offset=400,lag=15", "offset=990,lag=1")
    nodes = {PRIMARY: _node(PRIMARY, healthy_info), R1: _node(R1, _replica_of(PRIMARY))}
    nodes[R2] = _node(R2, _replica_of(PRIMARY, 990))
    known = {R1: {"slave"}, R2: {"slave"}}
    ok = replication_finding(PRIMARY, nodes, known)
    assert ok.status is Status.OK, ok
    assert "2 replica(s) online (lag ≤ 1 s, ≤ 10 bytes behind)" in ok.summary

    behind = {PRIMARY: _node(PRIMARY, INFO_PRIMARY), R2: _node(R2, _replica_of(PRIMARY, 400))}
    lagging = replication_finding(PRIMARY, {**nodes, **behind}, known)
    assert lagging.status is Status.WARN
    assert "replica 10.0.0.3:6379: lag 15 s (> 10 s), 600 bytes behind" in lagging.summary

    unlinked = {**nodes, R2: _node(R2, INFO_REPLICA_DOWN)}
    down = replication_finding(PRIMARY, unlinked, known)
    assert "replica 10.0.0.3:6379: master_link_status:down for 42 s" in down.summary

    # The primary lists one replica; Sentinel knows two, the second down.
    one = healthy_info.replace("slave1:ip=10.0.0.3,port=6379,state=online,offset=990,lag=1\n", "")
    missing = {PRIMARY: _node(PRIMARY, one), R1: nodes[R1], R2: NodeAnswer(R2, "refused")}
    lost = replication_finding(PRIMARY, missing, {R1: {"slave"}, R2: {"slave", "s_down"}})
    assert lost.status is Status.WARN
    assert lost.summary == (
        "replica 10.0.0.3:6379: does not answer (refused), Sentinel knows it but the primary "
        "has it not connected (Sentinel: s_down)"
    )

    split = replication_finding(PRIMARY, {**missing, R2: _node(R2, "role:master\n")}, known)
    assert split.status is Status.FAIL
    assert split.summary.startswith(
        "split brain: 2 data nodes report role:master: 10.0.0.1:6379 (the primary Sentinel "
        "names) and 10.0.0.3:6379"
    )
    assert split.evidence["masters"] == ["10.0.0.1:6379", "10.0.0.3:6379"]

    gone = replication_finding(PRIMARY, {PRIMARY: NodeAnswer(PRIMARY, "timed out")}, known)
    assert gone.status is Status.FAIL and "10.0.0.1:6379 does not answer" in gone.summary


def _watching(address: tuple[str, int], primary: tuple[str, int] = PRIMARY) -> SentinelAnswer:
    master = {**reply_fields(SENTINEL_MASTER), "ip": primary[0], "port": str(primary[1])}
    peers = [{"ip": a[0], "port": str(a[1]), "flags": "sentinel"} for a in (S1, S2, S3)]
    return SentinelAnswer(
        address,
        watches=True,
        master=master,
        peers=tuple(p for p in peers if record_address(p) != address),
        ckquorum="OK 3 usable Sentinels. Quorum and failover authorization can be reached",
        quorum_ok=True,
    )


def test_sentinel_verdicts_quorum_agreement_and_a_wrong_name() -> None:
    target = SentinelTarget((S1, S2, S3), "hivemind")
    all_up = [_watching(S1), _watching(S2), _watching(S3)]
    ok = sentinel_finding(target, all_up)
    assert ok.status is Status.OK, ok
    assert ok.summary.startswith("3/3 Sentinels answer, quorum 2 reachable")

    one_dead = [_watching(S1), _watching(S2), SentinelAnswer(S3, error="Connection refused")]
    degraded = sentinel_finding(target, one_dead)
    assert degraded.status is Status.WARN
    assert "2/3 Sentinels answer" in degraded.summary
    assert "Sentinel 10.0.1.3:26379 does not answer (Connection refused)" in degraded.summary

    lost = [_watching(S1), SentinelAnswer(S2, error="x"), SentinelAnswer(S3, error="y")]
    assert sentinel_finding(target, lost).summary.startswith("Sentinel quorum lost: 1/3")

    split = sentinel_finding(target, [_watching(S1), _watching(S2), _watching(S3, R1)])
    assert split.status is Status.FAIL
    assert split.summary == (
        "the Sentinels disagree on the primary: 10.0.1.1:26379 says 10.0.0.1:6379; "
        "10.0.1.2:26379 says 10.0.0.1:6379; 10.0.1.3:26379 says 10.0.0.2:6379"
    )

    wrong = sentinel_finding(
        SentinelTarget((S1, S2), "hivemnd"),
        [SentinelAnswer(S1, watched=("hivemind",)), SentinelAnswer(S2, error="refused")],
    )
    assert wrong.status is Status.FAIL
    assert wrong.summary == "no Sentinel watches a master named 'hivemnd' (they watch: hivemind)"


def test_peer_verdicts() -> None:
    assert peers_finding({"a:1": "", "b:1": ""}).status is Status.OK
    warn = peers_finding({"a:1": "", "b:1": "nothing accepts connections"})
    assert warn.status is Status.WARN and "b:1: nothing accepts connections" in warn.summary
    assert peers_finding({"a:1": "x", "b:1": "y"}).status is Status.FAIL


def test_node_pools_are_found_on_the_primary_by_their_connection_names() -> None:
    names = ["", "hivemind-nodepool:vm:50051", "other-app", "hivemind-nodepool:gpu-2:50051"]
    # Distinct ports: the port alone says which node pool it is.
    assert pools_on_primary([("10.0.0.1", 50051), ("10.0.0.2", 50053)], names, "vm") == {
        "10.0.0.1:50051": True,
        "10.0.0.2:50053": False,
    }
    # One port on every host: the host names tell them apart (loopback is this host).
    same = [("127.0.0.1", 50051), ("gpu-2", 50051), ("gpu-3", 50051)]
    assert pools_on_primary(same, names, "vm") == {
        "127.0.0.1:50051": True,
        "gpu-2:50051": True,
        "gpu-3:50051": False,
    }
    elsewhere = peers_finding({"a:1": "", "b:2": ""}, {"a:1": True, "b:2": False}, "r:6379")
    assert elsewhere.status is Status.WARN
    assert elsewhere.summary.startswith("b:2 answer(s) but hold no connection to the Redis")


# -- against real processes ---------------------------------------------------------------------


def doctor(settings: Settings, *ids: str) -> dict[str, CheckResult]:
    report = run_doctor(settings, only=ids, context=Context(settings, timeout=5.0))
    return {result.id: result for result in report.results}


def at(port: int) -> str:
    return f"127.0.0.1:{port}"


@pytest.fixture
def redis_set(tmp_path: Path) -> Iterator[RedisSet]:
    with start_redis_set(tmp_path / "redis-set") as started:
        yield started


def through_sentinel(redis_set: RedisSet, tmp_path: Path, **changes: str) -> Settings:
    return Settings(home=tmp_path / "home", redis_url=redis_set.sentinel_url(), **changes)


@pytest.mark.slow
def test_without_ha_the_checks_are_not_applicable(settings: Settings) -> None:
    results = doctor(settings, *HA_CHECKS)
    assert {r.id: r.status for r in results.values()} == dict.fromkeys(HA_CHECKS, Status.SKIP)
    assert "with no replica" in results["redis.replication"].finding.summary
    assert "no Sentinel configured" in results["redis.sentinel"].finding.summary
    assert "one node pool address" in results["nodepool.peers"].finding.summary


@pytest.mark.slow
def test_a_healthy_set_is_clean_and_a_wrong_master_name_fails_at_once(
    redis_set: RedisSet, tmp_path: Path
) -> None:
    results = doctor(through_sentinel(redis_set, tmp_path), "redis")
    replication, sentinel = results["redis.replication"], results["redis.sentinel"]
    assert replication.status is Status.OK, replication.finding
    assert f"primary {at(redis_set.primary_port)} with 2 replica(s)" in replication.finding.summary
    assert sentinel.status is Status.OK, sentinel.finding
    assert sentinel.finding.summary.startswith("3/3 Sentinels answer, quorum 2 reachable")
    # The other way to say it: REDIS_SENTINELS with REDIS_MASTER_NAME.
    pair = Settings(
        home=tmp_path / "home",
        redis_url="redis://unused:6380/0",
        redis_sentinels=redis_set.sentinels,
        redis_master_name="hivemind",
    )
    assert {r.status for r in doctor(pair, "redis.replication", "redis.sentinel").values()} == {
        Status.OK
    }

    wrong = Settings(home=tmp_path / "home", redis_url=redis_set.sentinel_url("hivemnd"))
    began = time.monotonic()
    results = doctor(wrong, "redis.replication", "redis.sentinel")
    assert time.monotonic() - began < 3
    sentinel = results["redis.sentinel"].finding
    assert sentinel.status is Status.FAIL
    assert sentinel.summary == "no Sentinel watches a master named 'hivemnd' (they watch: hivemind)"
    assert results["redis.replication"].status is Status.SKIP


@pytest.mark.slow
def test_a_hung_then_a_killed_replica_is_named(redis_set: RedisSet, tmp_path: Path) -> None:
    settings = through_sentinel(redis_set, tmp_path)
    hung, killed = redis_set.replica_ports
    redis_set.pause(hung)
    began = time.monotonic()
    finding = doctor(settings, "redis.replication")["redis.replication"].finding
    assert time.monotonic() - began < 3, "a hung replica must cost one short timeout"
    assert finding.status is Status.WARN, finding
    assert f"replica {at(hung)}: does not answer (no answer in time" in finding.summary
    assert at(killed) not in finding.summary
    redis_set.resume(hung)

    redis_set.kill(killed)
    with redis_set.client(redis_set.primary_port) as primary:
        assert wait_until(lambda: primary.info("replication")["connected_slaves"] == 1, 5)
    finding = doctor(settings, "redis.replication")["redis.replication"].finding
    assert finding.status is Status.WARN, finding
    assert f"replica {at(killed)}: does not answer" in finding.summary
    assert "the primary has it not connected" in finding.summary
    assert at(hung) not in finding.summary
    # The Sentinels are not the problem.
    assert doctor(settings, "redis.sentinel")["redis.sentinel"].status is Status.OK


@pytest.mark.slow
def test_one_lost_sentinel_keeps_quorum_two_lose_it(tmp_path: Path) -> None:
    with start_redis_set(tmp_path / "redis-set", password="s3cret-pw") as redis_set:
        settings = through_sentinel(redis_set, tmp_path)
        first, second, _third = redis_set.sentinel_ports
        redis_set.kill(first)
        results = doctor(settings, "redis")
        sentinel = results["redis.sentinel"].finding
        assert sentinel.status is Status.WARN, sentinel  # degraded, not failing
        assert sentinel.summary.startswith("2/3 Sentinels answer, quorum 2 reachable")
        assert f"Sentinel {at(first)} does not answer" in sentinel.summary
        assert results["redis.replication"].status is Status.OK

        redis_set.kill(second)
        results = doctor(settings, "redis")
        sentinel = results["redis.sentinel"].finding
        assert sentinel.status is Status.FAIL
        assert sentinel.summary.startswith("Sentinel quorum lost: 1/3 Sentinels")
        assert results["redis.replication"].status is Status.OK  # one Sentinel still tells


@pytest.mark.slow
def test_a_replica_turned_primary_is_a_split_brain(redis_set: RedisSet, tmp_path: Path) -> None:
    settings = through_sentinel(redis_set, tmp_path)
    rogue = redis_set.replica_ports[0]
    with redis_set.client(rogue) as client:
        client.execute_command("REPLICAOF", "NO", "ONE")
    finding = doctor(settings, "redis.replication")["redis.replication"].finding
    assert finding.status is Status.FAIL, finding
    assert finding.summary.startswith(
        f"split brain: 2 data nodes report role:master: {at(redis_set.primary_port)} (the "
        f"primary Sentinel names) and {at(rogue)}"
    )


@pytest.mark.slow
def test_a_former_primary_back_after_a_failover_is_reported_until_demoted(
    redis_set: RedisSet, tmp_path: Path
) -> None:
    settings = through_sentinel(redis_set, tmp_path)
    old = redis_set.primary_port
    redis_set.kill(old)

    def failed_over() -> bool:  # as every Sentinel says: the doctor may ask any of them
        named = redis_set.named_primaries()
        agreed = len(named) == len(redis_set.sentinel_ports) and len(set(named)) == 1
        return agreed and named[0] != old

    assert wait_until(failed_over, 20, interval=0.2)
    new = redis_set.primary()
    redis_set.restart(old)  # back with its own config: a primary again, with no data
    finding = doctor(settings, "redis.replication")["redis.replication"].finding
    assert finding.status is Status.FAIL, finding
    assert f"role:master: {at(new)} (the primary Sentinel names) and {at(old)}" in finding.summary

    def clean() -> bool:
        return doctor(settings, "redis.replication")["redis.replication"].status is Status.OK

    assert wait_until(clean, 30, interval=0.5), "Sentinel never demoted the former primary"


@pytest.mark.slow
def test_a_dead_node_pool_address_is_a_warning_naming_it(settings: Settings) -> None:
    first = settings.replace(grpc_host="127.0.0.1")
    dead = at(free_port())
    with node_pool_serving(first):
        live = first.client_address
        both = first.replace(nodepool_address=f"{live},{dead}")
        finding = doctor(both, "nodepool.peers")["nodepool.peers"].finding
        assert finding.status is Status.WARN, finding
        assert finding.summary.startswith(f"1 of 2 node pools do not answer: {dead}: nothing")
        assert finding.evidence["nodepools"][live] == "SERVING"
    none = first.replace(nodepool_address=f"{live},{dead}")
    assert doctor(none, "nodepool.peers")["nodepool.peers"].status is Status.FAIL


@pytest.mark.slow
def test_a_node_pool_that_uses_another_redis_is_named(settings: Settings, tmp_path: Path) -> None:
    """Both node pools answer, but one writes to another Redis than the primary the doctor
    reaches: what a node pool stuck on a demoted primary looks like."""
    root = tmp_path / "other-redis"
    other = start_redis(
        f"redis://127.0.0.1:{free_port()}/0",
        data_dir=root / "data",
        pidfile=root / "redis.pid",
        logfile=root / "redis.log",
    )
    try:
        first = settings.replace(grpc_host="127.0.0.1")
        stray = first.replace(
            redis_url=other.url, grpc_port=free_port(), nodepool_metrics_port=free_port()
        )
        with node_pool_serving(first), node_pool_serving(stray):
            both = first.replace(nodepool_address=f"{first.client_address},{stray.client_address}")
            finding = doctor(both, "nodepool.peers")["nodepool.peers"].finding
    finally:
        stop_pid(other.pidfile)
    assert finding.status is Status.WARN, finding
    assert finding.summary.startswith(f"{stray.client_address} answer(s) but hold no connection")
    assert first.client_address not in finding.summary
