"""The node pool's gRPC API over real loopback gRPC, with a real Redis and users.db."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hivemind import keys, tuning
from hivemind.auth import issue_worker_token
from hivemind.client import Client, function_spec
from hivemind.config import Settings
from hivemind.errors import NodePoolError
from hivemind.nodepool.background import Housekeeper
from hivemind.nodepool.core import NodePoolState
from hivemind.nodepool.server import NodePoolServer
from hivemind.nodepool.workers_service import WorkerService, WorkerTaskService
from hivemind.paths import layout
from hivemind.proto import hivemind_pb2 as pb
from hivemind.proto import hivemind_pb2_grpc as pb_grpc
from hivemind.proto.generate import stale_files
from hivemind.states import TaskState
from hivemind.taskstore import NewTask, Outcome, TaskStore, WorkerCaps
from hivemind.userdb import UserStore
from hivemind.worker.connection import WorkerConnection
from hivemind.worker.daemon import Worker, WorkerOptions
from tests.helpers import wait_until
from tests.nodepool_support import Pool


def test_generated_code_is_fresh() -> None:
    assert stale_files() == []


def test_health_and_reflection(pool: Pool) -> None:
    channel = grpc.insecure_channel(pool.address)
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [answer] = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"hivemind.v1.TaskService", "grpc.health.v1.Health"} <= names


def test_missing_bad_and_expired_tokens_are_refused(pool: Pool) -> None:
    with Client(pool.address) as anonymous, pytest.raises(NodePoolError) as info:
        anonymous.list()
    assert info.value.code == "UNAUTHENTICATED" and "missing bearer token" in str(info.value)
    with Client(pool.address, token="forged.token") as forged, pytest.raises(NodePoolError) as info:
        forged.list()
    assert info.value.code == "UNAUTHENTICATED"
    expired, _ = pool.server.state.signer.issue("alice", "user", "user", ttl=-5)
    pool.user("alice")
    with Client(pool.address, token=expired) as old, pytest.raises(NodePoolError, match="expired"):
        old.list()


def test_wrong_password_and_rate_limit(pool: Pool) -> None:
    pool.user("carol")
    c = Client(pool.address)
    for _ in range(5):
        with pytest.raises(NodePoolError, match="wrong username or password"):
            c.login("carol", "nope")
    with pytest.raises(NodePoolError) as info:
        c.login("carol", "carol-password")  # right password, but locked out for now
    assert info.value.code == "RESOURCE_EXHAUSTED"


def test_users_see_and_cancel_only_their_own_tasks(pool: Pool) -> None:
    alice, bob, admin = pool.user("alice"), pool.user("bob"), pool.user("root", admin=True)
    [tid] = alice.submit([function_spec("hivemind.examples:add", [1, 2])])
    assert alice.get(tid).owner == "alice"
    with pytest.raises(NodePoolError) as info:
        bob.get(tid)
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(NodePoolError):
        bob.cancel(tid)
    assert [t.id for t in bob.list()] == []
    with pytest.raises(NodePoolError, match="only an admin"):
        bob.list(all_users=True)
    assert tid in [t.id for t in admin.list(all_users=True)]
    assert admin.cancel(tid).status == "CANCELLED"
    # A task that just ended here is answered from memory: to its owner and admins only.
    [done] = alice.submit([function_spec("hivemind.examples:add", [2, 2])])
    worker = pool.worker("w1")
    [leased] = worker.lease(1, wait=2).tasks
    ok = pb.TaskResult(ref=worker.ref(done, leased.attempt), outcome=pb.SUCCEEDED, result_json="4")
    assert worker.complete([ok])[0].accepted
    assert pool.server.state.finished.records([done])  # held in memory
    with pytest.raises(NodePoolError) as info:
        bob.wait([done], 1)
    assert info.value.code == "NOT_FOUND"
    assert [(t.status, t.result_json) for t in alice.wait([done], 1)] == [("SUCCEEDED", "4")]
    assert admin.wait([done], 1)[0].owner == "alice"
    # One still queued is read from Redis: refused to others in both kinds of wait.
    [queued] = alice.submit([function_spec("hivemind.examples:add", [3, 3])])
    for first_completed in (False, True):
        with pytest.raises(NodePoolError) as info:
            bob.wait([queued], 0.2, first_completed=first_completed)
        assert info.value.code == "NOT_FOUND" and queued in str(info.value)
    assert [t.status for t in admin.wait([queued, done], 0.2)] == ["QUEUED", "SUCCEEDED"]
    assert [t.id for t in admin.wait([queued, done], 0.2, first_completed=True)] == [done]


def test_worker_token_acts_only_as_its_worker(pool: Pool) -> None:
    alice = pool.user("alice")
    [tid] = alice.submit([function_spec("hivemind.examples:add", [1, 2])])
    w1, w2 = pool.worker("w1"), pool.worker("w2")
    [leased] = w1.lease(1, wait=2).tasks
    assert leased.task_id == tid and leased.spec.function == "hivemind.examples:add"
    # w2 names itself honestly: the fence refuses a task leased to w1.
    result = pb.TaskResult(ref=w2.ref(tid, leased.attempt), outcome=pb.SUCCEEDED, result_json="0")
    [reply] = w2.complete([result])
    assert not reply.accepted and "leased to w1" in reply.reason
    # w2 pretends to be w1: its token says otherwise.
    forged = pb.TaskResult(
        ref=pb.AttemptRef(task_id=tid, attempt=1, node_id="w1"),
        outcome=pb.SUCCEEDED,
        result_json="0",
    )
    with pytest.raises(NodePoolError) as info:
        w2.complete([forged])
    assert info.value.code == "PERMISSION_DENIED"
    # A user token is no worker token.
    with pytest.raises(NodePoolError, match="worker token"):
        alice.call(w1.tasks.LeaseTasks, pb.LeaseRequest(node_id="w1", max_tasks=1))
    ok = pb.TaskResult(ref=w1.ref(tid, 1), outcome=pb.SUCCEEDED, result_json="3")
    assert w1.complete([ok])[0].accepted
    assert json.loads(alice.wait([tid], 5)[0].result_json) == 3


def test_lease_carries_outcomes_and_is_fenced_like_complete(pool: Pool) -> None:
    alice = pool.user("alice")
    first, second = alice.submit(
        [
            function_spec("hivemind.examples:add", [1, 2]),
            function_spec("hivemind.examples:add", [3, 4]),
        ]
    )
    w1, w2 = pool.worker("w1"), pool.worker("w2")
    [leased] = w1.lease(1, wait=2).tasks
    assert leased.task_id == first
    done = pb.TaskResult(ref=w1.ref(first, leased.attempt), outcome=pb.SUCCEEDED, result_json="3")
    stale = pb.TaskResult(ref=w1.ref(first, leased.attempt + 1), outcome=pb.FAILED)
    # One call reports an outcome (after a late one from a wrong attempt) and leases on.
    reply = w1.lease(1, wait=2, results=[stale, done])
    assert [r.accepted for r in reply.replies] == [False, True]
    assert "not the current attempt" in reply.replies[0].reason
    assert [t.task_id for t in reply.tasks] == [second]
    assert alice.get(first).status == "SUCCEEDED" and json.loads(alice.get(first).result_json) == 3
    # The outcome lands before the lease's long poll: a waiter need not wait for it to end.
    started = time.monotonic()
    sent: list[pb.LeaseReply] = []
    finish = pb.TaskResult(ref=w1.ref(second, 1), outcome=pb.SUCCEEDED, result_json="7")
    poller = threading.Thread(target=lambda: sent.append(w1.lease(1, wait=3, results=[finish])))
    poller.start()
    [task] = alice.wait([second], 5)
    assert task.status == "SUCCEEDED" and time.monotonic() - started < 2
    assert (task.result_json, task.owner, task.worker) == ("7", "alice", "w1")
    assert task.finished_at >= task.start_time > 0
    poller.join()
    assert sent[0].replies[0].accepted and not sent[0].tasks
    # Another worker's token cannot report through a lease either.
    forged = pb.TaskResult(ref=pb.AttemptRef(task_id=first, attempt=1, node_id="w1"))
    with pytest.raises(NodePoolError) as info:
        w2.lease(1, wait=0, results=[forged])
    assert info.value.code == "PERMISSION_DENIED"


def test_work_queued_by_another_process_reaches_a_long_poll_that_skipped_its_first_look(
    pool: Pool,
) -> None:
    w1 = pool.worker("w1")
    assert not w1.lease(1, wait=0.1).tasks  # the node pool now knows the queue is empty
    # Queued behind the node pool's back (as a restore or the doctor would): no wake-up.
    other = TaskStore(redis.Redis.from_url(pool.settings.redis_url, decode_responses=True))
    late = NewTask("alice", "late", "FUNCTION", {"function": "m:f"}, 60, 0, 0)
    [task_id] = other.submit([late])
    started = time.monotonic()
    [leased] = w1.lease(1, wait=5).tasks
    assert leased.task_id == task_id
    assert time.monotonic() - started < tuning.QUEUE_EMPTY_TRUST + 1.0


def test_a_task_submitted_during_a_long_poll_is_leased_in_the_submits_round_trip(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, w1 = pool.user("alice"), pool.worker("w1")
    state = pool.server.state
    polled: list[pb.LeaseReply] = []
    poller = threading.Thread(target=lambda: polled.append(w1.lease(2, wait=5)))
    poller.start()
    assert wait_until(lambda: len(state.queued._waiters) == 1, 5)
    rounds: list[str] = []
    lease_for = state.tasks.lease_for
    monkeypatch.setattr(
        state.tasks, "lease_for", lambda *a, **k: rounds.append("lease") or lease_for(*a, **k)
    )
    [task_id] = alice.submit([function_spec("hivemind.examples:noop")])
    poller.join(5)
    assert [t.task_id for t in polled[0].tasks] == [task_id] and polled[0].tasks[0].attempt == 1
    assert rounds == []  # the long poll did not look in Redis itself: the submit leased for it
    assert (alice.get(task_id).status, alice.get(task_id).worker) == ("RUNNING", "w1")


def test_a_task_handed_to_a_worker_that_hung_up_goes_back_to_the_queue(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "QUEUE_EMPTY_TRUST", 10.0)  # no fallback look during the test
    alice, w1 = pool.user("alice"), pool.worker("w1")
    state = pool.server.state
    request = pb.LeaseRequest(node_id="w1", max_tasks=1, wait=10)
    with pytest.raises(grpc.RpcError):  # the worker gives up long before the long poll ends
        w1.tasks.LeaseTasks(request, metadata=w1._metadata, timeout=0.3)
    assert len(state.queued._waiters) == 1  # the node pool's side still waits, unaware
    [task_id] = alice.submit([function_spec("hivemind.examples:noop")])

    def released() -> bool:
        task = alice.get(task_id)
        return task.status == "QUEUED" and task.attempt == 1

    assert wait_until(released, 5)
    [again] = w1.lease(1, wait=2).tasks
    assert again.task_id == task_id and again.attempt == 2


def test_a_waiter_sees_a_task_ended_by_another_process_within_a_second(pool: Pool) -> None:
    alice = pool.user("alice")
    ids = alice.submit([function_spec("hivemind.examples:noop") for _ in range(50)])
    waited: list[list[pb.Task]] = []
    waiter = threading.Thread(target=lambda: waited.append(alice.wait(ids[:1], 10)))
    waiter.start()
    time.sleep(0.3)
    # Cancelled behind the node pool's back (as the doctor's repairs would): no wake-up.
    other = TaskStore(redis.Redis.from_url(pool.settings.redis_url, decode_responses=True))
    started = time.monotonic()
    assert other.cancel(ids[0])[0]
    waiter.join(10)
    assert [t.status for t in waited[0]] == ["CANCELLED"]
    assert time.monotonic() - started < 2.0


def test_a_worker_that_hands_tasks_back_gets_no_more_until_it_registers_again(
    pool: Pool,
) -> None:
    alice = pool.user("alice")
    [task_id] = alice.submit([function_spec("hivemind.examples:noop")])
    w1, w2 = pool.worker("w1"), pool.worker("w2")
    [leased] = w1.lease(1, wait=2).tasks
    # w1's long poll is open when w1 hands the task back (as a stopping worker does).
    polled: list[pb.LeaseReply] = []
    poller = threading.Thread(target=lambda: polled.append(w1.lease(1, wait=10)))
    poller.start()
    time.sleep(0.3)
    started = time.monotonic()
    w1.release([(task_id, leased.attempt)])
    poller.join(10)
    assert not polled[0].tasks and time.monotonic() - started < 2  # back at once, empty
    assert not w1.lease(1, wait=0.5).tasks
    [again] = w2.lease(1, wait=2).tasks  # the task went to another worker, attempt 2
    assert (again.task_id, again.attempt) == (task_id, 2)
    w1.register(pb.WorkerResources(cpu=2, memory_mb=4096, capacity=4), [])
    [later] = alice.submit([function_spec("hivemind.examples:noop")])
    assert [t.task_id for t in w1.lease(1, wait=2).tasks] == [later]


def test_new_work_is_not_handed_to_a_long_poll_of_a_stopping_worker(pool: Pool) -> None:
    alice, w1, w2 = pool.user("alice"), pool.worker("w1"), pool.worker("w2")
    state = pool.server.state
    polled: dict[str, list[pb.LeasedTask]] = {}

    def poll(node_id: str, conn: WorkerConnection) -> threading.Thread:
        waiting = len(state.queued._waiters)
        thread = threading.Thread(
            target=lambda: polled.__setitem__(node_id, list(conn.lease(1, wait=5).tasks))
        )
        thread.start()
        assert wait_until(lambda: len(state.queued._waiters) == waiting + 1, 5)
        return thread

    pollers = [poll("w1", w1), poll("w2", w2)]  # w1 waits longest
    state.set_leaving("w1", True)  # w1 hands its tasks back; its wake-up is not out yet
    [task_id] = alice.submit([function_spec("hivemind.examples:noop")])
    for poller in pollers:
        poller.join(5)
    assert polled["w1"] == [] and [t.task_id for t in polled["w2"]] == [task_id]


def test_submit_and_wait_returns_results_in_the_same_call(pool: Pool) -> None:
    alice = pool.user("alice")
    w1 = pool.worker("w1")

    def play_worker() -> None:
        leased = w1.lease(2, wait=5).tasks
        w1.complete(
            [
                pb.TaskResult(
                    ref=w1.ref(x.task_id, x.attempt),
                    outcome=pb.SUCCEEDED,
                    result_json=json.dumps(sum(json.loads(x.spec.args_json))),
                )
                for x in leased
            ]
        )

    worker = threading.Thread(target=play_worker)
    worker.start()
    specs = [function_spec("hivemind.examples:add", [1, 2]), function_spec("x.y:z", [])]
    first, second = alice.submit_and_wait(specs, timeout=10)
    worker.join()
    assert (first.status, json.loads(first.result_json), first.owner) == ("SUCCEEDED", 3, "alice")
    assert (second.status, second.worker, second.attempt) == ("SUCCEEDED", "w1", 1)
    assert first.finished_at >= first.start_time >= first.created_at > 0


def test_submit_and_wait_replies_with_unfinished_tasks_when_time_is_up(pool: Pool) -> None:
    alice = pool.user("alice")
    started = time.monotonic()
    [task] = alice.submit_and_wait([function_spec("hivemind.examples:noop")], timeout=0.5)
    assert 0.4 <= time.monotonic() - started < 5
    # Nobody leased it: it is there, queued, and can still be waited for or cancelled.
    assert task.status == "QUEUED" and task.id and task.spec.function == "hivemind.examples:noop"
    assert alice.cancel(task.id).status == "CANCELLED"


def test_bad_submissions_get_clear_errors(pool: Pool) -> None:
    alice = pool.user("alice")
    bad = [
        (pb.TaskSpec(kind=pb.FUNCTION, function="not a function"), "module:function"),
        (pb.TaskSpec(kind=pb.FUNCTION, function="m:f", args_json="{"), "not JSON"),
        (pb.TaskSpec(kind=pb.FUNCTION, function="m:f", args_json="{}"), "JSON array"),
        (pb.TaskSpec(kind=pb.FUNCTION, function="m:f", timeout=-1), "timeout"),
        (pb.TaskSpec(), "kind must be"),
    ]
    for spec, message in bad:
        with pytest.raises(NodePoolError, match=message) as info:
            alice.submit([spec])
        assert info.value.code == "INVALID_ARGUMENT"
    for bundle_id in ("f" * 64, "../../etc"):
        with pytest.raises(NodePoolError, match="uploaded by you; upload it first") as info:
            alice.submit([pb.TaskSpec(kind=pb.BUNDLE, bundle_id=bundle_id)])
        assert info.value.code == "NOT_FOUND"
    assert alice.list() == []


def test_a_bundle_runs_only_for_its_uploaders_and_admins(pool: Pool, tmp_path: Path) -> None:
    alice, bob, carol = pool.user("alice"), pool.user("bob"), pool.user("carol")
    admin = pool.user("root", admin=True)
    bundle = tmp_path / "job.zip"
    bundle.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: content is not judged
    bundle_id = alice.upload_bundle(bundle)
    spec = pb.TaskSpec(kind=pb.BUNDLE, bundle_id=bundle_id)
    # Bob knows the hash but did not upload it: refused exactly like a hash that does not exist.
    with pytest.raises(NodePoolError) as refused:
        bob.submit([spec])
    with pytest.raises(NodePoolError) as missing:
        bob.submit([pb.TaskSpec(kind=pb.BUNDLE, bundle_id="e" * 64)])
    assert refused.value.code == missing.value.code == "NOT_FOUND"
    assert str(refused.value) == f"task 0: no bundle {bundle_id!r} uploaded by you; upload it first"
    assert str(missing.value).replace("e" * 64, bundle_id) == str(refused.value)
    # A batch with one foreign bundle is refused whole, naming the task.
    with pytest.raises(NodePoolError, match="task 1: no bundle") as batch:
        bob.submit([function_spec("hivemind.examples:noop"), spec])
    assert batch.value.code == "NOT_FOUND" and bob.list() == []
    [mine] = alice.submit([spec])
    [for_someone] = admin.submit([spec])
    assert alice.get(mine).owner == "alice" and admin.get(for_someone).owner == "root"
    # The same content uploaded by Bob too: the same hash, and now it is his to run as well.
    assert bob.upload_bundle(bundle) == bundle_id
    [his] = bob.submit([spec])
    assert bob.get(his).spec.bundle_id == bundle_id
    with pytest.raises(NodePoolError, match="uploaded by you") as still:
        carol.submit([spec])
    assert still.value.code == "NOT_FOUND"
    uploaders = pool.server.state.redis.smembers(keys.bundle_uploaders_key(bundle_id))
    assert uploaders == {"alice", "bob"}


def test_oversize_upload_is_refused_before_it_is_kept(pool: Pool, tmp_path: Path) -> None:
    small = pool.settings.replace(max_task_data_size=1024)
    pool.server.state.blobs.max_size = small.max_task_data_size
    big = tmp_path / "big.zip"
    big.write_bytes(b"x" * 5000)
    alice = pool.user("alice")
    with pytest.raises(NodePoolError, match="MAX_TASK_DATA_SIZE") as info:
        alice.upload_bundle(big)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    data = pool.settings.home / "data"
    assert list((data / "bundles").iterdir()) == [] and list((data / "tmp").iterdir()) == []


def test_unschedulable_task_stays_queued_with_a_reason(pool: Pool) -> None:
    alice = pool.user("alice")
    pool.worker("small-box")
    [tid] = alice.submit([function_spec("hivemind.examples:noop", memory_mb=512 * 1024)])
    pool.server.housekeeper.run_once()
    task = alice.get(tid)
    assert task.status == "QUEUED"
    assert "closest is small-box" in task.unschedulable_reason
    assert "memory_mb 524288 > 4096" in task.unschedulable_reason


def test_finished_tasks_are_archived_and_outlive_their_redis_keys(pool: Pool) -> None:
    alice, worker = pool.user("alice"), pool.worker("w1")
    state = pool.server.state
    ids = alice.submit([function_spec("hivemind.examples:add", [i, 1]) for i in range(3)])
    leased = worker.lease(3, wait=2).tasks
    assert worker.append_log(leased[0].task_id, 1, "line one\n")
    results = [
        pb.TaskResult(ref=worker.ref(t.task_id, 1), outcome=pb.SUCCEEDED, result_json="1")
        for t in leased
    ]
    assert all(r.accepted for r in worker.complete(results))
    assert pool.server.housekeeper.archive_finished() == 3
    r = state.redis
    assert r.scard(keys.TASKS_ARCHIVE_PENDING) == 0
    retention = int(pool.settings.task_retention)
    for task_id in ids:
        assert 0 < r.ttl(keys.task_key(task_id)) <= retention
        assert 0 < r.ttl(keys.task_history_key(task_id)) <= retention
    assert 0 < r.ttl(keys.task_log_key(leased[0].task_id)) <= retention
    assert state.blobs.read_log(leased[0].task_id) == "line one\n"
    # Redis loses them (the retention passed, or Redis itself was lost): the archive answers.
    for task_id in ids:
        r.delete(keys.task_key(task_id), keys.task_history_key(task_id))
    task = alice.get(ids[0])
    assert (task.status, task.owner, task.result_json) == ("SUCCEEDED", "alice", "1")
    assert [e.event for e in task.history] == ["submitted", "leased", "succeeded"]
    assert pool.server.housekeeper.archive_finished() == 0  # nothing waits any more


def test_archive_goes_in_slices_and_leaves_the_rest_for_the_next_pass(settings: Settings) -> None:
    # A housekeeper of its own, not started: nothing else archives meanwhile.
    state = NodePoolState.open(settings)
    housekeeper = Housekeeper(state)
    count = 2 * tuning.ARCHIVE_SLICE + 17
    ids = state.tasks.submit(
        [
            NewTask("alice", "t", "FUNCTION", {}, timeout=10, retries=0, priority=0)
            for _ in range(count)
        ]
    )
    caps = WorkerCaps(cpu=2, memory_mb=4096, gpu=0, labels=())
    leases = state.tasks.lease("w1", caps, count, 30)
    outcomes = [Outcome(x.task_id, x.attempt, "w1", TaskState.SUCCEEDED, "7") for x in leases]
    assert state.tasks.complete(outcomes) == [""] * count
    first = tuning.ARCHIVE_SLICE + 5
    assert housekeeper.archive_finished(limit=first) == first
    assert state.redis.scard(keys.TASKS_ARCHIVE_PENDING) == count - first
    assert housekeeper.archive_finished() == count - first
    assert state.redis.scard(keys.TASKS_ARCHIVE_PENDING) == 0
    for task_id in ids:
        archived = state.users.archived_task(task_id)
        assert archived is not None and archived[0]["result_json"] == "7"
    state.tasks.close()
    state.users.close()


def test_a_backlog_is_archived_pass_after_pass_not_one_pass_a_second(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pass of about one slice: ten slices at one pass a second would take ten seconds.
    monkeypatch.setattr(tuning, "ARCHIVE_PASS_SECONDS", 0.001)
    state = pool.server.state
    count = 10 * tuning.ARCHIVE_SLICE
    new = NewTask("alice", "t", "FUNCTION", {}, timeout=10, retries=0, priority=0)
    state.tasks.submit([new] * count)
    caps = WorkerCaps(cpu=2, memory_mb=4096, gpu=0, labels=())
    leases = state.tasks.lease("w1", caps, count, 30)
    outcomes = [Outcome(x.task_id, x.attempt, "w1", TaskState.SUCCEEDED, "7") for x in leases]
    started = time.monotonic()
    assert state.tasks.complete(outcomes) == [""] * count
    assert wait_until(lambda: state.redis.scard(keys.TASKS_ARCHIVE_PENDING) == 0, timeout=15)
    assert time.monotonic() - started < 5
    assert state.users.archived_task(leases[-1].task_id) is not None


def test_admin_user_management_and_credits(pool: Pool) -> None:
    admin, alice = pool.user("root", admin=True), pool.user("alice")
    created = admin.create_user("dave", "dave-password", credits=5)
    assert created.username == "dave" and not created.disabled
    with pytest.raises(NodePoolError, match="needs an admin"):
        alice.create_user("eve", "eve-password")
    assert alice.transfer("dave", 30).credits == 70
    assert {u.username for u in admin.list_users()} == {"root", "alice", "dave"}
    admin.call(admin.users.DisableUser, pb.UsernameRequest(username="alice"))
    with pytest.raises(NodePoolError, match="disabled"):
        alice.list()


def test_a_user_disabled_by_another_process_is_refused_within_a_second(pool: Pool) -> None:
    alice = pool.user("alice")
    assert alice.list() == []
    # As `hivemind user disable alice` does: straight in users.db, not through the node pool.
    UserStore(layout(pool.settings.home).users_db).set_disabled("alice")
    started = time.monotonic()
    with pytest.raises(NodePoolError, match="disabled"):
        while time.monotonic() - started < 5:
            alice.list()
            time.sleep(0.05)
    assert time.monotonic() - started < tuning.USER_RECHECK + 0.5


def test_worker_reports_apart_to_a_node_pool_that_does_not_take_outcomes_in_a_lease(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker newer than its node pool: the node pool does not say that a lease takes
    outcomes (and would drop them), so the worker sends them with CompleteTasks, at once."""
    register, lease = WorkerService.Register, WorkerTaskService.LeaseTasks

    def older_register(
        self: WorkerService, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterReply:
        reply = register(self, request, context)
        reply.ClearField("lease_takes_results")
        return reply

    def older_lease(
        self: WorkerTaskService, request: pb.LeaseRequest, context: grpc.ServicerContext
    ) -> pb.LeaseReply:
        del request.results[:]
        return lease(self, request, context)

    monkeypatch.setattr(WorkerService, "Register", older_register)
    monkeypatch.setattr(WorkerTaskService, "LeaseTasks", older_lease)
    # Nor does it have lease streams: the generated base answers UNIMPLEMENTED.
    monkeypatch.setattr(
        WorkerTaskService, "LeaseStream", pb_grpc.WorkerTaskServiceServicer.LeaseStream
    )
    s = settings.replace(grpc_host="127.0.0.1")
    server = NodePoolServer(s)
    server.start()
    worker = Worker(
        s,
        WorkerOptions(
            node_id="w-new",
            token=issue_worker_token(s, "w-new"),
            allowed_modules=("hivemind.examples",),
            capacity=2,
        ),
    )
    try:
        alice = Pool(server, s.client_address, s).user("alice")
        worker.start()
        with caplog.at_level(logging.WARNING, logger="hivemind.worker"):
            # One at a time, quick calls: the case where a newer node pool would take them.
            for n in range(8):
                started = time.monotonic()
                [task] = alice.submit_and_wait([function_spec("hivemind.examples:add", [n, 1])], 10)
                assert task.status == "SUCCEEDED" and json.loads(task.result_json) == n + 1
                assert task.attempt == 1 and time.monotonic() - started < 2
        assert "refused" not in caplog.text
    finally:
        worker.shutdown(grace=1)
        server.stop(grace=1)
