"""A fresh node pool under simulated workers heartbeating once a second."""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.hivemind_runner import HiveMindStack
from bench.machine import PhaseStats, percentile, phase, wait_quiet
from bench.processes import Child, flush_db, pin_process, unpin

HEARTBEAT_DB = 5


# -- heartbeat load ----------------------------------------------------------------------------


@dataclass
class ShardReport:
    #: (due time relative to the start, latency in seconds) of each answered heartbeat.
    answered: list[tuple[float, float]] = field(default_factory=list)
    #: (due time relative to the start, status code, seconds until it failed) of each failure.
    failed: list[tuple[float, str, float]] = field(default_factory=list)
    #: Seconds each send left after its due time (how far the generator fell behind).
    lags: list[float] = field(default_factory=list)


def heartbeat_shard(
    address: str,
    workers: list[tuple[str, str, float]],
    start_at: float,
    rounds: int,
    cpus: list[int] | None,
    conn: Connection,
) -> None:
    """Process entry point: heartbeat ``workers`` (node id, token, offset) once a second.

    Sends are open-loop (each worker's next heartbeat is due one second after the previous
    one, answered or not), so a node pool that cannot keep up shows as growing latency and
    errors, not as a slower generator. ``start_at`` is on the monotonic clock, which Linux
    shares across processes.
    """
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    from hivemind.client import open_channel
    from hivemind.proto import hivemind_pb2 as pb
    from hivemind.proto import hivemind_pb2_grpc as pb_grpc

    # One channel for all of this shard's workers; each call carries its worker's token.
    channel = open_channel(address)
    stub = pb_grpc.WorkerServiceStub(channel)
    items = sorted(
        (
            (
                offset,
                pb.HeartbeatRequest(node_id=node_id, metrics=pb.Metrics()),
                (("authorization", f"Bearer {token}"),),
            )
            for node_id, token, offset in workers
        ),
        key=lambda item: item[0],
    )
    report = ShardReport()
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def answered(due: float, sent_at: float, future: Any) -> None:
        latency = time.monotonic() - sent_at
        error = future.exception()
        with lock:
            if error is None:
                report.answered.append((due, latency))
            else:
                code = error.code().name if hasattr(error, "code") else type(error).__name__
                details = error.details() if hasattr(error, "details") else str(error)
                if details and details != code:
                    code = f"{code} ({details})"
                report.failed.append((due, code, latency))
        done.release()

    conn.send("ready")
    sent = 0
    for round_number in range(rounds):
        for offset, request, metadata in items:
            due = round_number + offset
            delay = start_at + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent_at = time.monotonic()
            report.lags.append(sent_at - start_at - due)
            future = stub.Heartbeat.future(request, metadata=metadata, timeout=5.0)
            sent += 1
            future.add_done_callback(lambda f, d=due, t=sent_at: answered(d, t, f))
    deadline = time.monotonic() + 10.0
    for _ in range(sent):
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
    channel.close()
    with lock:
        conn.send(asdict(report))
    conn.close()


@dataclass
class HeartbeatResult:
    workers: int
    seconds: float
    warmup: float
    pinned: str
    offered_per_s: float = 0.0
    sent: int = 0
    achieved_per_s: float = 0.0
    worst_second_per_s: float = 0.0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    generator_lag_p99_ms: float = math.nan
    #: Median time from sending a heartbeat that failed until it failed.
    failed_after_p50_ms: float = math.nan
    nodepool_cpu_percent: float = math.nan
    generator_cpu_percent: float = math.nan
    redis_cpu_percent: float = math.nan
    rss_idle_mb: float = math.nan
    rss_registered_mb: float = math.nan
    rss_peak_mb: float = math.nan
    rss_end_mb: float = math.nan
    register_seconds: float = math.nan
    online_after: int = 0
    phase: PhaseStats | None = None
    keeps_up: bool = False
    error: str = ""


def run_heartbeat(
    workdir: Path,
    redis_server: Child,
    redis_port: int,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> HeartbeatResult:
    import psutil

    from hivemind.auth import issue_worker_token
    from hivemind.client import Client
    from hivemind.worker.connection import WorkerConnection

    count, seconds, warmup = args.heartbeat_workers, args.heartbeat_seconds, 2.0
    ncpu = os.cpu_count() or 1
    pin = ncpu >= 2 and not args.no_pin
    pinned = (
        "node pool pinned to CPU 0; Redis and the load generator to CPU 1"
        if pin
        else "not pinned (one CPU, or --no-pin)"
    )
    result = HeartbeatResult(count, seconds, warmup, pinned)
    log(f"\n== heartbeat load: {count} simulated workers x 1/s for {seconds:.0f} s; {pinned}")
    stack = HiveMindStack(workdir, redis_port, HEARTBEAT_DB, 0, 1)
    flush_db(redis_port, HEARTBEAT_DB)
    shards: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    nodepool_pid = 0
    try:
        stack.up()
        nodepool_pid = stack.nodepool_pid()
        nodepool = psutil.Process(nodepool_pid)
        if pin:
            pin_process(nodepool_pid, {0})
            pin_process(redis_server.pid, {1})
        time.sleep(1.0)
        result.rss_idle_mb = nodepool.memory_info().rss / 2**20

        settings = stack.settings()
        started = time.perf_counter()
        tokens = [
            (f"sim-{n:04d}", issue_worker_token(settings, f"sim-{n:04d}")) for n in range(count)
        ]
        from hivemind.proto import hivemind_pb2 as pb

        resources = pb.WorkerResources(cpu=2, memory_mb=4096, capacity=2)
        for node_id, token in tokens:
            conn = WorkerConnection(stack.address, node_id, token)
            try:
                conn.register(resources, [])
            finally:
                conn.close()
        result.register_seconds = time.perf_counter() - started
        result.rss_registered_mb = nodepool.memory_info().rss / 2**20
        log(
            f"  registered {count} workers in {result.register_seconds:.1f} s; node pool RSS "
            f"{result.rss_registered_mb:.0f} MB (idle before: {result.rss_idle_mb:.0f} MB)"
        )

        wait_quiet(args.limits, args.wait_quiet, log)
        context = multiprocessing.get_context("spawn")
        nshards = max(1, args.heartbeat_processes)
        rounds = math.ceil(warmup + seconds)
        start_at = time.monotonic() + 3.0 + nshards
        for index in range(nshards):
            mine = [
                (node, token, n / count)
                for n, (node, token) in enumerate(tokens)
                if n % nshards == index
            ]
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=heartbeat_shard,
                args=(stack.address, mine, start_at, rounds, [1] if pin else None, child_end),
                daemon=True,
            )
            process.start()
            child_end.close()
            shards.append((process, parent_end))
        for process, parent_end in shards:
            if not parent_end.poll(start_at - time.monotonic()) or parent_end.recv() != "ready":
                raise RuntimeError(f"load generator {process.pid} did not start in time")

        rss_peak = result.rss_registered_mb
        time.sleep(max(0.0, start_at + warmup - time.monotonic()))
        watched = {
            "nodepool": [nodepool],
            "generator": [psutil.Process(p.pid) for p, _ in shards],
            "redis": [psutil.Process(redis_server.pid)],
        }
        with phase("heartbeat load", args.limits, log) as stats:
            cpu_before = {k: _cpu_seconds(v) for k, v in watched.items()}
            measured_from = time.monotonic()
            while time.monotonic() < start_at + warmup + seconds:
                rss_peak = max(rss_peak, nodepool.memory_info().rss / 2**20)
                time.sleep(0.25)
            elapsed = time.monotonic() - measured_from
            cpu = {
                k: 100.0 * (_cpu_seconds(v) - cpu_before[k]) / elapsed for k, v in watched.items()
            }
        result.phase = stats
        result.nodepool_cpu_percent = cpu["nodepool"]
        result.generator_cpu_percent = cpu["generator"]
        result.redis_cpu_percent = cpu["redis"]
        reports = []
        for process, parent_end in shards:
            if not parent_end.poll(30.0):
                raise RuntimeError(f"load generator {process.pid} did not report")
            reports.append(ShardReport(**parent_end.recv()))
        result.rss_peak_mb = max(rss_peak, nodepool.memory_info().rss / 2**20)
        result.rss_end_mb = nodepool.memory_info().rss / 2**20
        _summarise_heartbeats(result, reports, warmup, seconds)
        admin = Client(stack.address, stack.token())
        try:
            result.online_after = sum(w.status == "online" for w in admin.workers())
        finally:
            admin.close()
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"  FAILED: {result.error}")
    finally:
        for process, parent_end in shards:
            process.join(15.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
            parent_end.close()
        if nodepool_pid and pin:
            with contextlib.suppress(OSError):
                unpin(nodepool_pid)
        if pin:
            with contextlib.suppress(OSError):
                unpin(redis_server.pid)
        try:
            stack.down()
        except Exception as exc:
            log(f"  stopping the heartbeat stack failed: {exc}")
    return result


def _cpu_seconds(processes: Sequence[Any]) -> float:
    """User + system CPU seconds of psutil processes so far."""
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _summarise_heartbeats(
    result: HeartbeatResult, reports: list[ShardReport], warmup: float, seconds: float
) -> None:
    """Statistics over the heartbeats due after the warm-up."""
    window = [
        (due - warmup, latency) for r in reports for due, latency in r.answered if due >= warmup
    ]
    errors = Counter(code for r in reports for due, code, _ in r.failed if due >= warmup)
    failed_after = [
        latency * 1000 for r in reports for due, _, latency in r.failed if due >= warmup
    ]
    result.failed_after_p50_ms = percentile(failed_after, 0.50)
    latencies = [latency * 1000 for _, latency in window]
    result.sent = len(window) + sum(errors.values())
    result.answered = len(window)
    result.errors = dict(errors)
    result.offered_per_s = result.sent / seconds
    # The answers to the measured heartbeats arrive from the window's start until the last
    # one is back: a node pool that falls behind stretches that span.
    span = max((due + latency for due, latency in window), default=seconds)
    result.achieved_per_s = len(window) / max(seconds, span)
    per_second = Counter(int(due + latency) for due, latency in window)
    full_seconds = [per_second.get(s, 0) for s in range(1, int(seconds) - 1)]
    result.worst_second_per_s = float(min(full_seconds)) if full_seconds else math.nan
    result.p50_ms = percentile(latencies, 0.50)
    result.p99_ms = percentile(latencies, 0.99)
    result.max_ms = max(latencies) if latencies else math.nan
    lags = [lag * 1000 for r in reports for lag in r.lags]
    result.generator_lag_p99_ms = percentile(lags, 0.99)
    result.keeps_up = (
        not errors
        and result.answered >= 0.98 * result.workers * seconds
        and result.achieved_per_s >= 0.98 * result.offered_per_s
        and result.p99_ms < 1000.0
    )
