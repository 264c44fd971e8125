"""Tasks: is the queue moving, are tasks failing, stuck or orphaned, are the timeouts sane?"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from doctor.cluster import (
    RunningView,
    all_task_statuses,
    field_float,
    live_workers,
    queue,
    recent_tasks,
    requirements,
    running,
    workers,
)
from doctor.context import Context
from doctor.fixes import Action, fixer
from doctor.model import Finding
from doctor.registry import check
from hivemind import tuning
from hivemind.states import TaskState, is_terminal
from hivemind.taskstore import TaskStore
from hivemind.timeouts import TimeoutPhase, timeout_deadline, timeout_phase
from hivemind.worker_records import unschedulable_reason

#: A queued task older than this is a warning.
QUEUE_WAIT_WARN = 300.0
#: Failures are counted over this window.
FAILURE_WINDOW = 3600.0
FAILURE_RATE_FAIL = 0.5
FAILURE_RATE_MIN_TASKS = 5
#: Orphan candidates are read again after this long, so a task caught mid-transition (leased
#: between two reads) is not reported.
RECHECK_DELAY = 0.2
#: Task ids listed in evidence, at most.
SHOWN = 10


@check(
    "tasks.queue",
    title="Queued tasks can be run",
    guide="2 任務執行緩慢: redis-cli llen task_queue",
)
def task_queue(ctx: Context) -> Finding:
    view = queue(ctx)
    now = ctx.now()
    if not view.queued_ids:
        return Finding.ok("the queue is empty", length=0)
    oldest_id = next((i for i in view.queued_ids if i in view.records), view.queued_ids[0])
    oldest = view.records.get(oldest_id, {})
    wait = round(now - field_float(oldest.get("created_at")), 1) if oldest else None
    live = {row.node_id: row.caps for row in live_workers(ctx)}
    evidence: dict[str, Any] = {
        "length": len(view.queued_ids),
        "oldest": oldest_id,
        "oldest_wait_s": wait,
        "live_workers": len(live),
    }
    unrunnable = {}
    for task_id, record in view.records.items():
        needs = requirements(record)
        if not (needs["cpu"] or needs["memory_mb"] or needs["gpu"] or needs["labels"]):
            continue
        reason = unschedulable_reason(needs, live) if live else ""
        if reason:
            unrunnable[task_id] = reason
    if unrunnable:
        first_id, first_reason = next(iter(unrunnable.items()))
        evidence["unrunnable"] = dict(list(unrunnable.items())[:SHOWN])
        return Finding.fail(
            f"{len(unrunnable)} queued task(s) no live worker can ever run; {first_id}: "
            f"{first_reason}",
            "start a worker that meets the requirement, or cancel the task: "
            f"hivemind task cancel {first_id}",
            **evidence,
        )
    if wait is not None and wait > QUEUE_WAIT_WARN:
        return Finding.warn(
            f"{len(view.queued_ids)} queued; the oldest ({oldest_id}) has waited {wait:g}s",
            "add workers or raise MAX_CONCURRENT_TASKS (see workers.count)",
            **evidence,
        )
    return Finding.ok(f"{len(view.queued_ids)} queued; the oldest has waited {wait:g}s", **evidence)


@check(
    "tasks.failed",
    title="Few tasks fail",
    guide="3 任務執行失敗: hget task:ID status / error_message",
)
def failed_tasks(ctx: Context) -> Finding:
    now = ctx.now()
    # A task that failed within the hour may have been created up to its timeout earlier.
    records = recent_tasks(ctx, now - FAILURE_WINDOW - ctx.settings.task_timeout)
    finished = {
        task_id: r
        for task_id, r in records.items()
        if is_terminal(r["status"]) and field_float(r["finished_at"]) >= now - FAILURE_WINDOW
    }
    failed = {
        t: r for t, r in finished.items() if r["status"] in (TaskState.FAILED, TaskState.TIMEOUT)
    }
    evidence: dict[str, Any] = {"finished_last_hour": len(finished), "failed": len(failed)}
    if not failed:
        return Finding.ok(
            f"no failures among {len(finished)} task(s) finished in the hour", **evidence
        )
    groups = Counter(_first_line(r["error_message"]) or r["status"] for r in failed.values())
    examples = {}
    for task_id, r in failed.items():
        examples.setdefault(_first_line(r["error_message"]) or r["status"], task_id)
    evidence["by_error"] = [
        {"error": error, "count": count, "example": examples[error]}
        for error, count in groups.most_common(5)
    ]
    rate = len(failed) / len(finished)
    top, count = groups.most_common(1)[0]
    summary = (
        f"{len(failed)} of {len(finished)} task(s) failed in the last hour; "
        f"most often ({count}×): {top}"
    )
    fix = (
        f"read a failed task's log: hivemind logs {examples[top]} (worker/logs/task_execution.log)"
    )
    if rate > FAILURE_RATE_FAIL and len(finished) >= FAILURE_RATE_MIN_TASKS:
        return Finding.fail(summary, fix, failure_rate=round(rate, 3), **evidence)
    return Finding.warn(summary, fix, failure_rate=round(rate, 3), **evidence)


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:200] if (text or "").strip() else ""


#: A task past its deadline by more than this is one the node pool's reaper has missed (it
#: runs every REAPER_INTERVAL): closer than that, the reaper may simply not have come round.
REAPER_SLACK = 3 * tuning.REAPER_INTERVAL


@dataclass(frozen=True)
class StuckTasks:
    """RUNNING tasks that need a hand, each id -> why, split by what mends them."""

    #: No sign of life (log, progress, lease renewal) for two heartbeat intervals, while still
    #: inside its timeout: requeue it, fencing the silent attempt.
    silent: dict[str, str] = field(default_factory=dict)
    #: Past its timeout and TIMEOUT_GRACE, and still RUNNING: the node pool's reaper missed it.
    #: Mark it TIMEOUT as the reaper would; running it again would not help.
    overdue: dict[str, str] = field(default_factory=dict)
    #: Past its timeout but inside the grace: its worker is stopping it. Left alone.
    stopping: dict[str, str] = field(default_factory=dict)

    def found(self) -> dict[str, str]:
        return {**self.overdue, **self.silent}


def stuck_tasks(ctx: Context, view: RunningView) -> StuckTasks:
    """Sort the RUNNING tasks by the node pool's own timeout rule (hivemind.timeouts), so that
    no fix requeues a task the node pool is about to mark TIMEOUT."""
    now = ctx.now()
    silent_after = 2 * ctx.settings.heartbeat_interval
    lease = ctx.settings.effective_lease_timeout
    stuck = StuckTasks()
    for task_id, record in view.records.items():
        if record["status"] != TaskState.RUNNING:
            continue
        started = field_float(record["start_time"])
        timeout = field_float(record["timeout"]) or ctx.settings.task_timeout
        renewed = view.leases.get(task_id, 0.0) - lease if task_id in view.leases else 0.0
        alive_at = max(field_float(record["last_update"]), renewed, started)
        worker = record["worker"] or "?"
        phase = timeout_phase(now, started, timeout)
        if phase is TimeoutPhase.OVERDUE:
            late = now - timeout_deadline(started, timeout)
            if late > REAPER_SLACK:
                stuck.overdue[task_id] = (
                    f"running {now - started:.0f}s, past its {timeout:g}s timeout and the "
                    f"{tuning.TIMEOUT_GRACE:g}s grace, yet not marked TIMEOUT (worker {worker}; "
                    "is the node pool running?)"
                )
            else:
                stuck.stopping[task_id] = f"past its deadline {late:.1f}s; the reaper is due"
        elif phase is TimeoutPhase.STOPPING:
            stuck.stopping[task_id] = (
                f"past its {timeout:g}s timeout by {now - started - timeout:.0f}s; worker "
                f"{worker} is stopping it, else the node pool marks it TIMEOUT "
                f"{tuning.TIMEOUT_GRACE:g}s after the timeout"
            )
        elif now - alive_at > silent_after:
            stuck.silent[task_id] = (
                f"no update for {now - alive_at:.0f}s (> 2 × {ctx.settings.heartbeat_interval:g}s "
                f"heartbeat interval; worker {worker})"
            )
    return stuck


@check(
    "tasks.stuck",
    title="No task is stuck in RUNNING",
    guide="3 任務超時: start_time / last_update",
    fixable=True,
)
def stuck(ctx: Context) -> Finding:
    view = running(ctx)
    sorted_tasks = stuck_tasks(ctx, view)
    found = sorted_tasks.found()
    evidence = {
        "running": len(view.records),
        "stuck": dict(list(found.items())[:SHOWN]),
        "timing_out": dict(list(sorted_tasks.stopping.items())[:SHOWN]),
    }
    if found:
        first_id, why = next(iter(found.items()))
        fixes = []
        if sorted_tasks.silent:
            fixes.append("requeue the silent ones")
        if sorted_tasks.overdue:
            fixes.append("mark the overdue ones TIMEOUT, as the node pool's reaper would")
        return Finding.fail(
            f"{len(found)} RUNNING task(s) are stuck; {first_id}: {why}",
            f"{' and '.join(fixes)}: hivemind doctor --fix --only tasks.stuck",
            **evidence,
        )
    timing_out = f", {len(sorted_tasks.stopping)} timing out" if sorted_tasks.stopping else ""
    return Finding.ok(f"{len(view.records)} running task(s), none stuck{timing_out}", **evidence)


@fixer("tasks.stuck")
def mend_stuck(ctx: Context, _finding: Finding) -> list[Action]:
    found = stuck_tasks(ctx, running(ctx))
    actions = [_requeue_action(ctx, "tasks.stuck", t, why) for t, why in found.silent.items()]
    if found.overdue:
        actions.append(_timeout_action(ctx, sorted(found.overdue)))
    return actions


def _timeout_action(ctx: Context, task_ids: list[str]) -> Action:
    def apply() -> str:
        # The node pool's own reaper script: it marks TIMEOUT only what is RUNNING past its
        # filed deadline, so a task that finished meanwhile is left as it is.
        reaped = [task_id for task_id, _worker in TaskStore(ctx.redis()).reap_timeouts()]
        if not reaped:
            raise RuntimeError("none was past its filed deadline any more")
        return f"marked TIMEOUT: {', '.join(reaped[:SHOWN])}"

    shown = ", ".join(task_ids[:SHOWN])
    return Action(
        "tasks.stuck",
        f"mark {len(task_ids)} overdue task(s) TIMEOUT ({shown})",
        "run the node pool's timeout reaper once through the task store",
        apply,
        touches=("tasks.stuck", "tasks.orphaned", "tasks.queue"),
    )


def _requeue_action(ctx: Context, check_id: str, task_id: str, why: str) -> Action:
    record = running(ctx).records[task_id]
    attempt, worker = int(field_float(record["attempt"])), record["worker"]

    def apply() -> str:
        refused = TaskStore(ctx.redis()).release(
            [(task_id, attempt, worker)],
            event="requeued",
            detail=f"requeued by hivemind doctor --fix: {why}",
        )[0]
        if refused:
            raise RuntimeError(f"left alone: {refused}")
        return f"{task_id} is QUEUED again; attempt {attempt} of {worker or '?'} is fenced off"

    return Action(
        check_id,
        f"requeue {task_id} ({why})",
        f"requeue task {task_id} attempt {attempt} through the task store (fences the worker)",
        apply,
        touches=("tasks.stuck", "tasks.orphaned", "tasks.queue"),
    )


def orphans(ctx: Context) -> dict[str, dict[str, str]]:
    """Each kind of dangling entry -> {task_id: why}."""
    view = running(ctx)
    rows = {row.node_id: row for row in workers(ctx)}
    now, lease = ctx.now(), ctx.settings.effective_lease_timeout
    lost_worker: dict[str, str] = {}
    for task_id, record in view.records.items():
        if record["status"] != TaskState.RUNNING:
            continue
        owner = rows.get(record["worker"])
        if owner is None:
            lost_worker[task_id] = f"its worker {record['worker'] or '(none)'} is not registered"
        elif not owner.live(now, lease):
            lost_worker[task_id] = f"its worker {owner.node_id} is {owner.status}, not live"
        elif task_id not in owner.tasks:
            lost_worker[task_id] = f"its worker {owner.node_id} does not list it"
    view_queue = queue(ctx)
    no_record = {
        task_id: "queue entry with no task record"
        for task_id in view_queue.queued_ids
        if task_id not in view_queue.records
    }
    in_queue = set(view_queue.queued_ids)
    unqueued = {
        task_id: "QUEUED but in no queue"
        for task_id, status in all_task_statuses(ctx).items()
        if status == TaskState.QUEUED and task_id not in in_queue
    }
    return {
        "running_without_worker": lost_worker,
        "queue_without_record": no_record,
        "queued_nowhere": unqueued,
    }


def _confirmed_orphans(ctx: Context) -> dict[str, dict[str, str]]:
    """Orphans seen twice, RECHECK_DELAY apart: a task caught mid-lease is not one."""
    first = orphans(ctx)
    if not any(first.values()):
        return first
    time.sleep(RECHECK_DELAY)
    ctx.forget("cluster.workers", "cluster.running", "cluster.queue", "cluster.statuses")
    second = orphans(ctx)
    return {kind: {t: w for t, w in second[kind].items() if t in first[kind]} for kind in first}


@check(
    "tasks.orphaned",
    title="No dangling task or queue entry",
    guide="5 數據不一致",
    fixable=True,
)
def orphaned(ctx: Context) -> Finding:
    found = _confirmed_orphans(ctx)
    total = sum(len(items) for items in found.values())
    evidence = {kind: dict(list(items.items())[:SHOWN]) for kind, items in found.items()}
    if total:
        items = next(v for v in found.values() if v)
        task_id, why = next(iter(items.items()))
        return Finding.fail(
            f"{total} dangling task entr{'y' if total == 1 else 'ies'}; {task_id}: {why}",
            "requeue or drop them: hivemind doctor --fix --only tasks.orphaned",
            **evidence,
        )
    return Finding.ok(
        "every RUNNING task has a live worker, every queue entry a record", **evidence
    )


@fixer("tasks.orphaned")
def mend_orphans(ctx: Context, _finding: Finding) -> list[Action]:
    found = _confirmed_orphans(ctx)
    actions = [
        _requeue_action(ctx, "tasks.orphaned", task_id, why)
        for task_id, why in found["running_without_worker"].items()
    ]
    for kind in ("queue_without_record", "queued_nowhere"):
        for task_id, why in found[kind].items():
            actions.append(_repair_action(ctx, task_id, why))
    return actions


def _repair_action(ctx: Context, task_id: str, why: str) -> Action:
    def apply() -> str:
        outcome = TaskStore(ctx.redis()).repair_queue_entry(task_id)
        return {
            "dropped": f"dropped the queue entry of {task_id} (no task record)",
            "requeued": f"{task_id} is in its queue again",
        }.get(outcome, f"{task_id} needed nothing by the time the fix ran")

    verb = "drop the queue entry of" if "no task record" in why else "queue again"
    return Action(
        "tasks.orphaned",
        f"{verb} {task_id} ({why})",
        f"repair the queue entries of {task_id} through the task store",
        apply,
        touches=("tasks.orphaned", "tasks.queue"),
    )


@check(
    "tasks.timeout_config",
    title="Timeouts are consistent",
    guide="3 任務超時: TASK_TIMEOUT = 600, HEARTBEAT_INTERVAL = 30",
)
def timeout_config(ctx: Context) -> Finding:
    s = ctx.settings
    lease = s.effective_lease_timeout
    evidence = {
        "TASK_TIMEOUT": s.task_timeout,
        "HEARTBEAT_INTERVAL": s.heartbeat_interval,
        "LEASE_TIMEOUT": lease,
        "MAX_TASK_DATA_SIZE": s.max_task_data_size,
        "TIMEOUT_GRACE": tuning.TIMEOUT_GRACE,
    }
    problems = []
    if s.task_timeout <= 0:
        problems.append("TASK_TIMEOUT is unset: a hung task runs forever")
    if s.heartbeat_interval <= 0:
        problems.append("HEARTBEAT_INTERVAL is unset")
    elif lease < 2 * s.heartbeat_interval:
        problems.append(
            f"LEASE_TIMEOUT {lease:g}s < 2 × HEARTBEAT_INTERVAL {s.heartbeat_interval:g}s: "
            "one late heartbeat requeues running tasks"
        )
    if s.max_task_data_size <= 0:
        problems.append("MAX_TASK_DATA_SIZE is unset")
    if problems:
        return Finding.warn(
            "; ".join(problems),
            f"set LEASE_TIMEOUT ≥ {2 * max(s.heartbeat_interval, 1):g} and TASK_TIMEOUT > 0 in "
            "hivemind.toml",
            **evidence,
        )
    return Finding.ok(
        f"TASK_TIMEOUT {s.task_timeout:g}s, heartbeat {s.heartbeat_interval:g}s, lease {lease:g}s",
        **evidence,
    )
