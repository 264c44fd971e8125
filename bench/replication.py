"""What a durable write costs under Redis replication: the task store with and without WAIT.

Run from the repository root::

    python -m bench.replication                        # 5,000 tasks, batches of 1 and 100
    python -m bench.replication --tasks 500 --rounds 2 --batch 1,50      # a quick look
    python -m bench.replication --wait-quiet 60        # on a shared machine

Two setups, both started at the beginning and kept up for the whole run:

- **A**: a lone redis-server; the TaskStore connects through a plain ``redis://`` URL, so
  :func:`hivemind.redis_client.replica_wait` gives None and no script waits.
- **B**: a primary, one replica and one Sentinel; the TaskStore connects through the
  Sentinel's ``redis+sentinel://`` URL, as a node pool of ``hivemind up --ha`` does, so the
  submit and complete scripts are each followed by ``WAIT 1 REDIS_WAIT_MS`` on the same
  connection (``LuaScript(durable=...)`` in hivemind/taskstore/lua.py).

Every data node runs the config :func:`hivemind.ha.data_node_conf` writes for ``up --ha``
(password, noeviction, min-replicas-to-write 1, ...), the Sentinel the one of
:func:`hivemind.ha.sentinel_conf` (its quorum of 2 is never reached by one Sentinel: it
never fails over in the middle of a run). The same overrides apply to all the data nodes: no
AOF unless ``--appendonly`` (the other benches run Redis without persistence), and a
diskless sync; A's server has ``min-replicas-to-write 0``, as it has no replica. The store is
built as ``NodePoolState.open`` builds it (hivemind/nodepool/core.py), minus the metrics hook.

The workload, the same for A and B: ``--tasks`` no-op FUNCTION tasks submitted in calls of
``--batch`` tasks, leased in calls of up to LEASE_BATCH_MAX, and completed (SUCCEEDED) in
calls of ``--batch`` outcomes; every call timed. Each (setup, batch) run starts on a flushed
database, after a short untimed warm-up. The setups take turns, round after round, A B then
B A (the order flips each round), so that the machine's drift touches both alike.

How to read it: B differs from A in two ways. Its primary propagates every write to the
replica (which, on a small machine, also competes for the CPUs), and each submit and complete
then waits for the replica's acknowledgement: one more round trip from the client, plus the
replica applying the write before it answers (so the wait grows with the write's size).
``B/A`` is the cost of both as a ratio (the median of each round's ratio; A and B of a round
run back to back), ``B-A`` the time added per call and per task. The lease never waits: its
B/A is the cost of replication alone (plus noise), and what submit and complete lose beyond it
is the WAIT's. A phase is NOISY when the hypervisor stole more than ``--max-steal`` per cent of
the machine's CPU during it, or processes outside the run used more than ``--max-other`` per
cent; the medians use the rounds in which neither A's nor B's phase was NOISY, or every round
(flagged) when there is none. /proc/stat counts in ticks of 10 ms: the noise figures of a
phase under half a second (small --tasks, the lease) are coarse.
Not a timed test.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import redis

from bench.machine import (
    NoiseLimits,
    PhaseStats,
    cpu_model,
    percentile,
    phase,
    version_of,
    wait_quiet,
)
from bench.processes import redis_binary
from bench.replication_setups import RedisProcesses, Setup, SetupFailed, start_setups
from bench.report import fmt_number, hivemind_revision, text_table
from hivemind import tuning
from hivemind.states import TaskState
from hivemind.taskstore import Lease, NewTask, Outcome, WorkerCaps

WORKER = "w1"
WORKER_CAPS = WorkerCaps(cpu=2, memory_mb=4096, gpu=0, labels=())
#: Long enough that no lease or task timeout runs out in the middle of a phase.
LEASE_SECONDS = 600.0
TASK_TIMEOUT = 300.0
#: What the node pool stores for ``function_spec("hivemind.examples:noop")``.
NOOP_FUNCTION = "hivemind.examples:noop"
NOOP_SPEC = {"function": NOOP_FUNCTION, "args_json": "[]"}
#: Untimed calls of each kind before every timed run (connections, scripts loaded, caches).
WARMUP_CALLS = 20
PHASES = ("submit", "lease", "complete")
#: The phases whose scripts wait for a replica in B.
DURABLE_PHASES = ("submit", "complete")
SETUP_NAMES = ("A", "B")

T = TypeVar("T")


# -- the workload ------------------------------------------------------------------------------


@dataclass
class PhaseRun:
    """One timed phase: its calls, one after the other."""

    name: str
    tasks: int
    call_seconds: list[float]
    wall_seconds: float
    noise: PhaseStats

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.wall_seconds if self.wall_seconds > 0 else math.nan

    @property
    def p50_ms(self) -> float:
        return 1000 * percentile(self.call_seconds, 0.50)

    @property
    def p99_ms(self) -> float:
        return 1000 * percentile(self.call_seconds, 0.99)


@dataclass
class WorkloadRun:
    """One setup's run of the workload at one batch size in one round."""

    setup: str
    batch: int
    round_number: int
    phases: dict[str, PhaseRun]
    #: WAIT commands the primary served during the timed phases, and the calls of the
    #: durable phases (each should have been followed by one WAIT in B, none in A).
    wait_commands: int
    durable_calls: int
    #: Durable writes whose WAIT timed out (TaskStore.unreplicated_writes).
    unreplicated: int
    problems: list[str] = field(default_factory=list)


def _silent(_line: str) -> None:
    pass


def _timed(name: str, limits: NoiseLimits, calls: Iterable[Callable[[], object]]) -> PhaseRun:
    """Run ``calls`` back to back, each one timed; ``tasks`` is filled in by the caller."""
    seconds: list[float] = []
    with phase(name, limits, _silent) as noise:
        began = time.perf_counter()
        for call in calls:
            started = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - started)
        wall = time.perf_counter() - began
    return PhaseRun(name, 0, seconds, wall, noise)


def noop_tasks(count: int) -> list[NewTask]:
    return [
        NewTask(WORKER, NOOP_FUNCTION, "FUNCTION", NOOP_SPEC, TASK_TIMEOUT, 0, 0)
        for _ in range(count)
    ]


def _slices(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def run_workload(
    setup: Setup, tasks: int, batch: int, round_number: int, limits: NoiseLimits
) -> WorkloadRun:
    """Submit, lease and complete ``tasks`` tasks on a flushed database, every call timed."""
    store = setup.store
    label = f"{setup.name} batch {batch} round {round_number}"
    setup.flush()
    waits_before, unreplicated_before = setup.wait_commands(), store.unreplicated_writes

    submit_slices = _slices(noop_tasks(tasks), batch)
    submit = _timed(
        f"{label} submit", limits, (functools.partial(store.submit, s) for s in submit_slices)
    )
    submit.tasks = tasks

    leases: list[Lease] = []

    def lease_more(wanted: int) -> None:
        leases.extend(store.lease(WORKER, WORKER_CAPS, wanted, LEASE_SECONDS))

    def lease_calls() -> Iterator[Callable[[], object]]:
        while len(leases) < tasks:
            had = len(leases)
            yield functools.partial(lease_more, min(tuning.LEASE_BATCH_MAX, tasks - had))
            if len(leases) == had:
                return  # nothing more to lease: reported below

    lease = _timed(f"{label} lease", limits, lease_calls())
    lease.tasks = len(leases)

    outcomes = [Outcome(x.task_id, x.attempt, WORKER, TaskState.SUCCEEDED, "7") for x in leases]
    refusals: list[str] = []

    def complete(chunk: Sequence[Outcome]) -> None:
        refusals.extend(reply for reply in store.complete(chunk) if reply)

    complete_slices = _slices(outcomes, batch)
    completed = _timed(
        f"{label} complete", limits, (functools.partial(complete, s) for s in complete_slices)
    )
    completed.tasks = len(outcomes) - len(refusals)

    run = WorkloadRun(
        setup.name,
        batch,
        round_number,
        {"submit": submit, "lease": lease, "complete": completed},
        wait_commands=setup.wait_commands() - waits_before,
        durable_calls=len(submit.call_seconds) + len(completed.call_seconds),
        unreplicated=store.unreplicated_writes - unreplicated_before,
    )
    if len(leases) < tasks:
        run.problems.append(f"{label}: leased {len(leases)} of {tasks} tasks")
    if refusals:
        run.problems.append(f"{label}: {len(refusals)} outcomes refused (first: {refusals[0]!r})")
    expected_waits = run.durable_calls if setup.replicas else 0
    if run.wait_commands != expected_waits:
        run.problems.append(
            f"{label}: {run.wait_commands} WAIT commands for {run.durable_calls} durable "
            f"calls (expected {expected_waits})"
        )
    if run.unreplicated:
        run.problems.append(f"{label}: {run.unreplicated} writes not acknowledged in time")
    return run


def warm_up(setup: Setup, tasks: int, batch: int, limits: NoiseLimits) -> None:
    """A short untimed run: connections open, scripts loaded, code paths warm."""
    run_workload(setup, min(tasks, WARMUP_CALLS * batch), batch, 0, limits)


def describe_run(run: WorkloadRun) -> str:
    cells = []
    for name in PHASES:
        p = run.phases[name]
        flag = " NOISY" if p.noise.noisy else ""
        cells.append(
            f"{name} {p.tasks_per_s:,.0f}/s p50 {p.p50_ms:.3f} ms "
            f"(steal {p.noise.steal_percent:.0f} %, other {p.noise.other_percent:.0f} %{flag})"
        )
    return f"  round {run.round_number} {run.setup} batch {run.batch:<4} " + "  ".join(cells)


def run_rounds(
    setups: Sequence[Setup], args: argparse.Namespace, log: Callable[[str], None]
) -> list[WorkloadRun]:
    runs: list[WorkloadRun] = []
    for round_number in range(1, args.rounds + 1):
        order = setups if round_number % 2 else list(reversed(setups))
        for batch in args.batch:
            for setup in order:
                warm_up(setup, args.tasks, batch, args.limits)
                wait_quiet(args.limits, args.wait_quiet, log)
                run = run_workload(setup, args.tasks, batch, round_number, args.limits)
                log(describe_run(run))
                for problem in run.problems:
                    log(f"    PROBLEM: {problem}")
                runs.append(run)
    return runs


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseSummary:
    """A phase at one batch size: medians over the rounds used."""

    batch: int
    phase: str
    rounds: int
    quiet_rounds: int
    a_tasks_per_s: float
    b_tasks_per_s: float
    tasks_per_s_ratio: float
    a_p50_ms: float
    b_p50_ms: float
    p50_ratio: float
    added_ms_per_call: float
    a_p99_ms: float
    b_p99_ms: float
    added_us_per_task: float


def _median(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def summarize(runs: Sequence[WorkloadRun], batch: int, phase_name: str) -> PhaseSummary:
    by_round: dict[int, dict[str, PhaseRun]] = {}
    for run in runs:
        if run.batch == batch:
            by_round.setdefault(run.round_number, {})[run.setup] = run.phases[phase_name]
    pairs = [(p["A"], p["B"]) for p in by_round.values() if set(p) == set(SETUP_NAMES)]
    quiet = [(a, b) for a, b in pairs if not (a.noise.noisy or b.noise.noisy)]
    used = quiet or pairs

    def seconds_per_task(p: PhaseRun) -> float:
        return p.wall_seconds / p.tasks if p.tasks else math.nan

    return PhaseSummary(
        batch=batch,
        phase=phase_name,
        rounds=len(pairs),
        quiet_rounds=len(quiet),
        a_tasks_per_s=_median(a.tasks_per_s for a, _ in used),
        b_tasks_per_s=_median(b.tasks_per_s for _, b in used),
        tasks_per_s_ratio=_median(b.tasks_per_s / a.tasks_per_s for a, b in used),
        a_p50_ms=_median(a.p50_ms for a, _ in used),
        b_p50_ms=_median(b.p50_ms for _, b in used),
        p50_ratio=_median(b.p50_ms / a.p50_ms for a, b in used),
        added_ms_per_call=_median(b.p50_ms - a.p50_ms for a, b in used),
        a_p99_ms=_median(a.p99_ms for a, _ in used),
        b_p99_ms=_median(b.p99_ms for _, b in used),
        added_us_per_task=_median(
            1e6 * (seconds_per_task(b) - seconds_per_task(a)) for a, b in used
        ),
    )


def _times(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def render(
    runs: Sequence[WorkloadRun],
    setups: Sequence[Setup],
    args: argparse.Namespace,
    header: dict[str, str],
) -> str:
    out = ["", "=" * 100, "HiveMind durable writes under Redis replication"]
    out += [f"  {k}: {v}" for k, v in header.items()]
    out += ["", "Setups:"] + [f"  {s.name}  {s.description}" for s in setups]
    rows = []
    for batch in args.batch:
        for phase_name in PHASES:
            s = summarize(runs, batch, phase_name)
            waits = " (WAIT)" if phase_name in DURABLE_PHASES else ""
            quiet = f"{s.quiet_rounds}/{s.rounds}" + ("" if s.quiet_rounds else " NOISY")
            rows.append(
                [
                    f"{batch:,}",
                    f"{phase_name}{waits}",
                    fmt_number(s.a_tasks_per_s, 0),
                    fmt_number(s.b_tasks_per_s, 0),
                    _times(s.tasks_per_s_ratio),
                    fmt_number(s.a_p50_ms, 3),
                    fmt_number(s.b_p50_ms, 3),
                    _times(s.p50_ratio),
                    fmt_number(s.added_ms_per_call, 3),
                    fmt_number(s.a_p99_ms, 3),
                    fmt_number(s.b_p99_ms, 3),
                    fmt_number(s.added_us_per_task, 1),
                    quiet,
                ]
            )
    out += [
        "",
        f"{args.tasks:,} no-op tasks per run; submit and complete in calls of `batch` tasks, "
        f"lease in calls of up to {tuning.LEASE_BATCH_MAX}; medians over the rounds; "
        "(WAIT): B waits for the replica",
        text_table(
            [
                "batch",
                "phase",
                "A tasks/s",
                "B tasks/s",
                "B/A",
                "A p50 ms",
                "B p50 ms",
                "B/A",
                "B-A ms/call",
                "A p99 ms",
                "B p99 ms",
                "B-A µs/task",
                "quiet",
            ],
            rows,
        ),
    ]
    durable = [r for r in runs if r.setup == "B"]
    waits = sum(r.wait_commands for r in durable)
    calls = sum(r.durable_calls for r in durable)
    a_waits = sum(r.wait_commands for r in runs if r.setup == "A")
    unreplicated = sum(r.unreplicated for r in runs)
    out += [
        "",
        f"  checks: B's primary served {waits:,} WAITs for {calls:,} submit and complete "
        f"calls, A's {a_waits:,}; writes a replica did not acknowledge in time: "
        f"{unreplicated}",
    ]
    problems = [p for r in runs for p in r.problems]
    out += [f"  PROBLEM: {p}" for p in problems]
    how_to_read = (
        "tasks/s = tasks / the phase's wall time; p50, p99 = one call's latency (a call "
        f"carries `batch` tasks, a lease call up to {tuning.LEASE_BATCH_MAX}). B/A = the "
        "median of each round's B / A: below 1x for tasks/s, above 1x for latency, is what B "
        "pays. B-A = the time B adds, per call (p50) and per task (wall time). B pays for two "
        "things: the primary propagating each write to the replica, and the WAIT after each "
        "submit and complete (one more round trip, plus the replica applying the write before "
        "it acknowledges). The lease never waits: its B/A is replication alone (and noise); "
        "what submit and complete lose beyond it is the WAIT's. quiet = rounds in which "
        "neither A's nor B's phase was NOISY; the medians use those (every round, marked "
        "NOISY, when there is none). Noise is read in 10 ms ticks: coarse for phases under "
        "half a second."
    )
    out += [
        "",
        "How to read it:",
        textwrap.fill(how_to_read, 96, initial_indent="  ", subsequent_indent="  "),
    ]
    phases = [p for r in runs for p in r.phases.values()]
    noisy = [p.name for p in phases if p.noise.noisy]
    limits = args.limits
    out.append("")
    if noisy:
        shown = ", ".join(noisy[:8]) + (f" and {len(noisy) - 8} more" if len(noisy) > 8 else "")
        out += [
            f"NOISY (steal > {limits.max_steal:g} % or other processes > "
            f"{limits.max_other:g} %): {len(noisy)} of {len(phases)} phases: {shown}.",
            "Do not trust those rows; run again when the machine is quiet (or --wait-quiet).",
        ]
    elif phases:
        out.append(
            f"Steal <= {limits.max_steal:g} % and other processes <= {limits.max_other:g} % "
            "in every phase: the figures are comparable."
        )
    return "\n".join(out)


def _redis_version() -> str:
    words = subprocess.run(
        [redis_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return next((w.split("=", 1)[1] for w in words if w.startswith("v=")), "?")


def machine_header(args: argparse.Namespace) -> dict[str, str]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {cpu_model()}, {platform.system()} "
        f"{platform.release()}",
        "versions": f"python {platform.python_version()}, redis-py {version_of('redis')}, "
        f"redis-server {_redis_version()}",
        "hivemind": hivemind_revision(),
        "options": f"--tasks {args.tasks} --batch {','.join(map(str, args.batch))} "
        f"--rounds {args.rounds} --wait-quiet {args.wait_quiet:g}"
        + (" --appendonly" if args.appendonly else ""),
        "data nodes": "hivemind.ha.data_node_conf, appendonly "
        + ("yes (everysec)" if args.appendonly else "no")
        + ", diskless sync",
    }


# -- the command -------------------------------------------------------------------------------


def _batch_sizes(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive sizes, e.g. 1,100")
    return list(dict.fromkeys(values))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replication",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per run")
    parser.add_argument(
        "--batch",
        type=_batch_sizes,
        default=[1, 100],
        help="tasks per submit and per complete call, a comma list (default 1,100)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="rounds of A and B at each batch size, the order flipped each round (default 4)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for a 2-second window within --max-steal "
        "and --max-other (for shared machines)",
    )
    parser.add_argument(
        "--appendonly",
        action="store_true",
        help="run every data node with AOF on (appendfsync everysec), as `up --ha` does",
    )
    parser.add_argument("--max-steal", type=float, default=5.0, help="NOISY above this steal %%")
    parser.add_argument(
        "--max-other", type=float, default=10.0, help="NOISY above this share of other processes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)
    if min(args.tasks, args.rounds) < 1 or args.wait_quiet < 0:
        parser.error("--tasks and --rounds must be positive, --wait-quiet not negative")
    args.limits = NoiseLimits(args.max_steal, args.max_other)
    return args


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops what the run started, as Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)

    def log(line: str) -> None:
        print(line, flush=True)

    header = machine_header(args)
    workdir = Path(tempfile.mkdtemp(prefix="hivemind-replication-"))
    log(f"working in {workdir}")
    processes = RedisProcesses(workdir, secrets.token_hex(16), args.appendonly)
    setups: list[Setup] = []
    started = time.monotonic()
    try:
        setups.extend(start_setups(processes, log))
        with phase("quiet check (3 s idle)", args.limits, log) as quiet:
            time.sleep(3.0)
        header["before the run"] = (
            f"steal {quiet.steal_percent:.1f} %, other processes "
            f"{quiet.other_percent:.0f} % of the machine"
        )
        runs = run_rounds(setups, args, log)
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    except (SetupFailed, redis.RedisError) as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        return 1
    finally:
        for setup in setups:
            setup.close()
        processes.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    header["run time"] = f"{time.monotonic() - started:.0f} s"
    print(render(runs, setups, args, header))
    return 1 if any(r.problems for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
