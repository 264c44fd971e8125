"""How long `hivemind doctor` takes: on a healthy stack, and with Redis down.

Its peer is what an operator does without it: the guide's quick diagnosis (快速診斷) typed by
hand, its commands run one after another. Both are timed in the same run, on the same stack.

    python -m bench.doctor                 # 5 runs of each, about a minute
    python -m bench.doctor --runs 10 --timeout 5

The targets (issue 3): a full doctor run at most 2 s wall on a healthy stack, and at most the
check timeout plus 1 s with Redis down. Wall time includes starting the interpreter, as an
operator's `hivemind doctor` does; the report's own ``duration_s`` (the checks alone) is
printed beside it. Not a timed test: nothing in the test suite depends on it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.hivemind_runner import HiveMindStack
from bench.machine import percentile
from bench.processes import ROOT, free_ports, start_redis

TARGET_HEALTHY_S = 2.0
TARGET_DOWN_MARGIN_S = 1.0


def guide_quick_check(stack: HiveMindStack, redis_port: int) -> list[str]:
    """The guide's 快速診斷 and 日誌檢查 commands, for this stack's ports and files."""
    home = stack.home
    return [
        "ps aux | grep -E 'hivemind (nodepool|master|worker)' | grep -v grep",
        f"ss -tlnp | grep -E ':({stack.grpc_port}|{stack.master_port}|{redis_port})\\b'",
        f"redis-cli -p {redis_port} ping",
        f"redis-cli -p {redis_port} hgetall worker_nodes",
        f"redis-cli -p {redis_port} llen task_queue",
        f"sqlite3 {home}/node_pool/users.db 'SELECT count(*) FROM users;'",
        f"tail -n 100 {home}/node_pool/logs/nodepool.log",
        f"grep -ciE 'error|exception|failed' {home}/node_pool/logs/nodepool.log",
        "free -h",
        "df -h",
        "uptime",
    ]


def time_guide(commands: list[str]) -> float:
    began = time.perf_counter()
    for command in commands:
        subprocess.run(["sh", "-c", command], capture_output=True, timeout=60, check=False)
    return time.perf_counter() - began


def time_doctor(stack: HiveMindStack, timeout: float) -> tuple[float, dict[str, object]]:
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hivemind", "doctor", "--json", "--timeout", f"{timeout:g}"],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    wall = time.perf_counter() - began
    if proc.returncode not in (0, 1):
        raise SystemExit(f"hivemind doctor exited {proc.returncode}: {proc.stderr[-500:]}")
    return wall, json.loads(proc.stdout)


def _stats(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5):.3f}s  max {max(values):.3f}s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-check timeout (s)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hivemind-bench-doctor-") as tmp:
        workdir = Path(tmp)
        (redis_port,) = free_ports(1)
        redis = start_redis(workdir, redis_port)
        stack = HiveMindStack(workdir, redis_port, db=0, workers=1, concurrency=2)
        try:
            stack.up()
            time_doctor(stack, args.timeout)  # warm the page cache once
            healthy = [time_doctor(stack, args.timeout) for _ in range(args.runs)]
            guide = [time_guide(guide_quick_check(stack, redis_port)) for _ in range(args.runs)]
            redis.stop()
            down = [time_doctor(stack, args.timeout) for _ in range(args.runs)]
            guide_down = [
                time_guide(guide_quick_check(stack, redis_port)) for _ in range(args.runs)
            ]
        finally:
            stack.down()
            redis.stop()

    healthy_wall = [wall for wall, _ in healthy]
    healthy_checks = [float(report["duration_s"]) for _, report in healthy]  # type: ignore[arg-type]
    down_wall = [wall for wall, _ in down]
    checks = len(healthy[0][1]["checks"])  # type: ignore[arg-type]
    summary = healthy[-1][1]["summary"]
    down_summary = down[-1][1]["summary"]
    ratio = percentile(guide, 0.5) / percentile(healthy_wall, 0.5)
    ratio_down = percentile(guide_down, 0.5) / percentile(down_wall, 0.5)
    limit_down = args.timeout + TARGET_DOWN_MARGIN_S
    print(f"hivemind doctor: {checks} checks, {args.runs} runs each, timeout {args.timeout:g}s")
    print(
        f"healthy stack   doctor wall   {_stats(healthy_wall)}   (checks alone "
        f"{_stats(healthy_checks)})   {summary}"
    )
    print(f"                guide by hand {_stats(guide)}   -> doctor is {ratio:.2f}× its speed")
    print(f"redis down      doctor wall   {_stats(down_wall)}   {down_summary}")
    print(f"                guide by hand {_stats(guide_down)}   -> {ratio_down:.2f}×")
    ok_healthy = max(healthy_wall) <= TARGET_HEALTHY_S
    ok_down = max(down_wall) <= limit_down
    print(
        f"target healthy ≤ {TARGET_HEALTHY_S:g}s: {'met' if ok_healthy else 'MISSED'}; "
        f"redis down ≤ {limit_down:g}s: {'met' if ok_down else 'MISSED'}"
    )
    return 0 if ok_healthy and ok_down else 1


if __name__ == "__main__":
    raise SystemExit(main())
