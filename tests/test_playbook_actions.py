"""Playbooks on a real Redis: each shipped playbook for the cluster's state does its job,
changes nothing under --dry-run (every key compared), does nothing on a second run, and
writes its audit lines."""

from __future__ import annotations

import json
import time
from typing import Any

from hivemind import keys
from hivemind.config import Settings
from hivemind.taskstore import TaskStore
from recovery import RunOptions, StepStatus, load_playbook, parse_playbook, run_playbook
from recovery.audit import audit_log
from tests.test_doctor_cluster import BIG_WORKER, _stuck_task, client, register_worker, submit


def dump(settings: Settings) -> dict[str, Any]:
    """Every key of the test's database with its type and value."""
    r = client(settings)
    state: dict[str, Any] = {}
    for key in sorted(r.scan_iter()):
        kind = r.type(key)
        value: Any = {
            "hash": lambda k: r.hgetall(k),
            "list": lambda k: r.lrange(k, 0, -1),
            "set": lambda k: sorted(r.smembers(k)),
            "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            "string": lambda k: r.get(k),
        }[kind](key)
        state[key] = (kind, value)
    return state


def run(settings: Settings, name: str, dry_run: bool = False, **variables: str):  # type: ignore[no-untyped-def]
    return run_playbook(load_playbook(name), settings, RunOptions(dry_run, variables))


def test_requeue_stuck_plans_without_changing_then_requeues_then_does_nothing(
    settings: Settings,
) -> None:
    task_id, _attempt = _stuck_task(settings)
    before = dump(settings)
    plan = run(settings, "requeue-stuck", dry_run=True)
    assert [s.status for s in plan.steps] == [StepStatus.PLANNED]
    assert "tasks.stuck is fail" in plan.steps[0].precondition
    assert dump(settings) == before
    assert not audit_log(settings).exists()  # a dry run writes nothing, not even the audit

    done = run(settings, "requeue-stuck")
    assert [s.status for s in done.steps] == [StepStatus.CHANGED], done.steps
    assert client(settings).hget(keys.task_key(task_id), "status") == "QUEUED"
    (entry,) = [json.loads(line) for line in audit_log(settings).read_text().splitlines()]
    assert entry["playbook"] == "requeue-stuck" and entry["status"] == "changed"
    assert entry["before"]["tasks.stuck"] == "fail" and entry["after"]["tasks.stuck"] == "ok"
    assert entry["who"] and entry["host"] and entry["duration_s"] >= 0

    again = run(settings, "requeue-stuck")
    assert [s.status for s in again.steps] == [StepStatus.SKIPPED]
    assert "precondition not met" in again.steps[0].message


def test_reset_stale_workers_requeues_what_a_silent_worker_held(settings: Settings) -> None:
    r = client(settings)
    register_worker(settings, "w-silent")
    register_worker(settings, "w-alive")
    task_id = submit(settings)
    (lease,) = TaskStore(r).lease("w-silent", BIG_WORKER, 1, 3600)
    r.hset(keys.worker_key("w-silent"), "last_heartbeat", time.time() - 3600)

    plan = run(settings, "reset-stale-workers", dry_run=True)
    assert plan.steps[0].status is StepStatus.PLANNED and "w-silent" in plan.steps[0].message
    assert r.hget(keys.task_key(task_id), "status") == "RUNNING"

    done = run(settings, "reset-stale-workers")
    assert done.steps[0].status is StepStatus.CHANGED, done.steps[0]
    assert "w-silent lost, 1 task(s) requeued" in done.steps[0].message
    assert r.hget(keys.task_key(task_id), "status") == "QUEUED"
    assert r.hget(keys.worker_key("w-silent"), "status") == "lost"
    assert json.loads(r.hget(keys.WORKER_NODES, "w-silent"))["status"] == "lost"
    assert r.hget(keys.worker_key("w-alive"), "status") == "online"
    # The old lease is fenced: the silent worker's late result is refused.
    history = [json.loads(e) for e in r.lrange(keys.task_history_key(task_id), 0, -1)]
    assert history[-1]["event"] == "requeued" and history[-1]["attempt"] == lease.attempt

    again = run(settings, "reset-stale-workers")
    assert again.steps[0].status in (StepStatus.SKIPPED, StepStatus.OK)


def test_sync_data_mends_a_dangling_queue_entry_and_never_flushes(settings: Settings) -> None:
    r = client(settings)
    kept = submit(settings)
    r.rpush(keys.TASK_QUEUE, "ghost-task")
    done = run(settings, "sync-data")
    assert done.steps[0].status is StepStatus.CHANGED, done.steps[0]
    assert "ghost-task" not in r.lrange(keys.TASK_QUEUE, 0, -1)
    assert r.hget(keys.task_key(kept), "status") == "QUEUED"
    again = run(settings, "sync-data")
    assert again.steps[0].status is StepStatus.OK and "nothing to do" in again.steps[0].message


def test_redis_config_set_is_idempotent_and_dry_run_leaves_it(settings: Settings) -> None:
    r = client(settings)
    original = r.config_get("maxmemory-policy")["maxmemory-policy"]
    target = "volatile-lru" if original != "volatile-lru" else "noeviction"
    playbook = parse_playbook(
        "name: tune\ndescription: d\nsteps:\n"
        f"  - name: policy\n    redis: {{command: [CONFIG, SET, maxmemory-policy, {target}]}}\n",
        "tune.yaml",
    )
    try:
        plan = run_playbook(playbook, settings, RunOptions(dry_run=True))
        assert plan.steps[0].status is StepStatus.PLANNED
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == original
        first = run_playbook(playbook, settings, RunOptions())
        assert first.steps[0].status is StepStatus.CHANGED
        assert first.steps[0].before == {"maxmemory-policy": original}
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == target
        second = run_playbook(playbook, settings, RunOptions())
        assert second.steps[0].status is StepStatus.OK
        assert "already" in second.steps[0].message
    finally:
        r.config_set("maxmemory-policy", original)


def test_a_failed_step_stops_the_host_after_its_retries_and_says_which(settings: Settings) -> None:
    playbook = parse_playbook(
        "name: wait-bad\ndescription: d\nsteps:\n"
        "  - name: nothing listens\n    wait: {port: 1}\n    timeout: 0.3\n"
        "    retries: 2\n    delay: 0.1\n"
        "  - name: after\n    doctor: {checks: [tasks.timeout_config]}\n",
        "wait-bad.yaml",
    )
    result = run_playbook(playbook, settings, RunOptions())
    assert [s.status for s in result.steps] == [StepStatus.FAILED, StepStatus.NOT_RUN]
    assert result.steps[0].attempts == 3
    assert "not run: step 'nothing listens' failed" in result.steps[1].message
    assert result.failed


def test_a_redis_error_is_a_failed_step_not_a_crash(settings: Settings) -> None:
    dead = Settings(**{**vars(settings), "redis_url": "redis://127.0.0.1:1/0"})
    playbook = parse_playbook(
        "name: ping\ndescription: d\nsteps:\n  - name: ping\n    redis: {command: [PING]}\n",
        "ping.yaml",
    )
    result = run_playbook(playbook, dead, RunOptions())
    assert result.steps[0].status is StepStatus.FAILED
    assert "Redis PING" in result.steps[0].message
