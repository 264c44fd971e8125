"""The task state machine, on a real Redis: fencing, leases, scheduling order."""

from __future__ import annotations

import json

import pytest
import redis

from hivemind import keys, tuning
from hivemind.states import TaskState
from hivemind.taskstore import (
    Completion,
    LeaseAsk,
    LeaseRound,
    NewTask,
    Outcome,
    TaskStore,
    WorkerCaps,
)

SMALL = WorkerCaps(cpu=2, memory_mb=4096, gpu=0, labels=())


@pytest.fixture
def store(redis_url: str) -> TaskStore:
    return TaskStore(redis.Redis.from_url(redis_url, decode_responses=True))


def task(owner: str = "alice", priority: int = 0, retries: int = 1, **req: object) -> NewTask:
    return NewTask(
        owner=owner,
        name="t",
        kind="FUNCTION",
        spec={"function": "m:f"},
        timeout=10,
        retries=retries,
        priority=priority,
        **req,
    )  # type: ignore[arg-type]


def status(store: TaskStore, task_id: str) -> str:
    return store.redis.hget(keys.task_key(task_id), "status")


def test_submit_lease_complete_uses_the_guides_keys(store: TaskStore) -> None:
    [tid] = store.submit([task()])
    r = store.redis
    assert r.llen("task_queue") == 1 and status(store, tid) == "QUEUED"
    [lease] = store.lease("w1", SMALL, 5, 30)
    assert lease.attempt == 1 and r.llen("task_queue") == 0
    record = r.hgetall(f"task:{tid}")
    assert record["status"] == "RUNNING" and record["worker"] == "w1"
    assert {"start_time", "last_update", "progress", "owner", "attempt"} <= set(record)
    assert r.sismember(keys.worker_tasks_key("w1"), tid)
    assert store.complete([Outcome(tid, 1, "w1", TaskState.SUCCEEDED, "42")]) == [""]
    assert status(store, tid) == "SUCCEEDED"
    assert r.hget(f"task:{tid}", "result_json") == "42"
    assert not r.sismember(keys.worker_tasks_key("w1"), tid)
    events = [json.loads(e)["event"] for e in r.lrange(keys.task_history_key(tid), 0, -1)]
    assert events == ["submitted", "leased", "succeeded"]


def test_a_lease_round_says_when_the_queue_is_left_empty(store: TaskStore) -> None:
    assert store.lease_for(LeaseAsk("w1", SMALL, 1, 30)).queue_empty  # nothing was ever queued
    store.submit([task(), task()])
    first = store.lease_for(LeaseAsk("w1", SMALL, 1, 30))
    assert len(first.leases) == 1 and not first.queue_empty
    second = store.lease_for(LeaseAsk("w1", SMALL, 1, 30))
    assert len(second.leases) == 1 and second.queue_empty
    # A task that fits no worker is still queued work: the queue is not empty.
    store.submit([task(req_gpu=1)])
    assert store.lease_for(LeaseAsk("w1", SMALL, 1, 30)) == LeaseRound([], queue_empty=False)


def test_submit_and_lease_queues_then_leases_by_the_usual_rules(store: TaskStore) -> None:
    [older] = store.submit([task(owner="bob")])
    ids, round_ = store.submit_and_lease(
        [task(), task()], LeaseAsk("w1", SMALL, max_tasks=2, lease_seconds=30)
    )
    # Round-robin between owners still holds: one task of each, not alice's two.
    assert sorted(lease.owner for lease in round_.leases) == ["alice", "bob"]
    assert {lease.task_id for lease in round_.leases} == {older, ids[0]}
    assert not round_.queue_empty and status(store, ids[1]) == "QUEUED"
    assert [status(store, i) for i in (older, ids[0])] == ["RUNNING", "RUNNING"]
    history = store.redis.lrange(keys.task_history_key(ids[0]), 0, -1)
    assert [json.loads(e)["event"] for e in history] == ["submitted", "leased"]
    # A task that does not fit the asking worker stays queued for another one.
    [gpu_task], round_ = store.submit_and_lease(
        [task(req_gpu=1)], LeaseAsk("w2", SMALL, max_tasks=5, lease_seconds=30)
    )
    assert [lease.task_id for lease in round_.leases] == [ids[1]]
    assert status(store, gpu_task) == "QUEUED" and not round_.queue_empty


def test_completing_hands_back_the_finished_hash_or_why_not(store: TaskStore) -> None:
    [tid] = store.submit([task()])
    store.lease("w1", SMALL, 1, 30)
    done = Outcome(tid, 1, "w1", TaskState.SUCCEEDED, "42")
    [accepted, refused] = store.complete_records([done, done])
    assert accepted.refused == "" and accepted.record == store.redis.hgetall(f"task:{tid}")
    assert accepted.record["status"] == "SUCCEEDED" and accepted.record["result_json"] == "42"
    assert refused == Completion("task is SUCCEEDED", None)


def test_scripts_survive_a_redis_that_forgot_them(store: TaskStore) -> None:
    [tid] = store.submit([task()])
    store.redis.script_flush()  # as after a Redis restart without persistence of scripts
    [lease] = store.lease("w1", SMALL, 1, 30)
    assert lease.task_id == tid and status(store, tid) == "RUNNING"


def test_a_script_error_is_redis_error_and_the_connection_stays_usable(store: TaskStore) -> None:
    store.redis.set(keys.QUEUE_OWNERS, "not a sorted set")  # a damaged key
    with pytest.raises(redis.ResponseError):
        store.lease("w1", SMALL, 1, 30)
    store.redis.delete(keys.QUEUE_OWNERS)
    assert store.redis.ping() and store.lease("w1", SMALL, 1, 30) == []


def test_exactly_one_terminal_result(store: TaskStore) -> None:
    [tid] = store.submit([task()])
    store.lease("w1", SMALL, 1, 30)
    assert store.complete([Outcome(tid, 1, "w1", TaskState.SUCCEEDED, "1")]) == [""]
    [again] = store.complete([Outcome(tid, 1, "w1", TaskState.FAILED, "", "late")])
    assert again == "task is SUCCEEDED"
    assert status(store, tid) == "SUCCEEDED"


def test_late_result_of_superseded_attempt_is_refused(store: TaskStore) -> None:
    [tid] = store.submit([task(retries=2)])
    store.lease("w1", SMALL, 1, 30)
    store.redis.zadd(keys.LEASES, {tid: 0})  # w1's lease expires
    assert store.reap_expired() == [(tid, "requeued", "w1")]
    [lease] = store.lease("w2", SMALL, 1, 30)
    assert lease.attempt == 2
    [late] = store.complete([Outcome(tid, 1, "w1", TaskState.SUCCEEDED, "stale")])
    assert "not the current attempt" in late
    assert store.report_progress(tid, 1, "w1", 0.5, "", 30) != ""
    assert store.complete([Outcome(tid, 2, "w2", TaskState.SUCCEEDED, "fresh")]) == [""]
    assert store.redis.hget(f"task:{tid}", "result_json") == "fresh"


def test_worker_cannot_complete_another_workers_task(store: TaskStore) -> None:
    [tid] = store.submit([task()])
    store.lease("w1", SMALL, 1, 30)
    [why] = store.complete([Outcome(tid, 1, "intruder", TaskState.SUCCEEDED, "x")])
    assert why == "task is leased to w1"


def test_reaper_fails_task_after_retries_naming_the_lost_worker(store: TaskStore) -> None:
    [tid] = store.submit([task(retries=0)])
    store.lease("w-lost", SMALL, 1, 30)
    store.redis.zadd(keys.LEASES, {tid: 0})
    assert store.reap_expired() == [(tid, "failed", "w-lost")]
    record = store.redis.hgetall(f"task:{tid}")
    assert record["status"] == "FAILED"
    assert "worker w-lost was lost" in record["error_message"]


def test_heartbeat_renews_reported_leases_and_names_foreign_ones(store: TaskStore) -> None:
    [tid] = store.submit([task()])
    store.lease("w1", SMALL, 1, 1)
    before = store.redis.zscore(keys.LEASES, tid)
    stop = store.heartbeat("w1", {"cpu": 2}, {"status": "online"}, [tid, "unknown"], 60)
    assert stop == ["unknown"]
    assert store.redis.zscore(keys.LEASES, tid) > before + 50_000
    assert store.redis.hget("worker:w1", "status") == "online"
    assert json.loads(store.redis.hget("worker_nodes", "w1"))["status"] == "online"


def test_priority_then_round_robin_between_users(store: TaskStore) -> None:
    store.submit([task("flood") for _ in range(50)])
    store.submit([task("quiet") for _ in range(2)])
    store.submit([task("vip", priority=5)])
    owners = [
        store.redis.hget(f"task:{x.task_id}", "owner") for x in store.lease("w", SMALL, 5, 30)
    ]
    assert owners == ["vip", "flood", "quiet", "flood", "quiet"]


def test_requirements_are_matched(store: TaskStore) -> None:
    [big] = store.submit([task(req_memory_mb=512 * 1024)])
    [gpu] = store.submit([task(req_gpu=1, req_labels=("cuda",))])
    [plain] = store.submit([task()])
    leased = [x.task_id for x in store.lease("small", SMALL, 10, 30)]
    assert leased == [plain]
    gpu_box = WorkerCaps(cpu=8, memory_mb=8192, gpu=1, labels=("cuda", "ssd"))
    assert [x.task_id for x in store.lease("gpu", gpu_box, 10, 30)] == [gpu]
    assert status(store, big) == "QUEUED"
    assert store.mark_unschedulable(big, "needs more memory")
    assert store.redis.hget(f"task:{big}", "unschedulable_reason") == "needs more memory"


def test_cancel_queued_and_running(store: TaskStore) -> None:
    queued, running = store.submit([task(), task()])
    store.redis.zadd(keys.owner_queue_key("alice"), {queued: 10**18})  # keep it last
    [lease] = store.lease("w1", SMALL, 1, 30)
    assert lease.task_id == running
    assert store.cancel(queued) == (True, "CANCELLED")
    assert store.redis.llen("task_queue") == 0
    assert store.cancel(running) == (True, "RUNNING")
    assert store.heartbeat("w1", {}, {}, [running], 30) == [running]
    assert store.complete([Outcome(running, 1, "w1", TaskState.CANCELLED, "", "cancelled")]) == [""]
    assert store.cancel(running) == (False, "task is already CANCELLED")


def test_release_requeues_without_using_a_retry(store: TaskStore) -> None:
    [tid] = store.submit([task(retries=0)])
    store.lease("w1", SMALL, 1, 30)
    assert store.release([(tid, 1, "w1")]) == [""]
    assert status(store, tid) == "QUEUED"
    [lease] = store.lease("w2", SMALL, 1, 30)
    assert lease.attempt == 2


def test_node_pool_times_out_a_task_whose_worker_never_reports(store: TaskStore) -> None:
    [tid] = store.submit([task()])
    store.lease("w-hung", SMALL, 1, 30)
    deadline = store.redis.zscore(keys.DEADLINES, tid)
    started = float(store.redis.hget(f"task:{tid}", "start_time"))
    # timeout 10 s plus TIMEOUT_GRACE after the lease
    assert deadline == pytest.approx((started + 10 + tuning.TIMEOUT_GRACE) * 1000, abs=50)
    assert store.reap_timeouts() == []
    store.redis.zadd(keys.DEADLINES, {tid: 0})  # time passes
    assert store.reap_timeouts() == [(tid, "w-hung")]
    record = store.redis.hgetall(f"task:{tid}")
    assert record["status"] == "TIMEOUT"
    assert "worker w-hung did not stop it" in record["error_message"]
    [late] = store.complete([Outcome(tid, 1, "w-hung", TaskState.SUCCEEDED, "1")])
    assert late == "task is TIMEOUT"


def test_deadline_goes_with_the_attempt(store: TaskStore) -> None:
    [tid] = store.submit([task(retries=1)])
    store.lease("w1", SMALL, 1, 30)
    store.redis.zadd(keys.LEASES, {tid: 0})
    store.reap_expired()  # requeued: no deadline while it waits
    assert store.redis.zscore(keys.DEADLINES, tid) is None
    store.lease("w2", SMALL, 1, 30)
    store.complete([Outcome(tid, 2, "w2", TaskState.SUCCEEDED, "1")])
    assert store.redis.zscore(keys.DEADLINES, tid) is None


def test_tasks_finished_in_one_call_are_all_counted(store: TaskStore) -> None:
    store.submit([task() for _ in range(3)])
    leases = store.lease("w1", SMALL, 3, 30)
    outcomes = [
        Outcome(lease.task_id, 1, "w1", status)
        for lease, status in zip(
            leases, [TaskState.SUCCEEDED, TaskState.SUCCEEDED, TaskState.FAILED], strict=True
        )
    ]
    assert store.complete(outcomes) == ["", "", ""]
    r = store.redis
    assert r.hgetall(keys.STATS_FINISHED) == {"SUCCEEDED": "2", "FAILED": "1"}
    [minute] = r.keys(keys.STATS_MINUTE_PREFIX + "*")
    assert r.hgetall(minute) == {"SUCCEEDED": "2", "FAILED": "1"}
    assert 0 < r.ttl(minute) <= tuning.STATS_MINUTE_TTL
