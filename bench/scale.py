"""Scale-out figures: several node pools on one Redis (issue 19's "Scale" part).

Run from the repository root::

    python -m bench.scale heartbeats     # 10,000 workers every 5 s, 2 node pools: ~2 minutes
    python -m bench.scale throughput     # 5,000 tasks through 1, 2 and 4 node pools: ~2 minutes
    python -m bench.scale heartbeats --workers 2000 --seconds 20   # a quick look

``heartbeats``: simulated workers (bench/scale_heartbeats.py) heartbeat every ``--interval``
seconds, dealt evenly over ``--nodepools`` node pools; it prints heartbeat latency, each node
pool's RSS and CPU, Redis's CPU, the oldest heartbeat seen in Redis, and PASS/FAIL for the
targets (each node pool <= 300 MB RSS, no heartbeat older than 2 intervals).

``throughput``: a batch of no-op tasks through 1, 2 and 4 node pools with the same real
workers (bench/scale_throughput.py): tasks/s, the scaling factor, the CPU split, and what
each task costs Redis (commands, scripts, CPU µs), with the ceiling of one Redis core.

Every run starts its own redis-server on a free port (never 6379) and its node pools
(`python -m hivemind nodepool`, metrics off) in a temporary HIVEMIND_HOME. Not a timed test.
Exit code 1 when a target fails or a configuration fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.machine import NoiseLimits, cpu_model, phase, version_of
from bench.processes import free_ports, redis_binary, start_redis
from bench.scale_heartbeats import render_heartbeats, run_heartbeat_scale
from bench.scale_throughput import render_throughput, run_throughput


def _counts(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive counts")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--max-steal", type=float, default=5.0, help="NOISY above this steal %%")
    parser.add_argument(
        "--max-other", type=float, default=10.0, help="NOISY above this share of other processes"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measured phase, wait up to SECONDS for a quiet 2-second window",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    sub = parser.add_subparsers(dest="command", required=True)

    beats = sub.add_parser("heartbeats", help="simulated workers heartbeating")
    beats.add_argument("--workers", type=int, default=10_000)
    beats.add_argument("--nodepools", type=int, default=2)
    beats.add_argument("--interval", type=float, default=5.0, help="HEARTBEAT_INTERVAL (s)")
    beats.add_argument("--seconds", type=float, default=60.0, help="measured window (s)")
    beats.add_argument("--generators", type=int, default=2, help="load-generator processes")

    batch = sub.add_parser("throughput", help="batch throughput through 1, 2 and 4 node pools")
    batch.add_argument("--tasks", type=int, default=5000, help="tasks per configuration")
    batch.add_argument("--nodepools", type=_counts, default=[1, 2, 4], help="e.g. 1,2,4")
    batch.add_argument("--workers", type=int, default=4, help="workers per configuration")
    batch.add_argument(
        "--per-nodepool", action="store_true", help="--workers per node pool instead"
    )
    batch.add_argument("--concurrency", type=int, default=2, help="MAX_CONCURRENT_TASKS")
    batch.add_argument("--warmup", type=int, default=100, help="untimed tasks per client")
    batch.add_argument("--batch-timeout", type=float, default=300.0)
    batch.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the configurations N times (every other reversed)",
    )
    args = parser.parse_args(argv)
    args.limits = NoiseLimits(args.max_steal, args.max_other)
    if args.command == "heartbeats" and (
        min(args.workers, args.nodepools, args.generators) < 1 or args.interval <= 0
    ):
        parser.error("--workers, --nodepools, --generators and --interval must be positive")
    if (
        args.command == "throughput"
        and min(args.tasks, args.workers, args.concurrency, args.rounds) < 1
    ):
        parser.error("--tasks, --workers, --concurrency and --rounds must be positive")
    return args


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a timeout) stops what the run started, as Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)

    def log(line: str) -> None:
        print(line, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="hivemind-scale-"))
    [redis_port] = free_ports(1)
    log(f"working in {workdir}; redis-server on 127.0.0.1:{redis_port}")
    redis_server = start_redis(workdir, redis_port)
    started = time.monotonic()
    try:
        with phase("quiet check (3 s idle)", args.limits, log):
            time.sleep(3.0)
        if args.command == "heartbeats":
            result = run_heartbeat_scale(workdir, redis_server, redis_port, args, log)
            report, failed = render_heartbeats(result), bool(result.error)
            failed = failed or not (result.rss_ok and result.age_ok)
        else:
            results = run_throughput(workdir, redis_server, redis_port, args, log)
            report = render_throughput(results, os.cpu_count() or 1)
            failed = any(r.error for r in results)
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    finally:
        redis_server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(_machine(time.monotonic() - started))
    print(report)
    return 1 if failed else 0


def _machine(seconds: float) -> str:
    import subprocess

    redis_version = subprocess.run(
        [redis_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    version = next((w.split("=", 1)[1] for w in redis_version if w.startswith("v=")), "?")
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {sys.version.split()[0]}, "
        f"grpcio {version_of('grpcio')}, redis-py {version_of('redis')}, "
        f"redis-server {version}; run time {seconds:.0f} s; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


if __name__ == "__main__":
    sys.exit(main())
