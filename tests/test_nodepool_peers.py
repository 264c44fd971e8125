"""Several node pools on one Redis: housekeeping runs in one of them at a time, so a lost
worker's lease expires once and its task is requeued once; when that node pool stops, the
other takes over."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hivemind import keys
from hivemind.client import function_spec
from hivemind.config import Settings
from hivemind.proto import hivemind_pb2 as pb
from tests.helpers import free_port, wait_until
from tests.nodepool_support import Pool, node_pool_serving

pytestmark = pytest.mark.slow


def _events(pool: Pool, task_id: str) -> list[tuple[str, int]]:
    history = pool.server.state.redis.lrange(keys.task_history_key(task_id), 0, -1)
    return [(e["event"], e["attempt"]) for e in map(json.loads, history)]


def _expiries(*pools: Pool) -> list[float]:
    return [
        sum(
            s.value
            for metric in p.server.state.metrics.lease_expiries.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        )
        for p in pools
    ]


def test_two_node_pools_requeue_a_lost_workers_task_once(settings: Settings) -> None:
    first = settings.replace(grpc_host="127.0.0.1", heartbeat_interval=0.5)
    second = first.replace(grpc_port=free_port(), nodepool_metrics_port=free_port())
    with node_pool_serving(first) as a, node_pool_serving(second) as b:
        pa, pb = Pool(a, first.client_address, first), Pool(b, second.client_address, second)
        assert wait_until(lambda: a.housekeeper.holding or b.housekeeper.holding, 10)
        assert not (a.housekeeper.holding and b.housekeeper.holding)
        holder, other = (pa, pb) if a.housekeeper.holding else (pb, pa)

        alice = pa.user("alice")
        [task_id] = alice.submit([function_spec("hivemind.examples:add", [1, 2])])
        lost = other.worker("w-lost")  # leases through the node pool that does not housekeep
        [leased] = lost.lease(1, wait=2).tasks
        assert leased.attempt == 1
        # It goes silent: no heartbeat renews the lease, which expires after 1.5 s.
        assert wait_until(lambda: ("requeued", 1) in _events(pa, task_id), 15)
        assert _expiries(holder) == [1] and _expiries(other) == [0]

        # The housekeeping node pool stops: the other takes over, and reaps the next one.
        holder.server.stop(grace=1)
        assert wait_until(lambda: other.server.housekeeper.holding, 10)
        again = other.worker("w-lost-2")
        [second_lease] = again.lease(1, wait=2).tasks
        assert second_lease.attempt == 2
        assert wait_until(lambda: ("requeued", 2) in _events(other, task_id), 15)
        assert _expiries(other) == [1]
        requeues = [event for event in _events(other, task_id) if event[0] == "requeued"]
        assert requeues == [("requeued", 1), ("requeued", 2)]  # each lease expired once


def _timed(call):  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    reply = call()
    return reply, time.perf_counter() - began


def test_a_submit_on_one_node_pool_wakes_a_worker_waiting_on_another(settings: Settings) -> None:
    """Without the relay a worker waiting on B sees A's work only at its next fallback poll,
    1 s after it began to wait (0.9 s after the submit here); with it, within milliseconds
    (a few hundred on a loaded machine). Five rounds of each kind of wait."""
    first = settings.replace(grpc_host="127.0.0.1")
    second = first.replace(grpc_port=free_port(), nodepool_metrics_port=free_port())
    with node_pool_serving(first) as a, node_pool_serving(second) as b:
        pa, pb_ = Pool(a, first.client_address, first), Pool(b, second.client_address, second)
        alice = pa.user("alice")
        worker = pb_.worker("w-on-b")
        # Each finds out within a second that another node pool listens on its Redis.
        assert wait_until(lambda: a.relay.peers and b.relay.peers, 5)
        waits = []
        for _ in range(5):
            with ThreadPoolExecutor(1) as pool:
                lease = pool.submit(_timed, lambda: worker.lease(1, wait=10))
                time.sleep(0.1)  # the lease call is waiting on B
                submitted = time.perf_counter()
                [task_id] = alice.submit([function_spec("hivemind.examples:add", [1, 2])])
                reply, _ = lease.result(15)
                waits.append(time.perf_counter() - submitted)
            [leased] = reply.tasks
            assert leased.task_id == task_id
            done = pb.TaskResult(
                ref=worker.ref(task_id, leased.attempt), outcome=pb.SUCCEEDED, result_json="3"
            )
            # A's WaitTasks wakes for the completion B took, the same way.
            with ThreadPoolExecutor(1) as pool:
                waited = pool.submit(_timed, lambda t=task_id: alice.wait([t], timeout=10))
                time.sleep(0.1)
                completed = time.perf_counter()
                assert worker.complete([done])[0].accepted
                [task], _ = waited.result(15)
                waits.append(time.perf_counter() - completed)
            assert task.status == "SUCCEEDED"
        assert max(waits) < 0.6, waits
        assert a.relay.received >= 5 and b.relay.received >= 5
