"""`hivemind doctor --fix`: the safe, reversible actions that CHECKS.md allows.

A fixable check registers a planner with ``@fixer``; from a warn/fail finding it plans
:class:`Action` objects, each shown to the operator before it runs. Nothing here is
destructive: no FLUSHALL, no deleting user data, no rewriting of Redis's config file. Every
applied action is appended to ``$HIVEMIND_HOME/doctor/actions.log`` as a JSON line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from doctor.context import Context
from doctor.engine import run_checks
from doctor.model import CheckResult, Finding, Report, Status
from doctor.registry import all_checks
from hivemind.errors import HivemindError


@dataclass(frozen=True)
class Action:
    """One change ``--fix`` may make."""

    check_id: str
    #: What it does, in words, with the value it replaces.
    description: str
    #: The equivalent command an operator could type, shown before it runs.
    command: str
    #: Does it; returns what was done. Raises on failure.
    apply: Callable[[], str] = field(repr=False, compare=False)
    #: Checks whose verdict the action can change, re-run afterwards.
    touches: tuple[str, ...] = ()

    @property
    def rechecks(self) -> tuple[str, ...]:
        return (self.check_id, *[c for c in self.touches if c != self.check_id])


FixPlanner = Callable[[Context, Finding], list[Action]]
_PLANNERS: dict[str, FixPlanner] = {}


def fixer(check_id: str) -> Callable[[FixPlanner], FixPlanner]:
    """Register the planner of ``check_id``'s auto-fix."""

    def register(planner: FixPlanner) -> FixPlanner:
        _PLANNERS[check_id] = planner
        return planner

    return register


def planners() -> dict[str, FixPlanner]:
    all_checks()  # importing the checks registers their planners
    return dict(_PLANNERS)


def plan_fixes(report: Report, context: Context) -> list[Action]:
    """The actions that would fix the report's fixable warn/fail findings."""
    known = planners()
    actions: list[Action] = []
    for result in report.results:
        if result.status not in (Status.WARN, Status.FAIL) or result.id not in known:
            continue
        try:
            planned = known[result.id](context, result.finding)
        except Exception as exc:  # planning reads the system too; it must not end the run
            planned = [_unplannable(result, exc)]
        # Several findings may call for the same action (one `hivemind up` starts them all).
        actions += [a for a in planned if a.command not in {b.command for b in actions}]
    return actions


def _unplannable(result: CheckResult, exc: Exception) -> Action:
    def refuse() -> str:
        raise HivemindError(f"could not plan a fix for {result.id}: {exc}")

    return Action(result.id, f"(could not plan: {exc})", "-", refuse)


@dataclass(frozen=True)
class ActionOutcome:
    action: Action
    applied: bool
    message: str


@dataclass(frozen=True)
class FixRun:
    outcomes: list[ActionOutcome]
    #: The re-checked results, before and after, by check id.
    before: dict[str, CheckResult]
    after: dict[str, CheckResult]


def apply_fixes(
    report: Report,
    actions: list[Action],
    context: Context,
    confirm: Callable[[Action], bool] = lambda _action: True,
) -> FixRun:
    """Run each confirmed action, log it, then re-run the checks the actions touched."""
    outcomes = []
    for action in actions:
        if not confirm(action):
            outcomes.append(ActionOutcome(action, False, "declined"))
            continue
        began = time.monotonic()
        try:
            message, applied = action.apply(), True
        except Exception as exc:  # an action that fails is reported; the others still run
            message, applied = f"failed: {exc}", False
        outcomes.append(ActionOutcome(action, applied, message))
        _log(context, action, applied, message, time.monotonic() - began)

    touched = {check for o in outcomes if o.applied for check in o.action.rechecks}
    specs = [spec for spec in all_checks() if spec.id in touched]
    context.forget()
    rechecked = run_checks(specs, context)
    before = {r.id: r for r in report.results if r.id in touched}
    return FixRun(outcomes, before, {r.id: r for r in rechecked})


def actions_log(context: Context) -> Path:
    return Path(context.settings.home) / "doctor" / "actions.log"


def _log(context: Context, action: Action, applied: bool, message: str, took: float) -> None:
    path = actions_log(context)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": context.host,
        "user": os.environ.get("USER") or str(os.getuid()),
        "check": action.check_id,
        "action": action.description,
        "command": action.command,
        "applied": applied,
        "result": message,
        "duration_s": round(took, 3),
    }
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(entry, ensure_ascii=False) + "\n")
