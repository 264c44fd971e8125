"""The node pool calls the master needs: GetStats (dashboard, /metrics) and GrantCredits."""

from __future__ import annotations

import time

import pytest

from hivemind.client import function_spec
from hivemind.errors import NodePoolError
from hivemind.proto import hivemind_pb2 as pb
from tests.nodepool_support import Pool


def test_stats_count_the_queue_leases_and_outcomes_per_minute(pool: Pool) -> None:
    alice = pool.user("alice")
    ids = alice.submit([function_spec("hivemind.examples:add", [i, 1]) for i in range(4)])
    before = alice.stats()
    assert (before.queued, before.running) == (4, 0)
    assert len(before.finished_per_minute) == 60 and sum(before.finished_per_minute) == 0
    worker = pool.worker("w1")
    leased = worker.lease(3, wait=2).tasks
    assert len(leased) == 3
    done = [
        pb.TaskResult(ref=worker.ref(leased[0].task_id, 1), outcome=pb.SUCCEEDED, result_json="1"),
        pb.TaskResult(ref=worker.ref(leased[1].task_id, 1), outcome=pb.FAILED, error_message="x"),
    ]
    assert all(r.accepted for r in worker.complete(done))
    alice.cancel(next(i for i in ids if i not in {t.task_id for t in leased}))
    after = alice.stats()
    assert (after.queued, after.running) == (0, 1)
    assert dict(after.finished_total) == {"SUCCEEDED": 1, "FAILED": 1, "CANCELLED": 1}
    assert after.finished_per_minute[-1] == 3 and abs(after.at - time.time()) < 5


def test_workers_may_read_stats_but_anonymous_callers_may_not(pool: Pool) -> None:
    from hivemind.auth import issue_worker_token
    from hivemind.client import Client

    with Client(pool.address, issue_worker_token(pool.settings, "w1")) as worker:
        assert worker.stats().queued == 0
    with Client(pool.address) as anonymous, pytest.raises(NodePoolError) as info:
        anonymous.stats()
    assert info.value.code == "UNAUTHENTICATED"


def test_only_admins_grant_credits(pool: Pool) -> None:
    admin, bob = pool.user("root", admin=True), pool.user("bob")
    assert admin.grant_credits("bob", 25).credits == 125
    assert admin.grant_credits("bob", -5).credits == 120
    with pytest.raises(NodePoolError) as info:
        admin.grant_credits("bob", -1000)
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(NodePoolError) as info:
        bob.grant_credits("bob", 1000)
    assert info.value.code == "PERMISSION_DENIED"
    with pytest.raises(NodePoolError) as info:
        admin.grant_credits("nobody", 1)
    assert info.value.code == "NOT_FOUND"
