"""10,000 simulated workers heartbeating every HEARTBEAT_INTERVAL against several node pools.

Each load-generator process drives thousands of workers with grpc.aio over one channel per
node pool: a worker is a prebuilt ``HeartbeatRequest`` and its own bearer token, nothing
more. Workers register as bench/heartbeat.py registers them (a worker token from
``issue_worker_token``, then ``WorkerService.Register``), here from the generators, many at
once. Sends are open-loop, as in bench/heartbeat.py: a worker's next heartbeat is due one
interval after the previous one, answered or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.cluster import Cluster, cpu_seconds_of
from bench.heartbeat import ShardReport
from bench.machine import PhaseStats, percentile, phase, wait_quiet
from bench.processes import Child, flush_db

SCALE_HEARTBEAT_DB = 6
#: Registrations each generator keeps in flight at once.
REGISTER_CONCURRENCY = 32
#: Seconds the node pools are measured idle, every worker registered, before the heartbeats.
IDLE_SECONDS = 3.0
#: Seconds between two reads of the oldest heartbeat in Redis (each reads every worker).
SAMPLE_EVERY = 2.0


# -- the load generator (one process) ----------------------------------------------------------


def generator_main(
    workers: list[tuple[str, str, str, float]], interval: float, conn: Connection
) -> None:
    """Process entry point: register ``workers`` (node id, token, address, offset), report
    back, receive the start time and the rounds, then heartbeat each every ``interval`` s."""
    asyncio.run(_generate(workers, interval, conn))


async def _generate(
    workers: list[tuple[str, str, str, float]], interval: float, conn: Connection
) -> None:
    import grpc

    from hivemind.client import CHANNEL_OPTIONS
    from hivemind.proto import hivemind_pb2 as pb
    from hivemind.proto import hivemind_pb2_grpc as pb_grpc

    channels = {a: grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for _, _, a, _ in workers}
    stubs = {a: pb_grpc.WorkerServiceStub(c) for a, c in channels.items()}
    resources = pb.WorkerResources(cpu=2, memory_mb=4096, capacity=2)
    failed_registrations: Counter[str] = Counter()
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def register(node_id: str, token: str, address: str) -> None:
        async with gate:
            try:
                await stubs[address].Register(
                    pb.RegisterRequest(node_id=node_id, resources=resources),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=30.0,
                )
            except grpc.RpcError as exc:
                failed_registrations[exc.code().name] += 1

    began = time.monotonic()
    await asyncio.gather(*(register(n, t, a) for n, t, a, _ in workers))
    conn.send(("registered", time.monotonic() - began, dict(failed_registrations)))
    start_at, rounds = await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    items = sorted(
        (
            (
                offset,
                stubs[address].Heartbeat,
                pb.HeartbeatRequest(node_id=node_id, metrics=pb.Metrics()),
                (("authorization", f"Bearer {token}"),),
            )
            for node_id, token, address, offset in workers
        ),
        key=lambda item: item[0],
    )
    report = ShardReport()
    pending: set[asyncio.Task[None]] = set()

    async def beat(method: Any, request: Any, metadata: Any, due: float) -> None:
        # Timed from when the call starts: how late it starts is the generator's lag.
        # Recorded by when it was sent, not when it was due: the window holds what was sent.
        sent_at = time.monotonic()
        sent = sent_at - start_at
        report.lags.append(sent - due)
        try:
            await method(request, metadata=metadata, timeout=5.0)
            report.answered.append((sent, time.monotonic() - sent_at))
        except grpc.aio.AioRpcError as exc:
            report.failed.append((sent, exc.code().name, time.monotonic() - sent_at))

    loop = asyncio.get_running_loop()
    end = start_at + rounds * interval
    for round_number in range(rounds):
        for offset, method, request, metadata in items:
            if time.monotonic() >= end:
                break  # the schedule is over: what is still unsent counts as not sent
            due = round_number * interval + offset
            # Always yield: a generator that fell behind must still let its calls start.
            await asyncio.sleep(max(0.0, start_at + due - time.monotonic()))
            task = loop.create_task(beat(method, request, metadata, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
    deadline = time.monotonic() + 10.0
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for channel in channels.values():
        await channel.close()
    conn.send(asdict(report))
    conn.close()


# -- the run -----------------------------------------------------------------------------------


@dataclass
class PoolFigures:
    pid: int
    #: Share of the window's 4 Hz samples in which it held ``housekeeping:lock``.
    housekeeping_share: float = 0.0
    #: CPU % of one core with every worker registered and none heartbeating yet.
    idle_cpu_percent: float = math.nan
    #: CPU % of one core over the measured window.
    cpu_percent: float = math.nan
    rss_registered_mb: float = math.nan
    rss_peak_mb: float = 0.0
    rss_end_mb: float = math.nan


@dataclass
class HeartbeatScaleResult:
    workers: int
    nodepools: int
    interval: float
    seconds: float
    generators: int
    register_seconds: float = math.nan
    register_errors: dict[str, int] = field(default_factory=dict)
    sent_per_s: float = 0.0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    generator_lag_p99_ms: float = math.nan
    pools: list[PoolFigures] = field(default_factory=list)
    redis_cpu_percent: float = math.nan
    redis_info_cpu_percent: float = math.nan
    #: Redis CPU (INFO cpu) with every worker registered and none heartbeating yet.
    redis_idle_cpu_percent: float = math.nan
    #: Redis CPU ms one age sample costs (measured before the load), and its share of the
    #: window's Redis CPU %: the bench's own, not the heartbeats'.
    sampler_ms: float = math.nan
    sampler_cpu_percent: float = math.nan
    generator_cpu_percent: float = math.nan
    #: The oldest ``last_heartbeat`` among the workers in Redis, sampled once a second.
    oldest_age_max_s: float = math.nan
    oldest_age_p50_s: float = math.nan
    samples: int = 0
    #: Share of the lock samples in which no node pool held ``housekeeping:lock``.
    unheld_share: float = 0.0
    #: Heartbeat scripts Redis ran per second in the window (EVALSHA, less the idle rate).
    written_per_s: float = math.nan
    online_at_end: int = 0
    phase: PhaseStats | None = None
    error: str = ""

    @property
    def rss_ok(self) -> bool:
        return bool(self.pools) and all(p.rss_peak_mb <= 300.0 for p in self.pools)

    @property
    def age_ok(self) -> bool:
        return self.samples > 0 and self.oldest_age_max_s <= 2 * self.interval

    @property
    def answered_per_s(self) -> float:
        return self.answered / self.seconds

    @property
    def redis_us_per_heartbeat(self) -> float:
        busy = self.redis_info_cpu_percent - self.redis_idle_cpu_percent - self.sampler_cpu_percent
        return 1e4 * busy / self.written_per_s if self.written_per_s > 0 else math.nan

    @property
    def ms_per_heartbeat(self) -> float:
        """Node pool CPU per heartbeat written to Redis, beyond what idle node pools use."""
        extra = sum(p.cpu_percent - p.idle_cpu_percent for p in self.pools) / 100.0
        return 1000.0 * extra / self.written_per_s if self.written_per_s > 0 else math.nan


def run_heartbeat_scale(
    workdir: Path,
    redis_server: Child,
    redis_port: int,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> HeartbeatScaleResult:
    count, interval = args.workers, args.interval
    result = HeartbeatScaleResult(count, args.nodepools, interval, args.seconds, args.generators)
    log(
        f"\n== heartbeats: {count} simulated workers every {interval:g} s against "
        f"{args.nodepools} node pools; {args.generators} generator processes"
    )
    flush_db(redis_port, SCALE_HEARTBEAT_DB)
    cluster = Cluster(
        workdir,
        redis_port,
        SCALE_HEARTBEAT_DB,
        extra_env={"HIVEMIND_HEARTBEAT_INTERVAL": str(interval)},
    )
    generators: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        cluster.start_nodepools(args.nodepools)
        wait_quiet(args.limits, args.wait_quiet, log)  # before registering: none is idle long
        generators = _start_generators(cluster, args, log)
        _await_registration(result, generators, log)
        _measure(result, cluster, redis_server, generators, args, log)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"  FAILED: {result.error}")
    finally:
        for process, parent_end in generators:
            process.join(15.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
            parent_end.close()
        cluster.stop()
    return result


def _start_generators(
    cluster: Cluster, args: argparse.Namespace, log: Callable[[str], None]
) -> list[tuple[multiprocessing.process.BaseProcess, Connection]]:
    """Worker tokens for every simulated worker, dealt over the node pools and generators."""
    from hivemind.auth import issue_worker_token

    settings = cluster.settings()
    issued = time.perf_counter()
    workers = [
        (node, issue_worker_token(settings, node), cluster.addresses[n % args.nodepools])
        for n, node in enumerate(f"sim-{n:05d}" for n in range(args.workers))
    ]
    log(f"  issued {args.workers} worker tokens in {time.perf_counter() - issued:.1f} s")
    context = multiprocessing.get_context("spawn")
    generators = []
    for index in range(args.generators):
        mine = [
            (node, token, address, args.interval * n / args.workers)
            for n, (node, token, address) in enumerate(workers)
            if n % args.generators == index
        ]
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=generator_main, args=(mine, args.interval, child_end), daemon=True
        )
        process.start()
        child_end.close()
        generators.append((process, parent_end))
    return generators


def _await_registration(
    result: HeartbeatScaleResult,
    generators: list[tuple[multiprocessing.process.BaseProcess, Connection]],
    log: Callable[[str], None],
) -> None:
    seconds, errors = 0.0, Counter[str]()
    for process, parent_end in generators:
        if not parent_end.poll(300.0):
            raise RuntimeError(f"generator {process.pid} did not register its workers")
        _, took, failed = parent_end.recv()
        seconds = max(seconds, took)
        errors.update(failed)
    result.register_seconds, result.register_errors = seconds, dict(errors)
    log(
        f"  registered {result.workers} workers in {seconds:.1f} s; "
        f"errors: {dict(errors) or 'none'}"
    )


def _measure(
    result: HeartbeatScaleResult,
    cluster: Cluster,
    redis_server: Child,
    generators: list[tuple[multiprocessing.process.BaseProcess, Connection]],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> None:
    import psutil
    import redis

    from hivemind.worker_records import parse_summary

    pools = {p.child.pid: psutil.Process(p.child.pid) for p in cluster.nodepools}
    figures = {pid: PoolFigures(pid) for pid in pools}
    for pid, process in pools.items():
        rss = process.memory_info().rss / 2**20
        figures[pid].rss_registered_mb = figures[pid].rss_peak_mb = rss
    # What the node pools cost with every worker registered and none beating yet.
    client = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    idle_before, idle_from = cpu_seconds_of(pools), time.monotonic()
    scripts_before, redis_before = _scripts_run(client), _redis_cpu(client)
    time.sleep(IDLE_SECONDS)
    idle_after, idle_took = cpu_seconds_of(pools), time.monotonic() - idle_from
    idle_scripts_per_s = (_scripts_run(client) - scripts_before) / idle_took
    result.redis_idle_cpu_percent = 100.0 * (_redis_cpu(client) - redis_before) / idle_took
    for pid in pools:
        used = idle_after.get(pid, 0.0) - idle_before.get(pid, 0.0)
        figures[pid].idle_cpu_percent = 100.0 * used / idle_took

    # Warm-up: two intervals, so that every worker has beat since it registered.
    warmup = 2 * args.interval
    rounds = math.ceil((warmup + args.seconds) / args.interval)
    start_at = time.monotonic() + 1.0
    for _, parent_end in generators:
        parent_end.send((start_at, rounds))
    ages = AgeSampler(client, [f"worker:sim-{n:05d}" for n in range(args.workers)])
    result.sampler_ms = ages.cost_ms(_redis_cpu)
    gen_pids = [p.pid for p, _ in generators if p.pid is not None]
    watched = [*pools, redis_server.pid, *gen_pids]
    time.sleep(max(0.0, start_at + warmup - time.monotonic()))
    with phase("heartbeat load", args.limits, log) as stats:
        info_before, scripts_before = _redis_cpu(client), _scripts_run(client)
        cpu_before = cpu_seconds_of(watched)
        measured_from = time.monotonic()
        ages.start()
        holders: Counter[int | None] = Counter()
        while time.monotonic() < start_at + warmup + args.seconds:
            holders[cluster.housekeeper_pid()] += 1
            for pid, process in pools.items():
                with contextlib.suppress(psutil.Error):
                    rss = process.memory_info().rss / 2**20
                    figures[pid].rss_peak_mb = max(figures[pid].rss_peak_mb, rss)
            time.sleep(0.25)
        elapsed = time.monotonic() - measured_from
        cpu_after = cpu_seconds_of(watched)
        info_after, scripts_after = _redis_cpu(client), _scripts_run(client)
    ages.stop()
    heartbeats = scripts_after - scripts_before - len(ages.oldest)  # less the sampler's own
    result.written_per_s = heartbeats / elapsed - idle_scripts_per_s
    result.phase = stats

    def percent(pids: list[int]) -> float:
        used = sum(cpu_after.get(p, 0.0) - cpu_before.get(p, 0.0) for p in pids)
        return 100.0 * used / elapsed

    looks = sum(holders.values()) or 1
    result.unheld_share = holders[None] / looks
    for pid, process in pools.items():
        pool = figures[pid]
        pool.housekeeping_share, pool.cpu_percent = holders[pid] / looks, percent([pid])
        pool.rss_end_mb = process.memory_info().rss / 2**20
        pool.rss_peak_mb = max(pool.rss_peak_mb, pool.rss_end_mb)
    result.pools = list(figures.values())
    result.redis_cpu_percent = percent([redis_server.pid])
    result.redis_info_cpu_percent = 100.0 * (info_after - info_before) / elapsed
    result.sampler_cpu_percent = 100.0 * len(ages.oldest) * result.sampler_ms / 1000 / elapsed
    result.generator_cpu_percent = percent(gen_pids)
    result.samples = len(ages.oldest)
    result.oldest_age_max_s = max(ages.oldest, default=math.nan)
    result.oldest_age_p50_s = percentile(ages.oldest, 0.5)
    reports = []
    for process, parent_end in generators:
        if not parent_end.poll(60.0):
            raise RuntimeError(f"generator {process.pid} did not report")
        reports.append(ShardReport(**parent_end.recv()))
    _summarise(result, reports, warmup)
    summaries = client.hgetall("worker_nodes").values()
    result.online_at_end = sum(parse_summary(s).get("status") == "online" for s in summaries)
    client.close()


#: KEYS: worker hashes; ARGV: now (unix s). The oldest heartbeat's age, and how many have none.
_OLDEST = """
local now, oldest, missing = tonumber(ARGV[1]), 0, 0
for _, key in ipairs(KEYS) do
  local beat = tonumber(redis.call('HGET', key, 'last_heartbeat'))
  if beat then oldest = math.max(oldest, now - beat) else missing = missing + 1 end
end
return {tostring(oldest), missing}
"""


class AgeSampler:
    """Once a second, the age of the oldest ``last_heartbeat`` among ``worker_keys`` in Redis
    (a worker with none counts as infinitely old). One script reads them all: a pipeline of
    10,000 HGETs costs the bench more CPU than the script costs Redis (a few ms a second)."""

    def __init__(self, client: Any, worker_keys: list[str]) -> None:
        self.client = client
        self.script = client.register_script(_OLDEST)
        self.keys = worker_keys
        self.oldest: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def cost_ms(self, redis_cpu: Callable[[Any], float], samples: int = 5) -> float:
        """Redis CPU ms of one sample, from ``samples`` of them back to back."""
        before = redis_cpu(self.client)
        for _ in range(samples):
            self.script(keys=self.keys, args=[time.time()])
        return 1000.0 * (redis_cpu(self.client) - before) / samples

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            oldest, missing = self.script(keys=self.keys, args=[time.time()])
            self.oldest.append(math.inf if int(missing) else float(oldest))


def _scripts_run(client: Any) -> int:
    """EVALSHA calls so far: one per heartbeat, besides housekeeping's few a second."""
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _summarise(result: HeartbeatScaleResult, reports: list[ShardReport], warmup: float) -> None:
    """Latency and errors of the heartbeats sent in the measured window."""
    end = warmup + result.seconds
    latencies = [
        latency * 1000 for r in reports for sent, latency in r.answered if warmup <= sent < end
    ]
    errors = Counter(code for r in reports for sent, code, _ in r.failed if warmup <= sent < end)
    result.answered = len(latencies)
    result.errors = dict(errors)
    result.sent_per_s = (len(latencies) + sum(errors.values())) / result.seconds
    result.p50_ms = percentile(latencies, 0.50)
    result.p99_ms = percentile(latencies, 0.99)
    result.max_ms = max(latencies) if latencies else math.nan
    result.generator_lag_p99_ms = percentile([lag * 1000 for r in reports for lag in r.lags], 0.99)


def render_heartbeats(result: HeartbeatScaleResult) -> str:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    if result.error:
        return f"heartbeats: FAILED ({result.error})"
    errors = ", ".join(f"{n} {code}" for code, n in result.errors.items()) or "none"
    target_rate = result.workers / result.interval
    lines = [
        f"Heartbeats: {result.workers:,} simulated workers every {result.interval:g} s, "
        f"{result.nodepools} node pools (an equal share each), {result.seconds:.0f} s measured "
        f"after {2 * result.interval:.0f} s warm-up",
        f"registered in       {result.register_seconds:.1f} s "
        f"(errors: {result.register_errors or 'none'})",
        f"sent                {result.sent_per_s:,.0f} heartbeats/s (schedule: "
        f"{target_rate:,.0f}/s); answered {result.answered_per_s:,.0f}/s; written to "
        f"Redis {result.written_per_s:,.0f}/s; errors: {errors}",
        f"RPC latency         p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
        f"max {result.max_ms:.1f} ms; generator send lag p99 "
        f"{result.generator_lag_p99_ms:,.0f} ms (whole run)",
        f"oldest heartbeat    {result.oldest_age_max_s:.2f} s at worst, "
        f"{result.oldest_age_p50_s:.2f} s median ({result.samples} samples from Redis, "
        f"every {SAMPLE_EVERY:g} s)",
        "node pool            CPU %  idle CPU %  housekeeper  RSS MB registered / peak / end",
    ]
    for n, pool in enumerate(result.pools, 1):
        lines.append(
            f"  {n} pid {pool.pid:<8} {pool.cpu_percent:6.1f}  {pool.idle_cpu_percent:10.1f}  "
            f"{100 * pool.housekeeping_share:9.0f} %  {pool.rss_registered_mb:6.0f} / "
            f"{pool.rss_peak_mb:.0f} / {pool.rss_end_mb:.0f}"
        )
    lines.append(
        f"  housekeeping:lock held by none in {100 * result.unheld_share:.0f} % of samples"
    )
    cores = result.ms_per_heartbeat * target_rate / 1000.0
    lines += [
        f"node pool CPU per heartbeat (beyond idle): {result.ms_per_heartbeat:.2f} ms; the "
        f"schedule's {target_rate:,.0f}/s would take {cores:.2f} cores of node pool",
        f"Redis CPU           {result.redis_info_cpu_percent:.1f} % (INFO cpu; psutil "
        f"{result.redis_cpu_percent:.1f} %); idle, all registered: "
        f"{result.redis_idle_cpu_percent:.1f} %",
        f"  of which the bench's age samples {result.sampler_cpu_percent:.1f} % "
        f"({result.sampler_ms:.1f} ms each); per heartbeat, less idle and samples: "
        f"{result.redis_us_per_heartbeat:.0f} µs",
        f"generators CPU      {result.generator_cpu_percent:.1f} % ({result.generators} processes)",
        f"online at the end   {result.online_at_end:,} of {result.workers:,}",
    ]
    if result.phase is not None:
        p = result.phase
        lines.append(
            f"machine             steal {p.steal_percent:.1f} %, other processes "
            f"{p.other_percent:.0f} %, busy {p.busy_percent:.0f} %{' NOISY' if p.noisy else ''}"
        )
    peak = max((p.rss_peak_mb for p in result.pools), default=math.nan)
    lines += [
        f"target: each node pool <= 300 MB RSS: {verdict(result.rss_ok)} (peak {peak:.0f} MB)",
        f"target: no heartbeat older than 2 intervals ({2 * result.interval:g} s): "
        f"{verdict(result.age_ok)} (oldest {result.oldest_age_max_s:.2f} s)",
    ]
    return "\n".join(lines)
