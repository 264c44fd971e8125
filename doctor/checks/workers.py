"""Are there workers, and are they alive? (the guide's `redis-cli hgetall worker_nodes`)"""

from __future__ import annotations

from doctor.cluster import live_workers, queue, workers
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
    return Finding.ok(f"{len(live)} live of {len(registered)} registered worker(s)", **evidence)


def _count_by_status(statuses: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


@check(
    "workers.heartbeat",
    title="Online workers heartbeat on time",
    guide="3 任務超時: hget worker:ID last_heartbeat",
)
def worker_heartbeat(ctx: Context) -> Finding:
    now = ctx.now()
    interval = ctx.settings.heartbeat_interval
    lease = ctx.settings.effective_lease_timeout
    online = [row for row in workers(ctx) if row.status == "online"]
    if not online:
        return Finding.skip("no worker says it is online (see workers.count)")
    ages = {row.node_id: round(row.heartbeat_age(now), 1) for row in online}
    evidence = {"heartbeat_interval": interval, "lease_timeout": lease, "age_s": ages}
    dead = [row for row in online if row.tasks and row.heartbeat_age(now) > lease]
    late = [row for row in online if row.heartbeat_age(now) > 2 * interval]
    if dead:
        names = ", ".join(
            f"{row.node_id} ({ages[row.node_id]}s, {len(row.tasks)} task(s))" for row in dead
        )
        return Finding.fail(
            f"silent past the lease timeout ({lease:g}s) while holding tasks: {names}",
            "check those hosts (network, load, the worker's log); their tasks go back to the "
            "queue when the node pool's reaper runs",
            **evidence,
        )
    if late:
        names = ", ".join(f"{row.node_id} ({ages[row.node_id]}s)" for row in late)
        return Finding.warn(
            f"heartbeat older than 2 × {interval:g}s: {names}",
            "check those hosts (network, load, the worker's log)",
            **evidence,
        )
    oldest = max(ages.values())
    return Finding.ok(
        f"{len(online)} online worker(s), newest-to-oldest heartbeat within {oldest}s",
        **evidence,
    )
