"""Are there workers, and are they alive? (the guide's `redis-cli hgetall worker_nodes`)"""

from __future__ import annotations

from doctor.cluster import WorkerRow, live_workers, queue, workers
from doctor.context import Context
from doctor.model import Finding
from doctor.registry import check


@check(
    "workers.count",
    title="Live workers are registered",
    guide="2 任務執行緩慢: redis-cli hgetall worker_nodes",
)
def worker_count(ctx: Context) -> Finding:
    registered = workers(ctx)
    live = live_workers(ctx)
    queued = len(queue(ctx).queued_ids)
    evidence = {
        "registered": len(registered),
        "live": len(live),
        "queued_tasks": queued,
        "by_status": _count_by_status([row.status for row in registered]),
    }
    fix = "start a worker: hivemind worker (or hivemind up --workers N on this host)"
    if not live and queued:
        return Finding.fail(
            f"{queued} task(s) are queued and no live worker can run them", fix, **evidence
        )
    if not live:
        return Finding.warn("no live worker is registered", fix, **evidence)
    live_ids = {row.node_id for row in live}
    holding = [row for row in registered if row.node_id not in live_ids and row.tasks]
    if holding:
        names = "; ".join(f"{row.node_id} ({row.status}) holds {_tasks(row)}" for row in holding)
        return Finding.warn(
            f"{len(live)} live of {len(registered)} registered worker(s), and {names}: "
            "those tasks wait until their leases expire",
            "see workers.heartbeat; a worker that is stopped (kill -STOP) or hung needs a "
            "restart on its host: hivemind worker-stop NODE, then hivemind worker-start",
            **evidence,
        )
    return Finding.ok(f"{len(live)} live of {len(registered)} registered worker(s)", **evidence)


def _tasks(row: WorkerRow, shown: int = 3) -> str:
    """``task(s) a, b and 2 more``: the tasks a worker holds, by id."""
    ids = sorted(row.tasks)
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{len(ids)} task(s) {', '.join(ids[:shown])}{more}"


def _count_by_status(statuses: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


@check(
    "workers.heartbeat",
    title="Online workers, and those holding tasks, heartbeat on time",
    guide="3 任務超時: hget worker:ID last_heartbeat",
)
def worker_heartbeat(ctx: Context) -> Finding:
    now = ctx.now()
    interval = ctx.settings.heartbeat_interval
    lease = ctx.settings.effective_lease_timeout
    # Online workers, and any that still hold tasks: one the node pool has marked lost (a
    # frozen process, say) keeps its tasks until their leases expire.
    watched = [row for row in workers(ctx) if row.status == "online" or row.tasks]
    if not watched:
        return Finding.skip("no worker is online or holds a task (see workers.count)")
    ages = {row.node_id: round(row.heartbeat_age(now), 1) for row in watched}
    evidence = {
        "heartbeat_interval": interval,
        "lease_timeout": lease,
        "age_s": ages,
        "holding": {row.node_id: sorted(row.tasks) for row in watched if row.tasks},
    }
    # One interval late: the beat due after the last one has not come in a whole interval.
    late = [row for row in watched if row.heartbeat_age(now) > 2 * interval]
    dead = [row for row in late if row.tasks and row.heartbeat_age(now) > lease]
    holding = [row for row in late if row.tasks and row not in dead]
    fix = (
        "check those hosts (network, load, the worker's log; a stopped process shows state T "
        "in ps); their tasks go back to the queue when their leases expire"
    )
    # A heartbeat stamped ahead of this host's clock: the node pool's host and this one
    # disagree on the time, and every age here is off by as much.
    ahead = {
        row.node_id: round(row.last_heartbeat - now, 1)
        for row in watched
        if row.last_heartbeat - now > interval
    }
    if ahead:
        evidence["ahead_s"] = ahead
    if dead:
        names = ", ".join(f"{row.node_id} ({ages[row.node_id]}s, {_tasks(row)})" for row in dead)
        return Finding.fail(
            f"silent past the lease timeout ({lease:g}s) while holding tasks: {names}",
            fix,
            **evidence,
        )
    if holding:
        names = ", ".join(
            f"{row.node_id} ({row.status}, {ages[row.node_id]}s, {_tasks(row)})" for row in holding
        )
        return Finding.warn(
            f"no heartbeat for over 2 × {interval:g}s while holding tasks: {names}",
            fix,
            **evidence,
        )
    if late:
        names = ", ".join(f"{row.node_id} ({ages[row.node_id]}s)" for row in late)
        return Finding.warn(
            f"heartbeat older than 2 × {interval:g}s: {names}",
            "check those hosts (network, load, the worker's log)",
            **evidence,
        )
    if ahead:
        names = ", ".join(f"{node} ({skew}s ahead)" for node, skew in ahead.items())
        return Finding.warn(
            f"heartbeats stamped in the future, a clock skew between this host and the node "
            f"pool's: {names}",
            "sync the clocks (timedatectl status; chrony or systemd-timesyncd on every host)",
            **evidence,
        )
    oldest = max(ages.values())
    return Finding.ok(
        f"{len(watched)} online worker(s), newest-to-oldest heartbeat within {oldest}s",
        **evidence,
    )
