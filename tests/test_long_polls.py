"""Long polls and the node pool's call threads: past LONG_POLLS_MAX a lease call looks once
and tells its worker when to ask again, so idle workers never take every thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest

from hivemind import tuning
from hivemind.auth import issue_worker_token
from hivemind.client import function_spec
from hivemind.config import Settings
from hivemind.nodepool.workers_service import WorkerTaskService
from hivemind.proto import hivemind_pb2 as pb
from hivemind.worker.connection import WorkerConnection
from hivemind.worker.daemon import Worker, WorkerOptions
from tests.helpers import wait_until
from tests.nodepool_support import Pool, node_pool_serving


@contextmanager
def small_pool(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pool]:
    """A node pool with 4 call threads, of which 2 may wait in long polls."""
    monkeypatch.setattr(tuning, "NODEPOOL_CALL_THREADS", 4)
    monkeypatch.setattr(tuning, "LONG_POLLS_MAX", 2)
    s = settings.replace(grpc_host="127.0.0.1", heartbeat_interval=30)
    with node_pool_serving(s) as server:
        yield Pool(server, s.client_address, s)


def test_long_polls_past_the_limit_look_once_and_say_when_to_ask_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_pool(settings, monkeypatch) as pool:
        server = pool.server
        workers = [pool.worker(f"idle-{i}") for i in range(7)]

        def long_poll(conn: WorkerConnection, told: bool) -> tuple[pb.LeaseReply, float]:
            request = pb.LeaseRequest(
                node_id=conn.node_id, max_tasks=1, wait=3.0, waits_when_told=told
            )
            began = time.monotonic()
            reply = conn.tasks.LeaseTasks(request, metadata=conn._metadata, timeout=10)
            return reply, time.monotonic() - began

        with ThreadPoolExecutor(6) as executor:
            polls = [executor.submit(long_poll, conn, True) for conn in workers[:6]]
            assert wait_until(lambda: server.state.long_polls.held == 2, timeout=5)
            older, older_took = long_poll(workers[6], told=False)
            answers = [poll.result(10) for poll in polls]
    turned_away = [(r, took) for r, took in answers if r.poll_again_after > 0]
    assert len(turned_away) == 4  # looked once, told when to come back
    assert all(1.5 <= r.poll_again_after <= 3.0 and not r.tasks for r, _ in turned_away)
    assert all(took < 1.5 for _, took in turned_away)  # and did not wait
    assert sorted(took >= 2.5 for _, took in answers) == [False] * 4 + [True] * 2
    # A worker that does not say it waits when told would call again at once: it waits.
    assert older.poll_again_after == 0 and older_took >= 2.5
    assert server.state.long_polls.held == 0  # the places are given back


def test_a_heartbeat_during_long_polls_answers_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More idle workers than call threads: without the limit on long polls, all 4 threads
    # would wait in long polls and the heartbeat behind them for 4 s.
    with small_pool(settings, monkeypatch) as pool:
        server = pool.server
        workers = [pool.worker(f"idle-{i}") for i in range(6)]

        def long_poll(conn: WorkerConnection) -> pb.LeaseReply:
            request = pb.LeaseRequest(
                node_id=conn.node_id, max_tasks=1, wait=4.0, waits_when_told=True
            )
            return conn.tasks.LeaseTasks(request, metadata=conn._metadata, timeout=10)

        with ThreadPoolExecutor(6) as executor:
            polls = [executor.submit(long_poll, conn) for conn in workers[1:]]
            assert wait_until(lambda: server.state.long_polls.held == 2, timeout=5)
            time.sleep(0.3)  # the other three have had their answer, or hold a thread
            began = time.monotonic()
            workers[0].heartbeat(pb.Metrics(), [])
            took = time.monotonic() - began
            # The long polls with a place still take new work as it comes.
            [tid] = pool.user("alice").submit([function_spec("hivemind.examples:noop")])
            leased = [t.task_id for poll in polls for t in poll.result(10).tasks]
    assert took < 1.0, f"a heartbeat waited {took:.1f} s behind long polls"
    assert leased == [tid]


def test_a_worker_turned_away_from_a_long_poll_waits_as_told(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No lease stream and no long-poll place: every lease call is turned away at once.
    monkeypatch.setattr(tuning, "LEASE_STREAMS_MAX", 0)
    monkeypatch.setattr(tuning, "LONG_POLLS_MAX", 0)
    calls: list[pb.LeaseReply] = []
    lease = WorkerTaskService.LeaseTasks

    def counted(
        self: WorkerTaskService, request: pb.LeaseRequest, context: grpc.ServicerContext
    ) -> pb.LeaseReply:
        reply = lease(self, request, context)
        calls.append(reply)
        return reply

    monkeypatch.setattr(WorkerTaskService, "LeaseTasks", counted)
    s = settings.replace(grpc_host="127.0.0.1", heartbeat_interval=30)
    with node_pool_serving(s):
        worker = Worker(
            s,
            WorkerOptions(node_id="w-idle", token=issue_worker_token(s, "w-idle"), capacity=2),
        )
        worker.start()
        try:
            assert wait_until(lambda: len(calls) >= 1, timeout=10)
            time.sleep(2.0)
        finally:
            worker.shutdown(grace=1)
    # Asked to come back after 5-10 s (its 10 s wait, jittered): one call, not a busy loop.
    assert len(calls) == 1, [c.poll_again_after for c in calls]
    assert 5.0 <= calls[0].poll_again_after <= 10.0
