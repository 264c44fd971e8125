"""Running a playbook on this host: each step's precondition (`when`), the action itself with
its retries, then its postcondition, each step's result audited.

A step whose `when` is not met is skipped; an action that finds nothing to do says so
(status ``ok``), which is what makes a second run on a healthy system a no-op. A failed step
stops the playbook on this host (unless it says ``ignore_errors``). Under ``dry_run`` every
action only reads, and the run is the plan.
"""

from __future__ import annotations

import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from doctor.model import Report, Status
from hivemind.config import Settings
from hivemind.errors import UsageError
from recovery import audit
from recovery.actions import StepContext, all_actions, with_defaults
from recovery.model import VARIABLE, ActionFailed, HostRun, Playbook, Step, StepResult, StepStatus

#: Statuses that pass a postcondition.
PASSING = (Status.OK, Status.WARN)


@dataclass
class RunOptions:
    dry_run: bool = False
    variables: dict[str, str] = field(default_factory=dict)
    emit: Callable[[str], None] = lambda _line: None


def resolve_variables(playbook: Playbook, given: dict[str, str]) -> dict[str, str]:
    """Every variable's value: its default, or the one ``given`` (--var); a name the playbook
    does not declare, or a required one not given, is a usage error."""
    unknown = sorted(set(given) - set(playbook.variables))
    if unknown:
        declared = ", ".join(playbook.variables) or "none"
        raise UsageError(f"{playbook.name} has no variable {unknown[0]!r} (it has: {declared})")
    values = {k: v for k, v in playbook.variables.items() if v is not None}
    values.update(given)
    missing = [name for name in playbook.variables if name not in values]
    if missing:
        raise UsageError(
            f"{playbook.name} needs --var {missing[0]}=VALUE "
            f"(required: {', '.join(playbook.required_variables())})"
        )
    return values


def render(
    params: dict[str, Any], values: dict[str, str], *, quote: bool = False
) -> dict[str, Any]:
    """``params`` with every ``{{ name }}`` replaced by its value (shell-quoted with
    ``quote``, so a value given with --var is one word and never a command of its own)."""

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return VARIABLE.sub(
                lambda m: shlex.quote(values[m.group(1)]) if quote else values[m.group(1)], value
            )
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return {key: fill(value) for key, value in params.items()}


def run_playbook(playbook: Playbook, settings: Settings, options: RunOptions) -> HostRun:
    """Run (or under ``dry_run``, plan) ``playbook`` on this host."""
    values = resolve_variables(playbook, options.variables)
    host = socket.gethostname()
    run = HostRun(host, playbook.name, dry_run=options.dry_run)
    began = time.monotonic()
    stopped_by: str | None = None
    for step in playbook.steps:
        if stopped_by is not None:
            message = f"not run: step {stopped_by!r} failed"
            result = StepResult(step.name, step.action, StepStatus.NOT_RUN, message)
        else:
            options.emit(f"{host}: {step.name}")
            result = run_step(step, settings, values, options)
            options.emit(f"{host}:   {result.status.value}: {result.message}")
            if not options.dry_run:
                audit.record(settings, host, playbook.name, result)
            if result.status is StepStatus.FAILED and not step.ignore_errors:
                stopped_by = step.name
        run.steps.append(result)
    run.duration_s = time.monotonic() - began
    return run


def _statuses(report: Report) -> dict[str, str]:
    return {r.id: r.status.value for r in report.results}


def run_step(
    step: Step, settings: Settings, values: dict[str, str], options: RunOptions
) -> StepResult:
    began = time.monotonic()
    spec = all_actions()[step.action]
    context = StepContext(settings, timeout=step.timeout, dry_run=options.dry_run)
    context.emit = options.emit
    result = StepResult(step.name, step.action, StepStatus.OK, "", step.precondition())
    try:
        if step.when:
            seen = _statuses(context.doctor([c.check for c in step.when]))
            met = [c for c in step.when if seen.get(c.check) in c.statuses]
            now = ", ".join(f"{c.check} is {seen.get(c.check, 'unknown')}" for c in step.when)
            if not met:
                result.status = StepStatus.SKIPPED
                result.message = f"precondition not met: {now}"
                return _timed(result, began)
            result.precondition = f"{step.precondition()} (now: {now})"
        params = with_defaults(spec, render(step.params, values, quote=spec.shell))
        changed = False
        while True:
            result.attempts += 1
            try:
                outcome = spec.function(context, params)
                changed = changed or outcome.changed
                if result.attempts == 1:
                    result.before = outcome.before
                result.after = outcome.after
                result.message = outcome.message
                if step.postcondition and not options.dry_run:
                    _check_postcondition(context, step)
                break
            except ActionFailed as exc:
                if result.attempts > step.retries or options.dry_run:
                    raise
                options.emit(
                    f"  attempt {result.attempts} failed ({exc}); again in {step.delay:g}s"
                )
                time.sleep(step.delay)
        if options.dry_run:
            result.status = StepStatus.PLANNED if changed else StepStatus.OK
        else:
            result.status = StepStatus.CHANGED if changed else StepStatus.OK
    except ActionFailed as exc:
        result.status, result.message = StepStatus.FAILED, str(exc)
    except Exception as exc:  # a broken action is a failed step, never a crashed run
        result.status = StepStatus.FAILED
        result.message = f"{type(exc).__name__}: {exc}"
    return _timed(result, began)


def _check_postcondition(context: StepContext, step: Step) -> None:
    report = context.doctor(step.postcondition)
    bad = [r for r in report.results if r.status not in PASSING]
    if bad:
        why = "; ".join(f"{r.id} is {r.status.value}: {r.finding.summary}" for r in bad)
        raise ActionFailed(f"postcondition failed: {why}")


def _timed(result: StepResult, began: float) -> StepResult:
    result.duration_s = time.monotonic() - began
    return result
