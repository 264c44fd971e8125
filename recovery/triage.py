"""`hivemind recover`: run the doctor, pick the playbooks its findings call for, plan, apply,
run the doctor again, and report how long it took to get healthy and what changed.

After the chosen playbooks ran, the doctor runs again and may call for more (a stuck task
shows only once Redis is back): a few rounds, never the same playbook twice. A system the
doctor finds healthy gets no playbook at all, so a second `recover` does nothing.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from doctor import Report, Status, run_doctor
from hivemind.config import Settings
from hivemind.stack import recorded_shape
from recovery.engine import RunOptions, run_playbook
from recovery.loader import load_playbook
from recovery.model import HostRun

#: (check id, the statuses that call for it, playbook), in no particular order.
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("sqlite.integrity", ("fail",), "rebuild-db"),
    ("ports.redis", ("fail",), "recover"),
    ("ports.nodepool", ("fail",), "recover"),
    ("ports.master", ("fail",), "recover"),
    ("process.services", ("warn", "fail"), "recover"),
    ("workers.count", ("fail",), "recover"),
    # A late heartbeat (warn) is the reaper's to handle; silent while holding tasks is ours.
    ("workers.heartbeat", ("fail",), "reset-stale-workers"),
    ("tasks.stuck", ("warn", "fail"), "requeue-stuck"),
    ("tasks.orphaned", ("warn", "fail"), "sync-data"),
    ("data.consistency", ("fail",), "sync-data"),
    # The HA layout: a data node, a Sentinel or one node pool of several is down.
    ("redis.replication", ("warn", "fail"), "recover"),
    ("redis.sentinel", ("warn", "fail"), "recover"),
    ("nodepool.peers", ("warn", "fail"), "recover"),
)
#: The order playbooks run in: the database, the services, then the cluster's state.
ORDER = (
    "rebuild-db", "recover", "ha-recover", "reset-stale-workers", "requeue-stuck", "sync-data"
)  # fmt: skip
#: On a stack `up --ha` started, "recover" restarts only what is down and leaves the data
#: to Redis and Sentinel: stopping everything would end the failover it exists for.
HA_PLAYBOOKS = {"recover": "ha-recover"}
MAX_ROUNDS = 3


@dataclass
class Choice:
    playbook: str
    because: list[str]


def choose(report: Report, skip: Sequence[str] = (), ha: bool = False) -> list[Choice]:
    """The playbooks ``report`` calls for, in :data:`ORDER`, leaving out ``skip``; ``ha``:
    for a stack `up --ha` started (:data:`HA_PLAYBOOKS`)."""
    reasons: dict[str, list[str]] = {}
    for check_id, statuses, rule_playbook in RULES:
        playbook = HA_PLAYBOOKS.get(rule_playbook, rule_playbook) if ha else rule_playbook
        try:
            result = report.result(check_id)
        except KeyError:
            continue
        if result.status.value in statuses and playbook not in skip:
            reasons.setdefault(playbook, []).append(f"{check_id} is {result.status.value}")
    return [Choice(name, reasons[name]) for name in ORDER if name in reasons]


def _failing(report: Report) -> list[dict[str, str]]:
    return [
        {"id": r.id, "status": r.status.value, "summary": r.finding.summary}
        for r in report.results
        if r.status is Status.FAIL
    ]


@dataclass
class RecoverReport:
    host: str
    dry_run: bool
    before: dict[str, int]
    failing_before: list[dict[str, str]]
    chosen: list[Choice] = field(default_factory=list)
    runs: list[HostRun] = field(default_factory=list)
    after: dict[str, int] | None = None
    failing_after: list[dict[str, str]] = field(default_factory=list)
    healthy: bool = False
    #: Seconds from the start until a doctor run found no fail; None if it never did.
    time_to_healthy_s: float | None = None
    duration_s: float = 0.0
    error: str | None = None

    @property
    def nothing_to_do(self) -> bool:
        return not self.chosen and self.error is None

    @property
    def failed(self) -> bool:
        return self.error is not None or (not self.dry_run and not self.healthy)

    def changes(self) -> list[str]:
        return [f"{run.playbook}: {s.step}: {s.message}" for run in self.runs for s in run.changed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "dry_run": self.dry_run,
            "before": self.before,
            "failing_before": self.failing_before,
            "chosen": [{"playbook": c.playbook, "because": c.because} for c in self.chosen],
            "runs": [run.to_dict() for run in self.runs],
            "after": self.after,
            "failing_after": self.failing_after,
            "healthy": self.healthy,
            "time_to_healthy_s": self.time_to_healthy_s,
            "duration_s": round(self.duration_s, 3),
            "changes": self.changes(),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecoverReport:
        return cls(
            host=str(data["host"]),
            dry_run=bool(data.get("dry_run")),
            before=dict(data.get("before") or {}),
            failing_before=list(data.get("failing_before") or []),
            chosen=[Choice(c["playbook"], list(c["because"])) for c in data.get("chosen") or []],
            runs=[HostRun.from_dict(r) for r in data.get("runs") or []],
            after=data.get("after"),
            failing_after=list(data.get("failing_after") or []),
            healthy=bool(data.get("healthy")),
            time_to_healthy_s=data.get("time_to_healthy_s"),
            duration_s=float(data.get("duration_s", 0.0)),
            error=data.get("error"),
        )

    @classmethod
    def broken(cls, host: str, why: str) -> RecoverReport:
        return cls(host, False, {}, [], error=why)


def recover(
    settings: Settings,
    *,
    dry_run: bool = False,
    playbooks: Sequence[str] = (),
    emit: Callable[[str], None] = lambda _line: None,
) -> RecoverReport:
    """Doctor, choose, plan/apply, doctor again. ``playbooks`` overrides the choice."""
    began = time.monotonic()
    report = run_doctor(settings)
    result = RecoverReport(socket.gethostname(), dry_run, _counts(report), _failing(report))
    ha = recorded_shape(settings)["ha"]
    chosen = [Choice(name, ["asked for"]) for name in playbooks] or choose(report, ha=ha)
    # Every playbook is read and checked before the first one runs.
    loaded = {c.playbook: load_playbook(c.playbook) for c in chosen}
    if not chosen:
        result.healthy = not result.failing_before
        result.time_to_healthy_s = 0.0 if result.healthy else None
        result.after = result.before
        result.failing_after = result.failing_before
        result.duration_s = time.monotonic() - began
        return result
    options = RunOptions(dry_run=dry_run, emit=emit)
    done: set[str] = set()
    for _round in range(MAX_ROUNDS):
        for choice in chosen:
            emit(f"playbook {choice.playbook} ({'; '.join(choice.because)})")
            playbook = loaded.get(choice.playbook) or load_playbook(choice.playbook)
            result.runs.append(run_playbook(playbook, settings, options))
            result.chosen.append(choice)
            done.add(choice.playbook)
        if dry_run:
            break
        report = run_doctor(settings)
        chosen = [] if playbooks else choose(report, skip=sorted(done), ha=ha)
        if not chosen:
            break
    if not dry_run:
        result.after = _counts(report)
        result.failing_after = _failing(report)
        result.healthy = not result.failing_after
        if result.healthy:
            result.time_to_healthy_s = round(time.monotonic() - began, 2)
    result.duration_s = time.monotonic() - began
    return result


def _counts(report: Report) -> dict[str, int]:
    return report.counts()
