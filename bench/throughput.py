"""HiveMind against the task queues a user would pick instead, on one Redis server.

Run from the repository root (``pip install -e '.[bench]'`` first)::

    python -m bench.throughput                      # everything, about 5 minutes on 2 cores
    python -m bench.throughput --only hivemind,rq --tasks 2000
    python -m bench.throughput --skip-missing       # leave out peers that are not installed

For each system (HiveMind with 2 workers, raw and through its futures API, Celery prefork with
2 processes, RQ with 2 workers, Dramatiq with 2 processes x 8 threads, Dask's distributed with
2 worker processes x 2 threads) it measures, on an otherwise idle machine:

- **latency**: submit one no-op task, block until its result is seen, repeat
  (``--latency-samples``, after ``--warmup`` unrecorded rounds); p50 and p99. With
  ``--interleave`` the systems take turns, one round trip each, all of them up at once;
- **throughput**: submit ``--tasks`` no-op tasks as one batch and time until the client has
  seen every result.

Then a fresh HiveMind node pool gets 1,000 simulated workers heartbeating once a second,
pinned to one core, to see whether it keeps up and how much memory it holds.

For every phase it records the CPU stolen by the hypervisor (``/proc/stat``) and the CPU used
by processes outside the run; a phase above ``--max-steal`` or ``--max-other`` per cent is
flagged NOISY and should not be compared (``--wait-quiet`` waits for a quiet machine before
each phase). See bench/README.md for what each figure means and the figures measured so far.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` and `hivemind` importable
    sys.path.insert(0, str(ROOT))

from bench.heartbeat import HeartbeatResult, run_heartbeat  # noqa: E402
from bench.hivemind_runner import (  # noqa: E402
    HIVEMIND_DB,
    HiveMind,
    HiveMindFutures,
    HiveMindMutualTLS,
    HiveMindNoMetrics,
    HiveMindTLS,
)
from bench.machine import NoiseLimits, phase  # noqa: E402
from bench.peers import CeleryPeer, DaskPeer, DramatiqPeer, RqPeer, missing_peers  # noqa: E402
from bench.processes import base_environment, flush_db, free_ports, start_redis  # noqa: E402
from bench.report import machine_header, render, write_json  # noqa: E402
from bench.system import System  # noqa: E402
from bench.task_phases import SystemResult, run_interleaved_latency, run_system  # noqa: E402

#: The HiveMind stacks the benchmark can run, each on the same Redis database in turn.
HIVEMIND_VARIANTS: dict[str, type[HiveMind]] = {
    cls.name: cls
    for cls in (HiveMind, HiveMindFutures, HiveMindTLS, HiveMindMutualTLS, HiveMindNoMetrics)
}
SYSTEMS = (*HIVEMIND_VARIANTS, "celery", "rq", "dramatiq", "dask")
SECTIONS = (*SYSTEMS, "heartbeat")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Batch throughput and idle latency of no-op tasks through HiveMind, "
        "Celery, RQ and Dramatiq on one Redis server, and the node pool under 1,000 "
        "heartbeating workers.",
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the batch")
    parser.add_argument(
        "--latency-samples", type=int, default=300, help="recorded one-at-a-time round trips"
    )
    parser.add_argument(
        "--warmup", type=int, default=30, help="unrecorded round trips before the latency samples"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out peers that are not installed instead of failing",
    )
    parser.add_argument(
        "--hivemind-concurrency",
        type=int,
        default=2,
        help="MAX_CONCURRENT_TASKS of each HiveMind worker",
    )
    parser.add_argument(
        "--rq-worker-class",
        default="rq.worker.SimpleWorker",
        help="`rq worker --worker-class`; rq.Worker forks a work horse per job",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=400.0,
        help="seconds a batch may take before it is cut short",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="take the latency samples of all systems in turns, all of them up at once "
        "(fairer on a machine whose speed drifts), then each system's batch on its own",
    )
    parser.add_argument("--heartbeat-workers", type=int, default=1000)
    parser.add_argument("--heartbeat-seconds", type=float, default=20.0)
    parser.add_argument(
        "--heartbeat-processes", type=int, default=2, help="load-generator processes"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the node pool to one CPU for the heartbeat load",
    )
    parser.add_argument(
        "--max-steal",
        type=float,
        default=5.0,
        help="steal percentage above which a phase is flagged NOISY",
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=10.0,
        help="percentage of the machine used by processes outside the run "
        "above which a phase is flagged NOISY",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each phase, wait up to SECONDS for a 2-second window "
        "within --max-steal and --max-other (for shared machines)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs) after the run"
    )
    args = parser.parse_args(argv)
    args.limits = NoiseLimits(args.max_steal, args.max_other)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if min(args.tasks, args.latency_samples, args.heartbeat_workers) < 1 or args.warmup < 0:
        parser.error("--tasks, --latency-samples and --heartbeat-workers must be positive")
    if args.heartbeat_seconds < 3:
        parser.error("--heartbeat-seconds must be at least 3")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_peers(args.sections)
    if missing:
        lines = [f"  {name}: not installed ({install})" for name, install in missing.items()]
        if not args.skip_missing:
            print(
                "error: peers not installed (or run with --skip-missing, or `pip install -e "
                "'.[bench]'`):\n" + "\n".join(lines),
                file=sys.stderr,
            )
            return 2
        print("note: skipping peers that are not installed:\n" + "\n".join(lines))
        args.sections = [s for s in args.sections if s not in missing]
        if not args.sections:
            print("error: nothing left to run", file=sys.stderr)
            return 2

    def log(line: str) -> None:
        print(line, flush=True)

    header = machine_header(args)
    workdir = Path(tempfile.mkdtemp(prefix="hivemind-bench-"))
    log(f"working in {workdir}")
    redis_port = free_ports(1)[0]
    redis = start_redis(workdir, redis_port)
    header["redis"] = (
        f"one redis-server on 127.0.0.1:{redis_port} (HiveMind db {HIVEMIND_DB}, "
        "Celery db 2, RQ db 3, Dramatiq db 4, heartbeat stack db 5)"
    )
    os.environ["HIVEMIND_BENCH_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
    peer_env = base_environment()
    peer_env["HIVEMIND_BENCH_REDIS_URL"] = os.environ["HIVEMIND_BENCH_REDIS_URL"]
    results: list[SystemResult] = []
    heartbeat: HeartbeatResult | None = None
    started = time.monotonic()
    try:
        with phase("quiet check (3 s idle)", args.limits, log) as quiet:
            time.sleep(3.0)
        header["before the run"] = (
            f"steal {quiet.steal_percent:.1f} %, other processes "
            f"{quiet.other_percent:.0f} % of the machine"
        )
        if quiet.noisy:
            log("  warning: the machine is not quiet; expect NOISY phases")
        # In the order --only gives: `--only hivemind-tls,hivemind` runs TLS first, so two runs
        # in both orders cancel out which one gets the machine's quieter phase.
        names = [name for name in args.sections if name in SYSTEMS]

        def make(name: str, where: str) -> System:
            sysdir = workdir / where
            sysdir.mkdir()
            variant = HIVEMIND_VARIANTS.get(name)
            if variant is not None:
                flush_db(redis_port, HIVEMIND_DB)
                return variant(sysdir, redis_port, args.hivemind_concurrency)
            if name == "celery":
                flush_db(redis_port, 2)
                return CeleryPeer(sysdir, peer_env)
            if name == "rq":
                flush_db(redis_port, 3)
                return RqPeer(sysdir, peer_env, args.rq_worker_class)
            if name == "dask":
                return DaskPeer(sysdir, peer_env)
            flush_db(redis_port, 4)
            return DramatiqPeer(sysdir, peer_env)

        measured = {}
        if args.interleave and names:
            systems = [make(name, f"{name}-latency") for name in names]
            measured = run_interleaved_latency(systems, args, log)
        for name in names:
            results.append(run_system(make(name, name), args, log, measured.get(name)))
        if "heartbeat" in args.sections:
            hbdir = workdir / "heartbeat"
            hbdir.mkdir()
            heartbeat = run_heartbeat(hbdir, redis, redis_port, args, log)
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    finally:
        redis.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    header["run time"] = f"{time.monotonic() - started:.0f} s"
    print(render(results, heartbeat, args, header))
    if args.json:
        write_json(args.json, header, results, heartbeat)
    failed = [r.system for r in results if r.error]
    if heartbeat is not None and heartbeat.error:
        failed.append("heartbeat")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
