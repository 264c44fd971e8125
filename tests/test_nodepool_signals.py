"""The node pool's in-process wake-ups: what waiters and lease calls learn from them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from hivemind.nodepool.core import FinishedLog, QueueSignal
from hivemind.taskstore import Lease, LeaseAsk, WorkerCaps

ASK = LeaseAsk("w1", WorkerCaps(cpu=1, memory_mb=512, gpu=0, labels=()), 4, 30.0)


def test_finished_log_hands_waiters_the_newest_hash_of_each_ended_task() -> None:
    log = FinishedLog(keep=16, keep_records=16)
    seen = log.generation
    log.notify(["a", "b"], {"a": {"status": "SUCCEEDED"}})
    log.notify(["c"])  # e.g. a lease that expired: no hash
    log.notify(["a"], {"a": {"status": "FAILED"}})
    now, changed = log.since(seen)
    assert now == log.generation == seen + 3
    assert changed == {"a": {"status": "FAILED"}, "b": None, "c": None}
    assert log.since(now) == (now, {})


def test_finished_log_drops_the_oldest_hashes_past_its_limit_but_keeps_the_notices() -> None:
    log = FinishedLog(keep=16, keep_records=3)
    seen = log.generation
    log.notify(["a", "b"], {"a": {"n": "1"}, "b": {"n": "2"}})
    log.notify(["c", "d"], {"c": {"n": "3"}, "d": {"n": "4"}})
    _, changed = log.since(seen)
    assert changed == {"a": None, "b": None, "c": {"n": "3"}, "d": {"n": "4"}}


def test_finished_log_keeps_each_tasks_newest_hash_while_it_holds_it() -> None:
    log = FinishedLog(keep=16, keep_records=2)
    log.notify(["a", "b"], {"a": {"n": "1"}, "b": {"n": "2"}})
    log.notify(["a"], {"a": {"n": "3"}})
    assert log.records(["a", "b", "c"]) == {"a": {"n": "3"}}  # b's was the oldest past 2
    log.notify(["a"])  # a notice without a hash: what was held may be stale
    assert log.records(["a"]) == {}
    log.notify(["c"], {"c": {"n": "4"}})
    log.notify()  # anything may have changed
    assert log.records(["c"]) == {}


def test_finished_log_says_any_task_may_have_ended_when_notices_are_gone_or_unknown() -> None:
    log = FinishedLog(keep=2)
    seen = log.generation
    for name in "abc":
        log.notify([name])
    assert log.since(seen) == (seen + 3, None)  # the first notice is no longer kept
    recent = log.generation
    log.notify()  # unknown tasks (a cancel from another path, say)
    assert log.since(recent) == (recent + 1, None)


def test_queue_signal_trusts_an_empty_queue_only_until_work_is_queued_or_time_passes() -> None:
    signal = QueueSignal()
    seen = signal.generation
    assert not signal.known_empty(seen, 1.0)  # never seen empty
    signal.saw_empty(seen)
    assert signal.known_empty(seen, 1.0)
    assert not signal.known_empty(seen, 0.0)  # too old for a caller that trusts nothing
    signal.notify(1)  # work was queued through this process
    assert not signal.known_empty(signal.generation, 1.0)
    signal.saw_empty(seen)  # a round that started before that work was queued proves nothing
    assert not signal.known_empty(signal.generation, 1.0)
    now = signal.generation
    signal.saw_empty(now)
    time.sleep(0.06)
    assert signal.known_empty(now, 1.0) and not signal.known_empty(now, 0.05)


def _wait_until_waiting(signal: QueueSignal, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(signal._waiters) < count:
        assert time.monotonic() < deadline, "the lease call never started waiting"
        time.sleep(0.001)


def test_a_submit_hands_new_work_to_the_longest_waiting_lease_call_only() -> None:
    signal = QueueSignal()
    lease = Lease("t1", 1, {"owner": "alice"})
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(signal.wait, signal.generation, 5.0, ASK)
        _wait_until_waiting(signal, 1)
        second = pool.submit(signal.wait, signal.generation, 0.3, ASK)
        _wait_until_waiting(signal, 2)
        waiter = signal.claim()
        assert waiter is not None and waiter.ask is ASK
        time.sleep(0.05)
        assert not first.done()  # claimed: it waits for what the submit leases for it
        signal.hand(waiter, [lease])
        assert first.result(1) == [lease]
        assert second.result(2) == []  # never claimed: it timed out with nothing
    assert signal.claim() is None  # a call that timed out is no longer in line


def test_a_lease_call_handed_nothing_after_a_failed_submit_is_free_to_look_again() -> None:
    signal = QueueSignal()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(signal.wait, signal.generation, 5.0, ASK)
        _wait_until_waiting(signal, 1)
        waiter = signal.claim()
        assert waiter is not None
        signal.hand(waiter, [])  # the submit's script failed
        assert waiting.result(1) == []


def test_the_queue_counts_as_seen_empty_after_a_change_that_left_it_empty() -> None:
    signal = QueueSignal()
    seen = signal.generation
    signal.notify(0, left_empty=seen)
    assert signal.known_empty(signal.generation, 1.0)
    stale = signal.generation
    signal.notify(1)  # another submit's work came in between
    signal.notify(0, left_empty=stale)
    assert not signal.known_empty(signal.generation, 1.0)
