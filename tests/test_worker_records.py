"""Worker records: both records of a worker change together, whoever writes them."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hivemind import keys
from hivemind.taskstore import TaskStore
from hivemind.worker_records import (
    WorkerCaps,
    WorkerRecords,
    record_fields,
    unschedulable_reason,
    worker_summary,
)
from tests.cluster import started_cluster
from tests.helpers import RedisServer, wait_until

CAPS = WorkerCaps(cpu=4, memory_mb=4096, gpu=0, labels=("linux",))


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


def statuses(r: redis.Redis, node_id: str) -> tuple[str | None, str | None]:
    """(worker:<id> status, worker_nodes summary status), read in one transaction."""
    pipe = r.pipeline(transaction=True)
    pipe.hget(keys.worker_key(node_id), "status")
    pipe.hget(keys.WORKER_NODES, node_id)
    status, text = pipe.execute()
    return status, (json.loads(text)["status"] if text else None)


def register(r: redis.Redis, node_id: str, caps: WorkerCaps = CAPS) -> None:
    TaskStore(r).heartbeat(
        node_id, record_fields(caps, hostname="h"), worker_summary(caps, "online", 0), [], 30.0
    )


@pytest.mark.slow
def test_sigkilled_worker_goes_lost_in_both_records_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path, workers=1) as cluster:
        r = cluster.redis()
        assert wait_until(lambda: bool(r.hkeys(keys.WORKER_NODES)), 30)
        (node_id,) = r.hkeys(keys.WORKER_NODES)
        assert wait_until(lambda: statuses(r, node_id) == ("online", "online"), 30)
        pid = cluster.pid(f"worker-{node_id}")
        # Right after a heartbeat, so the kill lands between two of them.
        before = r.hget(keys.worker_key(node_id), "last_heartbeat")
        assert wait_until(lambda: r.hget(keys.worker_key(node_id), "last_heartbeat") != before, 10)
        os.kill(pid, signal.SIGKILL)
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            observed = statuses(r, node_id)
            seen.append(observed)
            if observed[0] != "online":
                break
        assert seen[-1] == ("lost", "lost"), seen[-5:]
        assert all(a == b for a, b in seen), [s for s in seen if s[0] != s[1]][:5]


def test_status_write_updates_both_records_and_keeps_the_json(client: redis.Redis) -> None:
    register(client, "w1")
    before = json.loads(client.hget(keys.WORKER_NODES, "w1"))
    assert WorkerRecords(client).set_status("w1", "lost")
    assert statuses(client, "w1") == ("lost", "lost")
    after = json.loads(client.hget(keys.WORKER_NODES, "w1"))
    assert after == {**before, "status": "lost"}  # same fields, labels still a list


def test_offline_keeps_an_empty_label_list_a_list(client: redis.Redis) -> None:
    register(client, "w0", WorkerCaps(cpu=1, memory_mb=512, gpu=0, labels=()))
    assert WorkerRecords(client).go_offline("w0")
    summary = json.loads(client.hget(keys.WORKER_NODES, "w0"))
    assert summary["status"] == "offline" and summary["labels"] == [] and summary["running"] == 0
    assert client.hget(keys.worker_key("w0"), "status") == "offline"


def test_write_for_a_forgotten_worker_brings_back_no_half_record(client: redis.Redis) -> None:
    records = WorkerRecords(client)
    register(client, "w2")
    assert records.set_status("w2", "offline")
    assert records.forget("w2", time.time() + 1)
    for write in (
        lambda: records.set_status("w2", "lost"),
        lambda: records.mark_lost("w2", time.time() + 1),
        lambda: records.go_offline("w2"),
    ):
        assert not write()
    assert not client.exists(keys.worker_key("w2"))
    assert client.hget(keys.WORKER_NODES, "w2") is None


def test_mark_lost_spares_a_worker_that_beat_meanwhile(client: redis.Redis) -> None:
    register(client, "w3")
    assert not WorkerRecords(client).mark_lost("w3", time.time() - 60)
    assert statuses(client, "w3") == ("online", "online")
    assert WorkerRecords(client).mark_lost("w3", time.time() + 1)
    assert statuses(client, "w3") == ("lost", "lost")


def test_unschedulable_reason_names_what_is_missing() -> None:
    workers = {"cpu-box": CAPS, "small": WorkerCaps(1, 512, 0, ())}
    reason = unschedulable_reason({"gpu": 1}, workers)
    assert reason == "no live worker meets the requirements; closest is cpu-box: gpu 1 > 0"
    assert "labels cuda not advertised" in unschedulable_reason({"labels": ["cuda"]}, workers)
    assert unschedulable_reason({"gpu": 1}, {}) == "no live worker is registered"
    assert unschedulable_reason({"cpu": 2, "labels": ["linux"]}, workers) == ""
