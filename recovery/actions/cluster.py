"""Cluster actions: run doctor checks; requeue stuck tasks; reset stale workers; reconcile
Redis with users.db and the data folder (the guide's sync_data.py, never with FLUSHALL).

Task state changes go through the task store (fenced by attempt), the same ones
`hivemind doctor --fix` makes, so a recovery and a fix never disagree.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import Any

import redis

from doctor import DEFAULT_CHECK_TIMEOUT, Context
from doctor.fixes import planners
from doctor.model import CheckResult, Report, Status
from doctor.registry import all_checks
from hivemind import keys, redis_client
from hivemind.taskstore import TaskStore
from recovery.actions import Outcome, Param, StepContext, action
from recovery.model import ActionFailed


@action(
    "doctor",
    "Run doctor checks (all when none are named); fail the step on a fail (or warn) finding",
    {
        "checks": Param(list, default=[]),
        "fail_on": Param(str, default="fail", choices=("fail", "warn")),
    },
    validate=lambda p: _known_checks(p.get("checks") or []),
)
def doctor_checks(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    report: Report = ctx.doctor(params["checks"])
    bad = {Status.FAIL} | ({Status.WARN} if params["fail_on"] == "warn" else set())
    failing = [r for r in report.results if r.status in bad]
    counts = {k: v for k, v in report.counts().items() if v}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    if ctx.dry_run:
        return Outcome(False, f"would verify; the doctor finds now: {summary}")
    if failing:
        names = "; ".join(f"{r.id}: {r.finding.summary}" for r in failing[:5])
        raise ActionFailed(f"doctor: {summary} — {names}")
    return Outcome(False, f"doctor: {summary}", after={"counts": counts})


def _known_checks(names: list[Any]) -> None:
    known = {spec.id for spec in all_checks()} | {spec.category for spec in all_checks()}
    unknown = [str(n) for n in names if str(n) not in known]
    if unknown:
        raise ValueError(f"unknown doctor check {', '.join(unknown)} (see `hivemind doctor list`)")


def apply_fixes(ctx: StepContext, check_ids: list[str], what: str) -> Outcome:
    """Plan the doctor's own fixes for ``check_ids`` and apply them (or say what they'd be)."""
    registered = {spec.id for spec in all_checks()}
    wanted = [c for c in check_ids if c in registered]
    context = Context(ctx.settings, timeout=min(ctx.timeout, DEFAULT_CHECK_TIMEOUT))
    from doctor import run_doctor

    report = run_doctor(ctx.settings, wanted, context=context)
    problems = [r for r in report.results if r.status in (Status.WARN, Status.FAIL)]
    before = {r.id: r.status.value for r in report.results}
    known = planners()
    actions = [a for r in problems if r.id in known for a in known[r.id](context, r.finding)]
    if not actions:
        return Outcome(False, f"nothing to do: no {what}", before, before)
    if ctx.dry_run:
        listed = "; ".join(a.description for a in actions[:5])
        return Outcome(True, f"would apply {len(actions)} fix(es): {listed}", before)
    done, refused = [], []
    for fix in actions:
        try:
            done.append(fix.apply())
        except Exception as exc:  # one refused fix is reported; the others still run
            refused.append(f"{fix.description}: {exc}")
    if refused:
        raise ActionFailed(f"{len(refused)} of {len(actions)} fix(es) failed: {refused[0]}")
    context.forget()
    after_report = run_doctor(ctx.settings, wanted, context=context)
    after = {r.id: r.status.value for r in after_report.results}
    return Outcome(True, "; ".join(done[:10]), before, after)


@action("requeue_stuck", "Requeue tasks stuck in RUNNING (fenced by attempt)")
def requeue_stuck(ctx: StepContext, _params: dict[str, Any]) -> Outcome:
    return apply_fixes(ctx, ["tasks.stuck"], "stuck task")


def stale_workers(client: redis.Redis, now: float, stale_after: float) -> dict[str, float]:
    """Workers that say ``online`` but have not heartbeat for ``stale_after`` s: id -> age."""
    found = {}
    for node_id in client.hkeys(keys.WORKER_NODES):
        status, beat = client.hmget(keys.worker_key(node_id), "status", "last_heartbeat")
        age = now - float(beat or 0)
        if status == "online" and age > stale_after:
            found[str(node_id)] = round(age, 1)
    return found


@action(
    "reset_stale_workers",
    "Mark workers silent past the lease timeout lost and requeue their tasks",
    {"stale_after": Param((int, float), doc="seconds; default: the lease timeout")},
)
def reset_stale_workers(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    stale_after = float(params.get("stale_after") or ctx.settings.effective_lease_timeout)
    client = redis_client.connect(ctx.settings, socket_timeout=ctx.timeout, decode_responses=True)
    try:
        now = time.time()
        stale = stale_workers(client, now, stale_after)
        before = {"stale_workers": stale}
        if not stale:
            return Outcome(False, "nothing to do: every online worker heartbeats", before, before)
        if ctx.dry_run:
            return Outcome(True, f"would reset {', '.join(stale)}", before)
        store = TaskStore(client)
        done = []
        for node_id in stale:
            requeued = store.reset_worker(
                node_id, now - stale_after, f"worker {node_id} reset: no heartbeat"
            )
            if requeued is not None:
                done.append(f"{node_id} lost, {requeued} task(s) requeued")
        after = {"stale_workers": stale_workers(client, time.time(), stale_after)}
    except redis.RedisError as exc:
        raise ActionFailed(f"Redis: {exc}") from None
    finally:
        client.close()
    if not done:
        return Outcome(False, "nothing to do: their heartbeats came back", before, after)
    return Outcome(True, "; ".join(done), before, after)


@action(
    "sync_data",
    "Reconcile Redis with users.db and the data folder (dangling references; never FLUSHALL)",
)
def sync_data(ctx: StepContext, _params: dict[str, Any]) -> Outcome:
    queue = apply_fixes(ctx, ["tasks.orphaned"], "dangling queue entry")
    blobs = _quarantine_orphan_blobs(ctx)
    changed = queue.changed or blobs.changed
    message = "; ".join(o.message for o in (queue, blobs) if o.changed) or (
        "nothing to do: Redis, users.db and the data folder agree"
    )
    return Outcome(
        changed, message, {**queue.before, **blobs.before}, {**queue.after, **blobs.after}
    )


#: Passes over data.consistency's evidence, which lists a sample of the orphans each time.
_MAX_PASSES = 50


def _quarantine_orphan_blobs(ctx: StepContext) -> Outcome:
    """Move blobs no task refers to into data/quarantine/ (kept, not deleted)."""
    if "data.consistency" not in {spec.id for spec in all_checks()}:
        return Outcome(False, "data.consistency is not available here")
    data = ctx.home.data.resolve()
    moved: list[str] = []
    before: dict[str, Any] = {}
    for _ in range(_MAX_PASSES):
        result = _one(ctx.doctor(["data.consistency"]))
        orphans = [str(ref) for ref in result.finding.evidence.get("orphan_blobs") or []]
        before = before or {"data.consistency": result.status.value, "orphan_blobs": orphans}
        fresh = [ref for ref in orphans if ref not in moved]
        if not fresh:
            break
        if ctx.dry_run:
            return Outcome(True, f"would move {len(fresh)}+ orphan blob(s) aside", before)
        for ref in fresh:
            _move_aside(data, ref)
            moved.append(ref)
    if not moved:
        return Outcome(False, "no orphan blob", before, before)
    after = {"data.consistency": _one(ctx.doctor(["data.consistency"])).status.value}
    return Outcome(
        True, f"moved {len(moved)} orphan blob(s) to {data / 'quarantine'}", before, after
    )


def _one(report: Report) -> CheckResult:
    return report.results[0]


def _move_aside(data: Path, ref: str) -> None:
    relative = PurePosixPath(ref)
    if relative.is_absolute() or ".." in relative.parts:
        raise ActionFailed(f"refusing the blob reference {ref!r}: not inside the data folder")
    source = data / relative
    target = data / "quarantine" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        source.rename(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ActionFailed(f"cannot move {source} aside: {exc.strerror}") from None
