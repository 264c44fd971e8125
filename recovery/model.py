"""What a playbook is once loaded, and what running it produces.

A playbook is validated whole before anything runs (:mod:`recovery.loader`); these are the
checked objects the engine works with, and the per-step and per-host results it reports
(and sends back as JSON from a host reached over SSH).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from hivemind.errors import HivemindError

#: A variable's use in a step's parameters: ``{{ name }}`` (checked by the loader against the
#: playbook's ``vars``, filled in by the engine).
VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class ActionFailed(HivemindError):
    """An action could not do what the step asked; the message says why.

    Defined here, beside the results it becomes (a failed :class:`StepResult`), so the
    actions (:mod:`recovery.actions`) and the helpers they use (:mod:`recovery.services`)
    both import it from one place and never each other.
    """


@dataclass(frozen=True)
class Condition:
    """``when``: the doctor check ``check`` has one of ``statuses`` right now."""

    check: str
    statuses: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.check} is {'/'.join(self.statuses)}"


@dataclass(frozen=True)
class Step:
    name: str
    action: str
    params: dict[str, Any]
    #: Any one condition met runs the step; empty: always.
    when: tuple[Condition, ...] = ()
    retries: int = 0
    delay: float = 1.0
    timeout: float = 60.0
    #: Doctor checks that must pass (ok or warn) after the step.
    postcondition: tuple[str, ...] = ()
    ignore_errors: bool = False
    #: Where the step was written, for messages: ``file:line``.
    where: str = ""

    def precondition(self) -> str:
        return " or ".join(c.describe() for c in self.when) if self.when else "always"


@dataclass(frozen=True)
class Playbook:
    name: str
    description: str
    steps: tuple[Step, ...]
    #: ``all``, or the inventory groups it runs on.
    hosts: tuple[str, ...] = ("all",)
    #: Never chosen by `hivemind recover`; run only when asked for by name.
    opt_in: bool = False
    allow_shell: bool = False
    #: Defaults; a None default must be given with ``--var``.
    variables: dict[str, str | None] = field(default_factory=dict)
    source: str = ""
    file: str = ""

    def required_variables(self) -> list[str]:
        return [name for name, value in self.variables.items() if value is None]


class StepStatus(str, enum.Enum):
    CHANGED = "changed"
    OK = "ok"  # ran, and found nothing to do
    SKIPPED = "skipped"  # its `when` was not met
    FAILED = "failed"
    NOT_RUN = "not-run"  # an earlier step failed
    PLANNED = "planned"  # --dry-run: would run

    @property
    def changed(self) -> bool:
        return self is StepStatus.CHANGED


@dataclass
class StepResult:
    step: str
    action: str
    status: StepStatus
    message: str
    precondition: str = "always"
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "action": self.action,
            "status": self.status.value,
            "message": self.message,
            "precondition": self.precondition,
            "before": self.before,
            "after": self.after,
            "duration_s": round(self.duration_s, 3),
            "attempts": self.attempts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        return cls(
            step=str(data["step"]),
            action=str(data["action"]),
            status=StepStatus(data["status"]),
            message=str(data.get("message", "")),
            precondition=str(data.get("precondition", "always")),
            before=dict(data.get("before") or {}),
            after=dict(data.get("after") or {}),
            duration_s=float(data.get("duration_s", 0.0)),
            attempts=int(data.get("attempts", 0)),
        )


@dataclass
class HostRun:
    """One playbook on one host: its steps' results, or why the host could not be used."""

    host: str
    playbook: str
    steps: list[StepResult] = field(default_factory=list)
    #: The host could not be reached or used at all.
    error: str | None = None
    dry_run: bool = False
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None or any(s.status is StepStatus.FAILED for s in self.steps)

    @property
    def changed(self) -> list[StepResult]:
        return [s for s in self.steps if s.status.changed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "playbook": self.playbook,
            "error": self.error,
            "dry_run": self.dry_run,
            "failed": self.failed,
            "duration_s": round(self.duration_s, 3),
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostRun:
        return cls(
            host=str(data["host"]),
            playbook=str(data["playbook"]),
            steps=[StepResult.from_dict(s) for s in data.get("steps") or []],
            error=data.get("error"),
            dry_run=bool(data.get("dry_run")),
            duration_s=float(data.get("duration_s", 0.0)),
        )
