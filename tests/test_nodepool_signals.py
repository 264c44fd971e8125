"""The node pool's in-process wake-ups: what waiters and lease calls learn from them."""

from __future__ import annotations

import time

from hivemind.nodepool.core import FinishedLog, QueueSignal


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
