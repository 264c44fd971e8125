"""The last healthy run, and what changed since: `hivemind doctor --since-healthy`.

A run with no ``fail`` and no ``error`` is healthy. Its findings are kept per check in
``$HIVEMIND_HOME/doctor/last-healthy.json``: a run of some checks (``--only``) updates those
checks and keeps the rest. During an outage, the first question is what changed since
things last worked. :func:`changes_since` answers it: the checks whose status is worse than
in their last healthy run, with the evidence that differs.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctor.model import CheckResult, Report, Status, jsonable

#: How bad each status is; a change to a higher rank is a change for the worse. A skip is
#: ranked with ok: a check that cannot run here is not a new fault.
SEVERITY = {Status.OK: 0, Status.SKIP: 0, Status.WARN: 1, Status.FAIL: 2, Status.ERROR: 3}
HEALTHY_FILE = "last-healthy.json"


@dataclass(frozen=True)
class Healthy:
    """The newest healthy finding of each check, and when its run started."""

    results: dict[str, CheckResult]
    started_at: dict[str, str]


@dataclass(frozen=True)
class Change:
    """A check that is worse now than in its last healthy run."""

    id: str
    before: Status
    after: Status
    healthy_at: str
    summary: str
    #: Evidence keys whose values differ: ``key -> (then, now)`` (None where absent).
    evidence: dict[str, tuple[Any, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "before": self.before.value,
            "after": self.after.value,
            "healthy_at": self.healthy_at,
            "summary": self.summary,
            "evidence": {k: {"then": t, "now": n} for k, (t, n) in self.evidence.items()},
        }


def healthy_path(home: Path) -> Path:
    return Path(home) / "doctor" / HEALTHY_FILE


def is_healthy(report: Report) -> bool:
    return not any(r.status in (Status.FAIL, Status.ERROR) for r in report.results)


def load_healthy(home: Path) -> Healthy | None:
    """The kept findings, or None when there are none (or the file is unreadable: it is
    rewritten by the next healthy run)."""
    try:
        document = json.loads(healthy_path(home).read_text())
        rows = document["checks"]
        return Healthy(
            results={row["id"]: CheckResult.from_dict(row) for row in rows},
            started_at={row["id"]: str(row["started_at"]) for row in rows},
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_if_healthy(report: Report, home: Path) -> bool:
    """Keep the report's findings as the last healthy ones when nothing failed. Atomic: a
    reader sees the old file or the new one. A home that cannot be written (read-only, full)
    keeps nothing: False, never an error, since the run itself has succeeded."""
    try:
        return _record(report, home)
    except OSError:
        return False


def _record(report: Report, home: Path) -> bool:
    if not is_healthy(report) or not report.results:
        return False
    kept = load_healthy(home)
    rows = {}
    if kept is not None:
        for check_id, result in kept.results.items():
            rows[check_id] = {**result.to_dict(), "started_at": kept.started_at[check_id]}
    for result in report.results:
        rows[result.id] = {**result.to_dict(), "started_at": report.started_at}
    path = healthy_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".last-healthy-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps({"schema": 1, "checks": list(rows.values())}, indent=1))
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def changes_since(healthy: Healthy, report: Report) -> list[Change]:
    """The checks of ``report`` that are worse than in their last healthy run."""
    changes = []
    for result in report.results:
        then = healthy.results.get(result.id)
        if then is None or SEVERITY[result.status] <= SEVERITY[then.status]:
            continue
        changes.append(
            Change(
                id=result.id,
                before=then.status,
                after=result.status,
                healthy_at=healthy.started_at[result.id],
                summary=result.finding.summary,
                evidence=evidence_diff(then, result),
            )
        )
    return changes


def evidence_diff(then: CheckResult, now: CheckResult) -> dict[str, tuple[Any, Any]]:
    before, after = jsonable(then.finding.evidence), jsonable(now.finding.evidence)
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }
