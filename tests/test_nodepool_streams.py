"""Workers lease, and clients submit, over long-lived streams, with calls as the fallback."""

from __future__ import annotations

import threading
import time

import pytest

from hivemind import tuning
from hivemind.client import function_spec
from hivemind.errors import NodePoolError
from hivemind.nodepool.core import Slots
from hivemind.nodepool.server import NodePoolServer
from hivemind.proto import hivemind_pb2 as pb
from hivemind.worker import connection
from tests.helpers import wait_until
from tests.nodepool_support import Pool


def test_a_worker_leases_and_reports_over_one_stream(pool: Pool) -> None:
    alice = pool.user("alice")
    first, second = alice.submit([function_spec("hivemind.examples:noop") for _ in range(2)])
    w1 = pool.worker("w1")
    streams = pool.server.state.lease_streams
    [leased] = w1.lease(1, wait=2).tasks
    assert leased.task_id == first and streams.held == 1
    done = pb.TaskResult(ref=w1.ref(first, 1), outcome=pb.SUCCEEDED, result_json='"ok"')
    reply = w1.lease(1, wait=2, results=[done])
    assert [t.task_id for t in reply.tasks] == [second] and reply.replies[0].accepted
    assert streams.held == 1  # the same stream, not one per lease
    assert alice.get(first).result_json == '"ok"'
    w1.close()
    assert wait_until(lambda: streams.held == 0, 5)


def test_a_worker_opens_its_next_stream_before_a_long_poll_could_outlast_this_one(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "LEASE_STREAM_LIFETIME", 2.5)  # the stream's deadline
    monkeypatch.setattr(connection, "LEASE_MARGIN", 0.2)
    w1 = pool.worker("w1")
    started = time.monotonic()
    for _ in range(4):  # long polls of a second each, the third of which would be cut short
        assert not w1.lease(1, wait=1).tasks
    assert time.monotonic() - started > 3.5


def test_a_client_submits_over_one_stream_from_its_second_submit_on(pool: Pool) -> None:
    alice = pool.user("alice")
    streams = pool.server.state.submit_streams
    noop = function_spec("hivemind.examples:noop")
    [first] = alice.submit([noop])
    assert streams.held == 0  # a one-off submit (the CLI's) opens no stream
    [second] = alice.submit([noop])
    assert streams.held == 1
    w1 = pool.worker("w1")

    def play_worker() -> None:
        leased: list[pb.LeasedTask] = []
        while len(leased) < 3:
            leased += w1.lease(3, wait=5).tasks
        w1.complete(
            [pb.TaskResult(ref=w1.ref(x.task_id, x.attempt), outcome=pb.SUCCEEDED) for x in leased]
        )

    worker = threading.Thread(target=play_worker)
    worker.start()
    [third] = alice.submit_and_wait([noop], timeout=10)  # the same stream, waiting
    worker.join(10)
    assert third.status == "SUCCEEDED" and streams.held == 1
    assert {t.status for t in alice.wait([first, second], 5)} == {"SUCCEEDED"}
    # A bad request ends the stream with its error, and the next submit opens another.
    with pytest.raises(NodePoolError) as info:
        alice.submit([function_spec("no-colon")])
    assert info.value.code == "INVALID_ARGUMENT"
    assert alice.submit([noop]) and wait_until(lambda: streams.held == 1, 5)
    alice.close()
    assert wait_until(lambda: streams.held == 0, 5)


def test_streams_opened_before_a_node_pool_restart_do_not_fail_the_next_request(
    pool: Pool,
) -> None:
    alice = pool.user("alice")
    noop = function_spec("hivemind.examples:noop")
    alice.submit([noop])
    alice.submit([noop])  # a submit stream is open
    w1 = pool.worker("w1")
    assert w1.lease(2, wait=1).tasks  # and a lease stream
    pool.server.stop(grace=0.5)
    again = NodePoolServer(pool.settings)
    again.start()
    try:
        assert alice.submit([noop])  # over a new stream, not an error from the old one
        w1.register(pb.WorkerResources(cpu=2, memory_mb=4096, capacity=4), [])
        assert w1.lease(1, wait=1).tasks
    finally:
        again.stop(grace=0.5)


def test_a_client_signed_in_anew_submits_as_its_new_user(pool: Pool) -> None:
    pool.user("bob")
    client = pool.user("alice")
    noop = function_spec("hivemind.examples:noop")
    client.submit([noop])
    client.submit([noop])  # the stream now carries alice's token
    client.login("bob", "bob-password")
    [task_id] = client.submit([noop])
    assert client.get(task_id).owner == "bob"


def test_a_client_refused_a_stream_submits_with_calls(pool: Pool) -> None:
    pool.server.state.submit_streams = Slots(0)
    alice = pool.user("alice")
    ids = [alice.submit([function_spec("hivemind.examples:noop")])[0] for _ in range(3)]
    assert [alice.get(i).status for i in ids] == ["QUEUED"] * 3


def test_a_worker_refused_a_stream_leases_and_reports_with_calls(pool: Pool) -> None:
    pool.server.state.lease_streams = Slots(0)  # as if 64 workers held one already
    alice = pool.user("alice")
    first, second = alice.submit([function_spec("hivemind.examples:noop") for _ in range(2)])
    w1 = pool.worker("w1")
    [leased] = w1.lease(1, wait=2).tasks
    done = pb.TaskResult(ref=w1.ref(first, leased.attempt), outcome=pb.SUCCEEDED)
    reply = w1.lease(1, wait=2, results=[done])
    assert [t.task_id for t in reply.tasks] == [second] and reply.replies[0].accepted
    assert alice.get(first).status == "SUCCEEDED"


def test_a_stopping_node_pool_ends_lease_streams_instead_of_answering_them_empty(
    pool: Pool,
) -> None:
    w1 = pool.worker("w1")
    assert not w1.lease(1, wait=0.1).tasks  # the stream is open
    polled: list[pb.LeaseReply] = []
    poller = threading.Thread(target=lambda: polled.append(w1.lease(1, wait=20)))
    poller.start()
    time.sleep(0.3)
    started = time.monotonic()
    stopper = threading.Thread(target=pool.server.stop, kwargs={"grace": 5})
    stopper.start()
    poller.join(10)
    assert polled and not polled[0].tasks and time.monotonic() - started < 3
    with pytest.raises(NodePoolError) as info:
        w1.lease(1, wait=20)
    assert info.value.code == "UNAVAILABLE" and time.monotonic() - started < 5
    stopper.join(10)
