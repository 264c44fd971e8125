"""One timeout rule: the node pool's reaper and the doctor's tasks.stuck agree on when a task
is overdue, so `doctor --fix` never requeues a task that is on its way to TIMEOUT."""

from __future__ import annotations

import json
import time

from doctor import Context, Status
from doctor.fixes import apply_fixes, plan_fixes
from hivemind import keys, tuning
from hivemind.config import Settings
from hivemind.taskstore import TaskStore
from hivemind.timeouts import TimeoutPhase, timeout_deadline, timeout_phase
from tests.test_doctor_cluster import BIG_WORKER, client, doctor, register_worker, submit


def test_the_phases_of_a_running_task_against_its_timeout() -> None:
    grace = tuning.TIMEOUT_GRACE
    assert timeout_phase(now=1050, started=1000, timeout=60) is TimeoutPhase.WITHIN
    assert timeout_phase(now=1061, started=1000, timeout=60) is TimeoutPhase.STOPPING
    assert timeout_phase(now=1060 + grace - 1, started=1000, timeout=60) is TimeoutPhase.STOPPING
    assert timeout_phase(now=1060 + grace, started=1000, timeout=60) is TimeoutPhase.OVERDUE
    # No start time or no timeout: nothing to be overdue against.
    assert timeout_phase(now=10**9, started=0, timeout=60) is TimeoutPhase.WITHIN
    assert timeout_phase(now=10**9, started=1000, timeout=0) is TimeoutPhase.WITHIN


def _leased(settings: Settings) -> tuple[str, float, float]:
    """A task leased through the task store: (id, start_time, timeout) as recorded."""
    r = client(settings)
    register_worker(settings, "w-1")
    task_id = submit(settings)
    TaskStore(r).lease("w-1", BIG_WORKER, 1, settings.effective_lease_timeout)
    record = r.hgetall(keys.task_key(task_id))
    return task_id, float(record["start_time"]), float(record["timeout"])


def _started_ago(settings: Settings, task_id: str, seconds: float, timeout: float) -> None:
    """Move a leased task's start back in time: its record, its lease and its filed deadline
    together, as if the lease had been taken ``seconds`` ago."""
    r = client(settings)
    started = time.time() - seconds
    r.hset(keys.task_key(task_id), mapping={"start_time": started, "last_update": started})
    r.zadd(keys.LEASES, {task_id: (time.time() + settings.effective_lease_timeout) * 1000})
    r.zadd(keys.DEADLINES, {task_id: timeout_deadline(started, timeout) * 1000})


def test_the_lease_files_the_deadline_the_shared_rule_computes(settings: Settings) -> None:
    task_id, started, timeout = _leased(settings)
    filed = client(settings).zscore(keys.DEADLINES, task_id)
    assert filed is not None
    assert abs(filed / 1000 - timeout_deadline(started, timeout)) < 0.002


def test_a_task_inside_the_grace_is_left_to_its_worker(settings: Settings) -> None:
    task_id, _started, timeout = _leased(settings)
    # Past its timeout by 10 s and silent all along: its worker should be stopping it.
    _started_ago(settings, task_id, timeout + 10, timeout)

    report = doctor(settings, "tasks.stuck")
    finding = report.result("tasks.stuck").finding
    assert finding.status is Status.OK, finding.summary
    assert "1 timing out" in finding.summary
    assert task_id in finding.evidence["timing_out"]
    assert plan_fixes(report, Context(settings, timeout=3.0)) == []
    # The node pool's reaper agrees: not yet.
    assert TaskStore(client(settings)).reap_timeouts() == []
    assert client(settings).hget(keys.task_key(task_id), "status") == "RUNNING"


def test_an_overdue_task_is_marked_timeout_by_the_fix_never_requeued(settings: Settings) -> None:
    task_id, _started, timeout = _leased(settings)
    _started_ago(settings, task_id, timeout + tuning.TIMEOUT_GRACE + 60, timeout)

    report = doctor(settings, "tasks.stuck")
    finding = report.result("tasks.stuck").finding
    assert finding.status is Status.FAIL
    assert task_id in finding.summary and "not marked TIMEOUT" in finding.summary
    assert "mark the overdue ones TIMEOUT" in finding.fix

    context = Context(settings, timeout=3.0)
    actions = plan_fixes(report, context)
    assert len(actions) == 1 and "TIMEOUT" in actions[0].description
    run = apply_fixes(report, actions, context)
    assert run.outcomes[0].applied, run.outcomes[0].message
    assert run.after["tasks.stuck"].status is Status.OK

    r = client(settings)
    record = r.hgetall(keys.task_key(task_id))
    assert record["status"] == "TIMEOUT"
    assert record["attempt"] == "1"  # not run again
    assert task_id not in r.lrange(keys.TASK_QUEUE, 0, -1)
    history = [json.loads(e) for e in r.lrange(keys.task_history_key(task_id), 0, -1)]
    assert "requeued" not in [e["event"] for e in history]
