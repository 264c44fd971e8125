"""What a doctor run produces: statuses, findings, check descriptions and the report."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from doctor.context import Context

#: Version of the JSON report; bumped only on an incompatible change.
REPORT_SCHEMA = 1


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"

    @property
    def is_problem(self) -> bool:
        return self in (Status.WARN, Status.FAIL, Status.ERROR)


@dataclass(frozen=True)
class Finding:
    """One check's verdict: what it saw (``evidence``) and what to do about it (``fix``)."""

    status: Status
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    fix: str | None = None

    @classmethod
    def ok(cls, summary: str, **evidence: Any) -> Finding:
        return cls(Status.OK, summary, evidence)

    @classmethod
    def warn(cls, summary: str, fix: str | None = None, **evidence: Any) -> Finding:
        return cls(Status.WARN, summary, evidence, fix)

    @classmethod
    def fail(cls, summary: str, fix: str | None = None, **evidence: Any) -> Finding:
        return cls(Status.FAIL, summary, evidence, fix)

    @classmethod
    def skip(cls, reason: str, **evidence: Any) -> Finding:
        return cls(Status.SKIP, reason, evidence)

    @classmethod
    def error(cls, reason: str, **evidence: Any) -> Finding:
        return cls(Status.ERROR, reason, evidence)


CheckFunction = Callable[["Context"], Finding]


@dataclass(frozen=True)
class CheckSpec:
    """A registered check: its stable id, where it sits in the guide and how it runs."""

    id: str
    title: str
    guide: str
    function: CheckFunction
    #: True when ``--fix`` knows a safe action for some of its findings.
    fixable: bool = False
    #: True when it only reads this host (files, /proc, local tools), so it runs wherever the
    #: host is reached, even where HiveMind is not installed.
    host_probe: bool = False

    @property
    def category(self) -> str:
        return self.id.split(".", 1)[0]


@dataclass(frozen=True)
class CheckResult:
    """A finding with the description of the check that made it (so a report read back from
    another host's JSON needs no registry)."""

    id: str
    title: str
    guide: str
    finding: Finding
    fixable: bool = False
    duration_s: float = 0.0

    @classmethod
    def of(cls, spec: CheckSpec, finding: Finding, duration_s: float) -> CheckResult:
        return cls(spec.id, spec.title, spec.guide, finding, spec.fixable, duration_s)

    @property
    def category(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def status(self) -> Status:
        return self.finding.status

    @property
    def can_fix(self) -> bool:
        return self.fixable and self.finding.status in (Status.WARN, Status.FAIL)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "title": self.title,
            "status": self.finding.status.value,
            "summary": self.finding.summary,
            "evidence": jsonable(self.finding.evidence),
            "fix": self.finding.fix,
            "fixable": self.can_fix,
            "guide": self.guide,
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> CheckResult:
        finding = Finding(
            Status(row["status"]),
            str(row["summary"]),
            dict(row.get("evidence") or {}),
            row.get("fix"),
        )
        return cls(
            str(row["id"]),
            str(row["title"]),
            str(row["guide"]),
            finding,
            bool(row.get("fixable")),
        )


@dataclass(frozen=True)
class Report:
    host: str
    started_at: str
    duration_s: float
    results: list[CheckResult]

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in Status}
        for result in self.results:
            counts[result.status.value] += 1
        return counts

    def result(self, check_id: str) -> CheckResult:
        for result in self.results:
            if result.id == check_id:
                return result
        raise KeyError(check_id)

    def failed(self, *, strict: bool = False) -> bool:
        """True when the run should exit non-zero: a fail or error (or, strictly, a warn)."""
        bad = {Status.FAIL, Status.ERROR} | ({Status.WARN} if strict else set())
        return any(result.status in bad for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "host": self.host,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "summary": self.counts(),
            "checks": [result.to_dict() for result in self.results],
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Report:
        """A report read back from ``hivemind doctor --json`` (run on another host, say)."""
        if document.get("schema") != REPORT_SCHEMA:
            raise ValueError(f"unsupported doctor report schema {document.get('schema')!r}")
        return cls(
            host=str(document["host"]),
            started_at=str(document["started_at"]),
            duration_s=float(document["duration_s"]),
            results=[CheckResult.from_dict(row) for row in document["checks"]],
        )


def jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot hold turned into strings (paths, enums, sets)."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [jsonable(item) for item in items]
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
