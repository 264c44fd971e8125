"""Batch throughput of no-op tasks through 1, 2 and 4 node pools on one Redis, and what each
task costs Redis.

For each configuration a fresh cluster (bench/cluster.py) gets the same workers, dealt over
its node pools, and one client process per node pool; each client submits its share of the
batch to its node pool and waits there for every result. The run records:

- tasks/s as the clients see it (first submit until every client has seen every result) and
  as Redis sees it (until ``stats:finished`` counts the whole batch);
- the CPU seconds of Redis, the node pools, the workers (with their pool processes) and the
  clients over the batch;
- Redis's counters (INFO cpu, INFO commandstats) from the first submit until the archive has
  taken the whole batch, less what the idle cluster costs in as long: per task.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from bench.cluster import Cluster, RedisCounters, cpu_seconds_of, tree_cpu_seconds
from bench.machine import PhaseStats, phase, wait_quiet
from bench.processes import Child, flush_db
from bench.system import BatchOutcome

if TYPE_CHECKING:
    import redis

    from hivemind.client import Client
    from hivemind.proto import hivemind_pb2 as pb

SCALE_THROUGHPUT_DB = 7
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"})
#: Seconds of idle cluster measured before each batch, to take out of its Redis figures.
IDLE_SECONDS = 3.0
#: Seconds between the bench's reads of ``stats:finished`` during a batch.
FINISH_POLL = 0.01


# -- the client (one process per node pool) ----------------------------------------------------


def client_main(address: str, token: str, warmup: int, count: int, conn: Connection) -> None:
    """Process entry point: a warm-up batch, then, told to go, ``count`` tasks timed."""
    from hivemind.client import Client, function_spec

    client = Client(address, token)
    try:
        _batch(client, [function_spec("hivemind.examples:noop") for _ in range(warmup)], 120.0)
        specs = [function_spec("hivemind.examples:noop") for _ in range(count)]
        conn.send("ready")
        timeout = conn.recv()
        started = time.monotonic()
        conn.send((started, _batch(client, specs, timeout)))
    finally:
        client.close()
        conn.close()


def _batch(client: Client, specs: Sequence[pb.TaskSpec], timeout: float) -> BatchOutcome:
    """Submit ``specs``, wait for all in slices of 1,000 ids (as bench/hivemind_runner.py)."""
    started = time.monotonic()
    deadline = started + timeout
    ids = client.submit(specs)
    submitted_at = time.monotonic()
    succeeded = other = 0
    for start in range(0, len(ids), 1000):
        part = ids[start : start + 1000]
        tasks: list[pb.Task] = []
        while time.monotonic() < deadline:
            tasks = client.wait(part, max(1.0, min(60.0, deadline - time.monotonic())))
            if all(t.status in TERMINAL for t in tasks):
                break
        succeeded += sum(t.status == "SUCCEEDED" for t in tasks)
        other += sum(t.status in TERMINAL and t.status != "SUCCEEDED" for t in tasks)
    return BatchOutcome(
        submitted=len(ids),
        succeeded=succeeded,
        other=other,
        submit_seconds=submitted_at - started,
        total_seconds=time.monotonic() - started,
        timed_out=succeeded + other < len(ids),
    )


# -- one configuration -------------------------------------------------------------------------


@dataclass
class ConfigResult:
    nodepools: int
    workers: int
    tasks: int
    succeeded: int = 0
    other: int = 0
    #: First submit until every client has seen every result.
    client_seconds: float = math.nan
    #: First submit until ``stats:finished`` counted the whole batch.
    redis_seconds: float = math.nan
    submit_seconds: float = math.nan
    #: CPU seconds over the batch (first submit to the last client done), by role.
    cpu: dict[str, float] = field(default_factory=dict)
    #: Per node pool: (housekeeper?, CPU seconds over the batch).
    per_nodepool: list[tuple[bool, float]] = field(default_factory=list)
    #: Redis's counters over the batch alone (what it ran while the clients waited).
    redis_batch: RedisCounters | None = None
    #: Redis's counters from the first submit until the archive took the batch, idle
    #: cluster's share taken out: divide by ``tasks`` for the per-task cost.
    redis_total: RedisCounters | None = None
    drain_seconds: float = math.nan
    #: Finished tasks not yet archived when the clients had seen every result.
    pending_at_end: int = 0
    phase: PhaseStats | None = None
    error: str = ""

    @property
    def client_rate(self) -> float:
        return self.succeeded / self.client_seconds if self.client_seconds > 0 else math.nan

    @property
    def redis_rate(self) -> float:
        return self.succeeded / self.redis_seconds if self.redis_seconds > 0 else math.nan


class FinishWatch:
    """Reads ``stats:finished`` every FINISH_POLL s until it counts ``target``; ``reached``
    is the monotonic time it did."""

    def __init__(self, client: redis.Redis, target: int) -> None:
        self.client = client
        self.target = target
        self.reached = math.nan
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def finished(self) -> int:
        from hivemind import keys

        counts = self.client.hgetall(keys.STATS_FINISHED)
        self.polls += 1
        return sum(int(v) for v in counts.values())

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.finished() >= self.target:
                self.reached = time.monotonic()
                return
            time.sleep(FINISH_POLL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def run_config(
    workdir: Path,
    redis_server: Child,
    redis_port: int,
    nodepools: int,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> ConfigResult:
    import redis

    from hivemind import keys

    workers = args.workers * (nodepools if args.per_nodepool else 1)
    result = ConfigResult(nodepools, workers, args.tasks)
    log(f"\n== {nodepools} node pool(s), {workers} workers x {args.concurrency} slots")
    flush_db(redis_port, SCALE_THROUGHPUT_DB)
    cluster = Cluster(workdir, redis_port, SCALE_THROUGHPUT_DB, args.concurrency)
    clients: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        cluster.start_nodepools(nodepools)
        cluster.start_workers(workers)
        token = cluster.login(cluster.addresses[0])
        shares = [args.tasks // nodepools + (i < args.tasks % nodepools) for i in range(nodepools)]
        context = multiprocessing.get_context("spawn")
        for address, share in zip(cluster.addresses, shares, strict=True):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=client_main,
                args=(address, token, args.warmup, share, child_end),
                daemon=True,
            )
            process.start()
            child_end.close()
            clients.append((process, parent_end))
        for process, parent_end in clients:
            if not parent_end.poll(180.0) or parent_end.recv() != "ready":
                raise RuntimeError(f"client {process.pid} did not finish its warm-up")
        _drain(r, keys.TASKS_ARCHIVE_PENDING, 120.0)

        wait_quiet(args.limits, args.wait_quiet, log)
        # The idle cluster's Redis cost per second, to take out of the batch's.
        idle_before = RedisCounters.read(r)
        time.sleep(IDLE_SECONDS)
        idle = RedisCounters.read(r).minus(idle_before).scaled(1 / IDLE_SECONDS)

        pool_pids = [p.child.pid for p in cluster.nodepools]
        worker_pids = [w.pid for w in cluster.workers]
        client_pids = [p.pid for p, _ in clients if p.pid is not None]
        watch = FinishWatch(r, 0)
        watch.target = watch.finished() + args.tasks
        roles = {
            "redis": lambda: sum(cpu_seconds_of([redis_server.pid]).values()),
            "node pools": lambda: sum(cpu_seconds_of(pool_pids).values()),
            "workers": lambda: tree_cpu_seconds(worker_pids),
            "clients": lambda: sum(cpu_seconds_of(client_pids).values()),
        }
        with phase(f"batch through {nodepools} node pool(s)", args.limits, log) as stats:
            cpu_before = {role: read() for role, read in roles.items()}
            per_pool_before = cpu_seconds_of(pool_pids)
            redis_before = RedisCounters.read(r)
            go = time.monotonic()
            watch.start()
            for _, parent_end in clients:
                parent_end.send(args.batch_timeout)
            outcomes = []
            for process, parent_end in clients:
                if not parent_end.poll(args.batch_timeout + 30.0):
                    raise RuntimeError(f"client {process.pid} did not report")
                outcomes.append(parent_end.recv())
            cpu_after = {role: read() for role, read in roles.items()}
            per_pool_after = cpu_seconds_of(pool_pids)
            redis_after_batch = RedisCounters.read(r)
        watch.stop()
        first = min(started for started, _ in outcomes)
        result.client_seconds = max(s + o.total_seconds for s, o in outcomes) - first
        result.redis_seconds = watch.reached - first
        result.submit_seconds = max(o.submit_seconds for _, o in outcomes)
        result.succeeded = sum(o.succeeded for _, o in outcomes)
        result.other = sum(o.other for _, o in outcomes)
        result.cpu = {role: cpu_after[role] - cpu_before[role] for role in roles}
        keeper = cluster.housekeeper_pid()
        result.per_nodepool = [
            (pid == keeper, per_pool_after.get(pid, 0.0) - per_pool_before.get(pid, 0.0))
            for pid in pool_pids
        ]
        result.phase = stats
        polls = watch.polls - 1  # the read that set the target came before redis_before
        result.redis_batch = _without_bench(redis_after_batch.minus(redis_before), polls)

        result.pending_at_end = int(r.scard(keys.TASKS_ARCHIVE_PENDING))
        drain_started = time.monotonic()
        _drain(r, keys.TASKS_ARCHIVE_PENDING, 120.0)
        result.drain_seconds = time.monotonic() - drain_started
        redis_after = RedisCounters.read(r)
        window = time.monotonic() - go
        total = _without_bench(redis_after.minus(redis_before), polls)
        result.redis_total = _less(total, idle.scaled(window))
        log(
            f"  {result.succeeded}/{args.tasks} ok: {result.client_rate:,.0f} tasks/s seen "
            f"by the clients, {result.redis_rate:,.0f}/s in Redis; the archive took the "
            f"{result.pending_at_end} left in {result.drain_seconds:.1f} s "
            f"({result.pending_at_end / max(result.drain_seconds, 1e-3):,.0f}/s)"
        )
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"  FAILED: {result.error}")
    finally:
        for process, parent_end in clients:
            process.join(10.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
            parent_end.close()
        r.close()
        cluster.stop()
    return result


def _drain(client: redis.Redis, key: str, timeout: float) -> None:
    """Wait until the set ``key`` is empty (the archive has taken every finished task)."""
    deadline = time.monotonic() + timeout
    while client.scard(key) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key} not empty after {timeout:.0f} s")
        time.sleep(0.05)


def _without_bench(delta: RedisCounters, polls: int) -> RedisCounters:
    """``delta`` without the bench's own reads: INFO, and the finish watch's HGETALLs."""
    calls = dict(delta.calls)
    info = calls.pop("info", 0)
    calls["hgetall"] = calls.get("hgetall", 0) - polls
    return RedisCounters(delta.cpu_seconds, delta.commands - info - polls, calls)


def _less(delta: RedisCounters, idle: RedisCounters) -> RedisCounters:
    calls = {k: v - idle.calls.get(k, 0) for k, v in delta.calls.items()}
    return RedisCounters(
        delta.cpu_seconds - idle.cpu_seconds,
        delta.commands - idle.commands,
        {k: v for k, v in calls.items() if v > 0},
    )


# -- the report --------------------------------------------------------------------------------

SCRIPT_COMMANDS = ("evalsha", "eval", "fcall")


def render_throughput(results: list[ConfigResult], cores: int) -> str:
    ok = [r for r in results if not r.error]
    clean = [r for r in ok if r.phase is not None and not r.phase.noisy]
    # The 1-node-pool base: its quiet runs, or all of them when none was quiet.
    singles = [r for r in clean if r.nodepools == 1] or [r for r in ok if r.nodepools == 1]
    base_client = sum(r.client_rate for r in singles) / len(singles) if singles else math.nan
    base_redis = sum(r.redis_rate for r in singles) / len(singles) if singles else math.nan
    lines = [
        f"Throughput: {results[0].tasks:,} no-op tasks per configuration, one client process "
        "per node pool (its share of the batch)"
        if results
        else "Throughput: nothing ran",
        f"{'pools':>5} {'workers':>7} {'tasks/s':>8} {'vs 1':>6} {'in Redis':>8} {'vs 1':>6} "
        f"{'ok':>11}  {'steal %':>7} {'other %':>7} {'busy %':>6}",
    ]
    for r in results:
        if r.error:
            lines.append(f"{r.nodepools:>5} FAILED: {r.error}")
            continue
        vs_client, vs_redis = r.client_rate / base_client, r.redis_rate / base_redis
        p = r.phase or PhaseStats("")
        lines.append(
            f"{r.nodepools:>5} {r.workers:>7} {r.client_rate:>8,.0f} {vs_client:>5.2f}x "
            f"{r.redis_rate:>8,.0f} {vs_redis:>5.2f}x {r.succeeded:>5}/{r.tasks:<5}  "
            f"{p.steal_percent:>7.1f} {p.other_percent:>7.0f} {p.busy_percent:>6.0f}"
            + ("  NOISY" if p.noisy else "")
        )
    medians = []
    for count in sorted({r.nodepools for r in ok}):
        rates = [r.client_rate for r in clean if r.nodepools == count]
        if rates:
            median = statistics.median(rates)
            medians.append(
                f"{count}: {median:,.0f}/s ({median / base_client:.2f}x, n={len(rates)})"
            )
    lines.append(
        "median of the quiet runs (not NOISY), by node pools: " + ("; ".join(medians) or "none")
    )
    lines += [
        "",
        f"CPU over the batch, seconds (and cores busy of {cores}): where the time goes",
        f"{'pools':>5} {'batch s':>7} {'redis':>13} {'node pools':>13} {'workers':>13} "
        f"{'clients':>13} {'all':>5}   per node pool (h = housekeeper)",
    ]
    for r in ok:
        cells = []
        for role in ("redis", "node pools", "workers", "clients"):
            seconds = r.cpu.get(role, math.nan)
            cells.append(f"{seconds:6.2f} ({seconds / r.client_seconds:4.2f})")
        pools = " ".join(f"{s:.2f}{'h' if keeper else ''}" for keeper, s in r.per_nodepool)
        cores = sum(r.cpu.values()) / r.client_seconds
        lines.append(
            f"{r.nodepools:>5} {r.client_seconds:>7.2f} {' '.join(cells)} {cores:5.2f}   {pools}"
        )
    lines += [
        "",
        "Redis per task (first submit until the archive took the batch, idle cost taken out)",
        f"{'pools':>5} {'commands':>8} {'scripts':>7} {'CPU µs':>7}   "
        f"{'ops/s in batch':>14} {'Redis CPU % in batch':>20}   unarchived at the end, then /s",
    ]
    for r in ok:
        total, batch = r.redis_total, r.redis_batch
        if total is None or batch is None:
            continue
        scripts = sum(total.calls.get(c, 0) for c in SCRIPT_COMMANDS)
        lines.append(
            f"{r.nodepools:>5} {total.commands / r.tasks:>8.1f} {scripts / r.tasks:>7.2f} "
            f"{1e6 * total.cpu_seconds / r.tasks:>7.0f}   "
            f"{batch.commands / r.client_seconds:>14,.0f} "
            f"{100 * batch.cpu_seconds / r.client_seconds:>20.0f}   {r.pending_at_end:>5} "
            f"in {r.drain_seconds:.1f} s, {r.pending_at_end / max(r.drain_seconds, 1e-3):,.0f}/s"
        )
    if ok:
        lines += ["", *_ceiling(clean or ok, "the quiet runs" if clean else "all runs")]
    return "\n".join(lines)


def _ceiling(ok: list[ConfigResult], which: str) -> list[str]:
    """What one Redis core could carry at the measured cost per task."""
    costs = [r.redis_total for r in ok if r.redis_total is not None]
    cpu_per_task = sum(c.cpu_seconds for c in costs) / sum(r.tasks for r in ok)
    cmds_per_task = sum(c.commands for c in costs) / sum(r.tasks for r in ok)
    peak = max(ok, key=lambda r: r.client_rate)
    top = sorted(peak.redis_total.calls.items(), key=lambda kv: -kv[1]) if peak.redis_total else []
    shown = [(name, calls / peak.tasks) for name, calls in top if calls / peak.tasks >= 0.01]
    per_task = ", ".join(f"{name} {share:.2f}" for name, share in shown)
    ceiling = 1 / cpu_per_task if cpu_per_task > 0 else math.inf
    batch = peak.redis_batch
    peak_ops = batch.commands / peak.client_seconds if batch else math.nan
    return [
        *textwrap.wrap(
            f"commands per task at the peak ({peak.nodepools} node pools): {per_task}",
            100,
            subsequent_indent="  ",
        ),
        f"peak: {peak.client_rate:,.0f} tasks/s, {peak_ops:,.0f} Redis commands/s",
        f"ceiling of one Redis core at {1e6 * cpu_per_task:.0f} µs and {cmds_per_task:.1f} "
        f"commands per task (mean of {which}): {ceiling:,.0f} tasks/s, "
        f"{ceiling * cmds_per_task:,.0f} commands/s",
    ]


def run_throughput(
    workdir: Path,
    redis_server: Child,
    redis_port: int,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> list[ConfigResult]:
    # Round 2 runs the configurations in reverse, so drift touches them alike.
    order = [n for r in range(args.rounds) for n in (args.nodepools[:: -1 if r % 2 else 1])]
    results = []
    for index, nodepools in enumerate(order):
        where = workdir / f"throughput-{index + 1}-{nodepools}np"
        where.mkdir()
        results.append(run_config(where, redis_server, redis_port, nodepools, args, log))
    return results
