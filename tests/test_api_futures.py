"""HiveMindFuture keeps the concurrent.futures.Future protocol while it makes its Condition
only when a thread waits on it (pure logic: the futures are resolved from task messages)."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import pytest

from hivemind.api.futures import HiveMindFuture, as_completed
from hivemind.proto import hivemind_pb2 as pb


def _future(task_id: str = "t1") -> HiveMindFuture:
    return HiveMindFuture(task_id, client=None, collector=None)  # type: ignore[arg-type]


def _succeeded(task_id: str, value: str) -> pb.Task:
    return pb.Task(id=task_id, status="SUCCEEDED", result_json=value)


def _failed(task_id: str) -> pb.Task:
    return pb.Task(id=task_id, status="FAILED", error_message="ValueError: bad input")


def test_it_sets_what_the_base_class_sets() -> None:
    # A Python release that adds a field to Future.__init__ must fail here, not in users' code.
    base = set(vars(cf.Future()))
    ours = set(vars(_future())) | {"_condition"}
    assert base <= ours


def test_outcomes_read_without_a_waiter_need_no_condition() -> None:
    ok, bad = _future("a"), _future("b")
    ok._resolve(_succeeded("a", "[1, 2]"))
    bad._resolve(_failed("b"))
    assert ok.done() and ok.result(0) == [1, 2] and ok.exception(0) is None
    assert isinstance(bad.exception(0), ValueError)
    with pytest.raises(ValueError, match="bad input"):
        bad.result(0)
    assert ok._made_condition is None and bad._made_condition is None
    ok._resolve(_failed("a"))  # a second outcome is ignored
    assert ok.result(0) == [1, 2]


def test_a_thread_waiting_in_result_is_woken_by_the_outcome() -> None:
    future = _future()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(future.result(10)))
    waiter.start()
    while future._made_condition is None:  # the waiter made it, and waits on it
        time.sleep(0.001)
    future._resolve(_succeeded("t1", '"x"'))
    waiter.join(5)
    assert got == ["x"]


def test_callbacks_and_wait_see_each_outcome_once() -> None:
    futures = [_future(f"t{i}") for i in range(50)]
    called: list[str] = []
    for future in futures[:25]:
        future.add_done_callback(lambda f: called.append(f.task_id))
    ended = threading.Event()

    def resolve_all() -> None:
        for i, future in enumerate(futures):
            future._resolve(_succeeded(f"t{i}", str(i)))
        ended.set()

    resolver = threading.Thread(target=resolve_all)
    resolver.start()
    done, not_done = cf.wait(futures, timeout=10)
    resolver.join(5)
    assert len(done) == 50 and not not_done
    for future in futures[25:]:
        future.add_done_callback(lambda f: called.append(f.task_id))  # runs at once
    assert sorted(called) == sorted(f"t{i}" for i in range(50))
    assert [f.result() for f in as_completed(futures)] == list(range(50))


def test_a_timeout_on_a_pending_future_is_a_timeout_error() -> None:
    future = _future()
    with pytest.raises(TimeoutError):
        future.result(0.05)
    assert not future.done()
    future._resolve(_succeeded("t1", "7"))
    assert future.result(0) == 7
