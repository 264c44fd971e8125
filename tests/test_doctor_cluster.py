"""The doctor's cluster checks on a real Redis put into each bad state, and their fixes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from doctor import Context, Status, run_doctor
from doctor.fixes import apply_fixes, plan_fixes
from hivemind import keys
from hivemind.config import Settings
from hivemind.states import TaskState
from hivemind.supervisor import PidRecord, start_ticks, write_pidfile
from hivemind.taskstore import NewTask, Outcome, TaskStore, WorkerCaps
from hivemind.worker_records import worker_summary

BIG_WORKER = WorkerCaps(cpu=8, memory_mb=8192, gpu=0, labels=("linux",))


def client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def register_worker(
    settings: Settings,
    node_id: str,
    caps: WorkerCaps = BIG_WORKER,
    running: tuple[str, ...] = (),
    address: str = "ipv4:127.0.0.1:40000",
) -> None:
    """The heartbeat the node pool records for a worker (the same script)."""
    fields = {
        "cpu": caps.cpu,
        "memory_mb": caps.memory_mb,
        "gpu": caps.gpu,
        "labels": ",".join(caps.labels),
        "address": address,
        "hostname": node_id,
    }
    summary = worker_summary(caps, "online", len(running))
    TaskStore(client(settings)).heartbeat(
        node_id, fields, summary, running, settings.effective_lease_timeout
    )


def submit(settings: Settings, name: str = "job", **requirements: int) -> str:
    task = NewTask(
        owner="alice",
        name=name,
        kind="function",
        spec={"function": "hivemind.examples:add", "args": [1, 2]},
        timeout=settings.task_timeout,
        retries=2,
        priority=0,
        **requirements,
    )
    return TaskStore(client(settings)).submit([task])[0]


def doctor(settings: Settings, *only: str):  # type: ignore[no-untyped-def]
    return run_doctor(settings, only=only, timeout=3.0)


def test_a_stale_worker_heartbeat_warns_then_fails_while_it_holds_tasks(settings) -> None:
    register_worker(settings, "w-fresh")
    register_worker(settings, "w-stale")
    r = client(settings)
    r.hset(keys.worker_key("w-stale"), "last_heartbeat", time.time() - 3 * 0.5 * 1.5)
    finding = doctor(settings, "workers.heartbeat").result("workers.heartbeat").finding
    assert finding.status is Status.WARN
    assert "w-stale" in finding.summary and "w-fresh" not in finding.summary

    task_id = submit(settings)
    (lease,) = TaskStore(r).lease("w-stale", BIG_WORKER, 1, 30)
    r.hset(keys.worker_key("w-stale"), "last_heartbeat", time.time() - 3600)
    finding = doctor(settings, "workers.heartbeat").result("workers.heartbeat").finding
    assert finding.status is Status.FAIL
    assert "w-stale" in finding.summary and "1 task(s)" in finding.summary
    assert finding.evidence["age_s"]["w-stale"] >= 3600
    assert lease.task_id == task_id


def test_no_live_worker_with_queued_tasks_fails_and_names_the_fix(settings) -> None:
    submit(settings)
    finding = doctor(settings, "workers.count").result("workers.count").finding
    assert finding.status is Status.FAIL
    assert "1 task(s) are queued" in finding.summary
    assert "hivemind worker" in (finding.fix or "")


def test_a_queued_task_no_worker_can_run_names_what_the_closest_worker_lacks(settings) -> None:
    register_worker(settings, "w-small", WorkerCaps(cpu=2, memory_mb=4096, gpu=0, labels=()))
    register_worker(settings, "w-big")
    task_id = submit(settings, "huge", req_memory_mb=512 * 1024)
    finding = doctor(settings, "tasks.queue").result("tasks.queue").finding
    assert finding.status is Status.FAIL
    assert task_id in finding.summary
    assert f"memory_mb {512 * 1024} > 8192" in finding.summary  # w-big is the closest
    assert "w-big" in finding.summary


def _stuck_task(settings: Settings) -> tuple[str, int]:
    """A task leased to a worker that went silent a minute ago, well inside its timeout, with
    no reaper running."""
    r = client(settings)
    register_worker(settings, "w-1")
    task_id = submit(settings)
    (lease,) = TaskStore(r).lease("w-1", BIG_WORKER, 1, settings.effective_lease_timeout)
    minute_ago = time.time() - 60
    assert settings.task_timeout > 60
    r.hset(keys.task_key(task_id), mapping={"last_update": minute_ago, "start_time": minute_ago})
    r.zadd(keys.LEASES, {task_id: (minute_ago + settings.effective_lease_timeout) * 1000})
    return task_id, lease.attempt


def test_a_stuck_task_fails_and_fix_requeues_it_fencing_the_old_worker(settings) -> None:
    task_id, attempt = _stuck_task(settings)
    report = doctor(settings, "tasks.stuck")
    finding = report.result("tasks.stuck").finding
    assert finding.status is Status.FAIL
    assert task_id in finding.summary and "no update for" in finding.summary

    context = Context(settings, timeout=3.0)
    actions = plan_fixes(report, context)
    assert [a.check_id for a in actions] == ["tasks.stuck"]
    assert task_id in actions[0].description
    run = apply_fixes(report, actions, context)
    assert run.outcomes[0].applied, run.outcomes[0].message
    assert run.before["tasks.stuck"].status is Status.FAIL
    assert run.after["tasks.stuck"].status is Status.OK

    r = client(settings)
    assert r.hget(keys.task_key(task_id), "status") == "QUEUED"
    assert task_id in r.lrange(keys.TASK_QUEUE, 0, -1)
    history = [json.loads(e) for e in r.lrange(keys.task_history_key(task_id), 0, -1)]
    assert history[-1]["event"] == "requeued" and "doctor --fix" in history[-1]["detail"]
    # The silent worker's late write for its old attempt is refused.
    refusal = TaskStore(r).append_log(task_id, attempt, "w-1", "late line\n")
    assert refusal == "task is QUEUED"
    log = (Path(settings.home) / "doctor" / "actions.log").read_text().splitlines()
    entry = json.loads(log[-1])
    assert entry["check"] == "tasks.stuck" and entry["applied"] is True


def test_orphans_are_found_and_mended_through_the_task_store(settings) -> None:
    r = client(settings)
    ghost_task = submit(settings, "ghost")
    TaskStore(r).lease("ghost-worker", BIG_WORKER, 1, 60)  # never registered
    r.rpush(keys.TASK_QUEUE, "no-such-task")
    unqueued = submit(settings, "lost-in-queue")
    r.zrem(keys.owner_queue_key("alice"), unqueued)
    r.lrem(keys.TASK_QUEUE, 0, unqueued)

    report = doctor(settings, "tasks.orphaned")
    finding = report.result("tasks.orphaned").finding
    assert finding.status is Status.FAIL
    assert "3 dangling" in finding.summary
    assert ghost_task in finding.evidence["running_without_worker"]
    assert "no-such-task" in finding.evidence["queue_without_record"]
    assert unqueued in finding.evidence["queued_nowhere"]

    context = Context(settings, timeout=3.0)
    run = apply_fixes(report, plan_fixes(report, context), context)
    assert all(o.applied for o in run.outcomes), [o.message for o in run.outcomes]
    assert run.after["tasks.orphaned"].status is Status.OK
    queue = r.lrange(keys.TASK_QUEUE, 0, -1)
    assert "no-such-task" not in queue
    assert ghost_task in queue and unqueued in queue
    assert r.zscore(keys.owner_queue_key("alice"), unqueued) is not None


def test_timeout_settings_that_requeue_on_one_late_heartbeat_warn(settings) -> None:
    bad = settings.replace(heartbeat_interval=10.0, lease_timeout=12.0)
    finding = doctor(bad, "tasks.timeout_config").result("tasks.timeout_config").finding
    assert finding.status is Status.WARN
    assert "LEASE_TIMEOUT 12s < 2 × HEARTBEAT_INTERVAL 10s" in finding.summary
    ok = doctor(settings, "tasks.timeout_config").result("tasks.timeout_config")
    assert ok.status is Status.OK


def test_failures_in_the_last_hour_are_grouped_by_error(settings) -> None:
    r = client(settings)
    register_worker(settings, "w-1")
    store = TaskStore(r)
    ids = [submit(settings, f"t{i}") for i in range(6)]

    leases = store.lease("w-1", BIG_WORKER, 6, 60)
    outcomes = []
    for index, lease in enumerate(leases):
        failed = index < 4
        outcomes.append(
            Outcome(
                task_id=lease.task_id,
                attempt=lease.attempt,
                worker="w-1",
                status=TaskState.FAILED if failed else TaskState.SUCCEEDED,
                result_json="" if failed else "3",
                error_message="ZeroDivisionError: division by zero" if failed else "",
            )
        )
    store.complete(outcomes)
    finding = doctor(settings, "tasks.failed").result("tasks.failed").finding
    assert len(ids) == 6
    assert finding.status is Status.FAIL  # 4 of 6 > 50 %
    assert "4 of 6" in finding.summary and "ZeroDivisionError" in finding.summary
    assert finding.evidence["by_error"][0]["count"] == 4


def test_redis_down_fails_its_port_and_skips_what_needs_it_within_the_timeout(
    settings, free_port_factory
) -> None:
    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port_factory()}/0")
    began = time.monotonic()
    report = run_doctor(down, only=["ports.redis", "workers", "tasks"], timeout=2.0)
    assert time.monotonic() - began < 3.0
    assert report.result("ports.redis").status is Status.FAIL
    for check_id in ("workers.count", "tasks.stuck", "tasks.orphaned"):
        result = report.result(check_id)
        assert result.status is Status.SKIP, (check_id, result.finding)
        assert "see ports.redis" in result.finding.summary


def test_a_hung_redis_costs_one_timeout_not_one_per_check(settings) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        hung = settings.replace(redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        began = time.monotonic()
        report = run_doctor(hung, only=["ports", "workers", "tasks"], timeout=1.5)
        took = time.monotonic() - began
    assert took < 1.5 + 1.0, f"a hung Redis held the run for {took:.1f}s"
    assert report.result("ports.redis").status is Status.FAIL
    assert report.result("tasks.queue").status in (Status.SKIP, Status.ERROR)


def test_nodepool_on_loopback_warns_and_fails_once_a_remote_worker_is_registered(
    settings,
) -> None:
    local = settings.replace(grpc_host="127.0.0.1")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", local.grpc_port))
        listener.listen(1)
        finding = doctor(local, "ports.listen_address").result("ports.listen_address").finding
        assert finding.status is Status.WARN
        assert finding.evidence["listening"]["nodepool"] == ["127.0.0.1"]
        register_worker(local, "far-away", address="ipv4:10.20.30.40:51234")
        finding = doctor(local, "ports.listen_address").result("ports.listen_address").finding
    assert finding.status is Status.FAIL
    assert finding.evidence["remote_workers"] == ["far-away"]
    assert 'GRPC_HOST = "0.0.0.0"' in (finding.fix or "")


def test_a_stale_pid_file_warns_and_fix_removes_it_keeping_the_live_one(settings) -> None:
    run_dir = Path(settings.home) / "run"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        import psutil

        proc = psutil.Process(live.pid)
        write_pidfile(
            run_dir / "worker-local-1.pid",
            PidRecord(
                "worker", live.pid, tuple(proc.cmdline()), proc.create_time(), start_ticks(live.pid)
            ),
        )
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        write_pidfile(
            run_dir / "nodepool.pid",
            PidRecord("nodepool", dead.pid, ("python", "-m", "hivemind", "nodepool"), 1.0, 1),
        )
        report = doctor(settings, "process.services")
        finding = report.result("process.services").finding
        assert finding.status is Status.WARN
        assert "nodepool.pid" in finding.summary
        assert "worker-local-1" in finding.evidence["running"]

        context = Context(settings, timeout=3.0)
        actions = plan_fixes(report, context)
        assert [a.command for a in actions] == [f"rm {run_dir / 'nodepool.pid'}"]
        run = apply_fixes(report, actions, context)
        assert run.after["process.services"].status is Status.OK
        assert not (run_dir / "nodepool.pid").exists()
        assert (run_dir / "worker-local-1.pid").exists()
    finally:
        live.kill()
        live.wait()
