"""`hivemind doctor drill`: proof that each check catches the fault it is named for.

On a scratch stack of its own the drill takes a baseline, then for each fault: injects it,
runs the fault's checks until one of them is worse than in the baseline (detected, and how
fast), repairs it the way the catalog says (``--fix``'s actions, `hivemind recover`, or
nothing automatic: then the drill undoes it), and runs the doctor until nothing is worse
than the baseline (clean). A fault this host cannot make is ``not run`` with the reason,
never a pass. A fault no check caught is a miss, and the drill exits 1.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from doctor.context import Context
from doctor.drill.faults import FAULTS, SETTLE, Fault, make_verified_backup
from doctor.drill.scratch import Scratch, scratch_stack
from doctor.engine import run_doctor
from doctor.fixes import apply_fixes, plan_fixes
from doctor.history import SEVERITY
from doctor.model import Report, Status

#: Seconds a fault's checks get to catch it, and a repair or undo to take effect.
DETECT_TIMEOUT = 30.0
REPAIR_TIMEOUT = 60.0
CLEAN_TIMEOUT = 45.0
#: Checks left out of the drill's "clean" comparison: their verdicts follow the machine's
#: load, not the stack (a busy CI host is not a fault the drill made).
NOISY = (
    "resources.cpu",
    "resources.load",
    "resources.top_processes",
    "redis.latency",
    "network.latency",
)
CHECK_TIMEOUT = 5.0


@dataclass
class FaultResult:
    name: str
    description: str
    expects: list[str]
    outcome: str = "not run"  # detected, missed, not run, error
    reason: str = ""  # why not run, or what broke
    detected_by: list[str] = field(default_factory=list)  # check ids: status
    detect_s: float | None = None
    repair: str = "none"
    repaired: bool | None = None  # None: no automatic repair was tried
    repair_s: float | None = None
    clean: bool | None = None
    still_worse: list[str] = field(default_factory=list)


@dataclass
class DrillReport:
    results: list[FaultResult]
    took_s: float
    scratch: str

    @property
    def missed(self) -> list[FaultResult]:
        return [r for r in self.results if r.outcome in ("missed", "error")]

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        return {
            "schema": 1,
            "took_s": round(self.took_s, 1),
            "scratch": self.scratch,
            "summary": counts,
            "faults": [asdict(r) for r in self.results],
        }


def select_faults(names: Iterable[str] = ()) -> list[Fault]:
    """The faults named (all of them when none is); ValueError for an unknown name."""
    wanted = list(names)
    known = {fault.name: fault for fault in FAULTS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[name] for name in wanted] if wanted else list(FAULTS)


def _statuses(scratch: Scratch, only: Sequence[str], skip: Sequence[str] = ()) -> Report:
    return run_doctor(scratch.settings, only=only, skip=skip, timeout=CHECK_TIMEOUT)


def _worse(report: Report, baseline: dict[str, Status]) -> list[str]:
    return [
        f"{r.id}: {r.status.value}"
        for r in report.results
        if SEVERITY[r.status] > SEVERITY[baseline.get(r.id, Status.OK)]
    ]


def _poll(
    take: Callable[[], Report], done: Callable[[Report], bool], timeout: float
) -> tuple[Report, float | None]:
    """The first report ``done`` accepts and the seconds it took, or the last one and None."""
    began = time.monotonic()
    while True:
        report = take()
        if done(report):
            return report, time.monotonic() - began
        if time.monotonic() - began > timeout:
            return report, None
        time.sleep(0.2)


def run_fault(fault: Fault, scratch: Scratch, baseline: dict[str, Status]) -> FaultResult:
    result = FaultResult(fault.name, fault.description, list(fault.expects), repair=fault.repair)
    why = fault.unavailable(scratch)
    if why:
        result.reason = why
        return result
    already = [f"{c} is {baseline[c].value}" for c in fault.expects if baseline.get(c) in (
        Status.FAIL, Status.ERROR)]  # fmt: skip
    if already:
        result.reason = f"cannot be told apart: before the fault {', '.join(already)}"
        return result
    state: dict[str, Any] = {}
    expects = list(fault.expects)
    try:
        fault.inject(scratch, state)
        report, took = _poll(
            lambda: _statuses(scratch, expects), lambda r: bool(_worse(r, baseline)), DETECT_TIMEOUT
        )
        result.detected_by = _worse(report, baseline)
        result.detect_s = None if took is None else round(took, 2)
        result.outcome = "detected" if result.detected_by else "missed"
        if result.detected_by and fault.repair != "none":
            began = time.monotonic()
            _repair(fault, scratch, report)
            _after, mended = _poll(
                lambda: _statuses(scratch, expects),
                lambda r: not _worse(r, baseline),
                REPAIR_TIMEOUT,
            )
            result.repaired = mended is not None
            result.repair_s = round(time.monotonic() - began, 2) if result.repaired else None
    except Exception as exc:  # a fault that cannot be made is reported, not fatal to the drill
        result.outcome = "error"
        result.reason = f"{type(exc).__name__}: {exc}"
        result.reason += " | " + traceback.format_exc(limit=3).replace("\n", " ")[-300:]
    finally:
        try:
            fault.undo(scratch, state)
        except Exception as exc:
            result.reason = (result.reason + f"; undo failed: {exc}").strip("; ")
    time.sleep(SETTLE)
    final, settled = _poll(
        lambda: _statuses(scratch, (), NOISY), lambda r: not _worse(r, baseline), CLEAN_TIMEOUT
    )
    result.clean = settled is not None
    result.still_worse = _worse(final, baseline)
    return result


def _repair(fault: Fault, scratch: Scratch, report: Report) -> None:
    if fault.repair == "fix":
        context = Context(scratch.settings, timeout=CHECK_TIMEOUT)
        apply_fixes(report, plan_fixes(report, context), context)
    elif fault.repair == "recover":
        from recovery import recover

        recover(scratch.settings)


def _settled(report: Report) -> bool:
    """The scratch stack is up: its workers are live, and nothing fails. Warnings may stay:
    a loopback stack always has some (``ports.listen_address``), and the baseline holds them."""
    by_id = {r.id: r.status for r in report.results}
    failing = any(SEVERITY[status] >= SEVERITY[Status.FAIL] for status in by_id.values())
    return by_id.get("workers.count") is Status.OK and not failing


def run_drill(
    faults: Sequence[Fault],
    progress: Callable[[FaultResult], None] = lambda _result: None,
    keep: bool = False,
) -> DrillReport:
    """Every fault of ``faults``, one after another, on one scratch stack."""
    began = time.monotonic()
    results = []
    with scratch_stack(keep=keep) as scratch:
        make_verified_backup(scratch)  # backup.recent is ok before the faults
        _ready, _ = _poll(
            lambda: _statuses(scratch, ("ports", "workers", "process")), _settled, 60.0
        )
        base = _statuses(scratch, (), NOISY)
        baseline = {r.id: r.status for r in base.results}
        for fault in faults:
            result = run_fault(fault, scratch, baseline)
            results.append(result)
            progress(result)
        where = str(scratch.root)
    return DrillReport(results, time.monotonic() - began, where)
