"""What a fleet deploy is given and what it reports: hosts, options, events, results."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemind.remote.options import SSHOptions

if TYPE_CHECKING:
    from hivemind.remote.inventory import Inventory
    from hivemind.remote.ssh import SSHTarget

#: The doctor checks a deployed worker host must pass: its Python and packages, and its
#: daemons running with no stale pid file.
DEFAULT_DOCTOR_CHECKS: tuple[str, ...] = ("deps.python", "process.services")
#: How long a join token issued for one host stays valid: long enough for a slow install.
DEFAULT_TOKEN_TTL = 900.0


class Phase(str, Enum):
    """The steps of one host, in order (``drain`` only in a rolling upgrade)."""

    CONNECT = "connect"
    PYTHON = "python"
    COPY = "copy"
    VENV = "venv"
    DRAIN = "drain"
    INSTALL = "install"
    JOIN = "join"
    START = "start"
    VERIFY = "verify"
    DONE = "done"


class Outcome(str, Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


def default_node_id(target: SSHTarget) -> str:
    """The worker id of a host without a ``node_id``: its name, plus the port unless 22
    (two sshds on one machine are two hosts)."""
    name = target.host if target.port == 22 else f"{target.host}-{target.port}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "worker"


@dataclass(frozen=True)
class DeployHost:
    target: SSHTarget
    node_id: str
    labels: tuple[str, ...] = ()
    #: HIVEMIND_HOME on the host; None: its own $HIVEMIND_HOME, else ~/.hivemind.
    hivemind_home: str | None = None
    #: The host's Python the venv is made from.
    python: str = "python3"

    @property
    def label(self) -> str:
        return str(self.target)


def hosts_from_inventory(
    inventory: Inventory, groups: Sequence[str] = (), python: str = "python3"
) -> list[DeployHost]:
    """The deploy hosts of ``inventory`` (those in any of ``groups``; every host when
    empty), with their inventory vars."""
    chosen = [h for h in inventory.hosts if not groups or set(h.groups) & set(groups)]
    return [
        DeployHost(
            target=h.target,
            node_id=h.vars.get("node_id") or default_node_id(h.target),
            labels=tuple(h.vars.get("labels", ())),
            hivemind_home=h.vars.get("hivemind_home"),
            python=h.vars.get("python", python),
        )
        for h in chosen
    ]


@dataclass(frozen=True)
class DeployOptions:
    ssh: SSHOptions = field(default_factory=SSHOptions)
    #: Hosts at a time; 0: all at once.
    serial: int = 0
    #: Start no new batch once more than this share (percent) of hosts failed.
    max_fail_percent: float = 100.0
    #: A rolling upgrade: drain, reinstall and restart joined hosts (join the others).
    upgrade: bool = False
    #: A wheel to deploy; None: build one of this checkout.
    wheel: Path | None = None
    #: A folder of dependency wheels the hosts install from (``--find-links``).
    wheelhouse: Path | None = None
    #: Where hosts dial the node pool (default: as `hivemind join-token` says).
    join_address: str = ""
    token_ttl: float = DEFAULT_TOKEN_TTL
    doctor_checks: tuple[str, ...] = DEFAULT_DOCTOR_CHECKS
    #: Seconds each remote command (venv, pip, join, doctor) may take.
    command_timeout: float = 300.0


@dataclass(frozen=True)
class DeployEvent:
    host: str
    node_id: str
    phase: Phase
    #: ``started``, ``done``, ``failed`` or ``skipped``.
    state: str
    message: str = ""


EventSink = Callable[[DeployEvent], None]


@dataclass
class HostDeployResult:
    host: str
    node_id: str
    #: The last phase started (``done`` when every phase passed).
    phase: Phase
    outcome: Outcome
    message: str = ""
    #: Seconds per phase, in the order they ran.
    durations: dict[str, float] = field(default_factory=dict)
    #: The version the host's venv runs after the deploy ("" if it never got that far).
    installed_version: str = ""
    venv: str = ""
    doctor_failures: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def duration_s(self) -> float:
        return sum(self.durations.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "node_id": self.node_id,
            "phase": self.phase.value,
            "outcome": self.outcome.value,
            "message": self.message,
            "durations": {k: round(v, 3) for k, v in self.durations.items()},
            "duration_s": round(self.duration_s, 3),
            "installed_version": self.installed_version,
            "venv": self.venv,
            "doctor_failures": self.doctor_failures,
        }


@dataclass
class DeploySummary:
    wheel: Path
    version: str
    results: list[HostDeployResult]
    #: True when --max-fail-percent stopped the deploy before every host was tried.
    stopped_early: bool = False

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "wheel": str(self.wheel),
            "version": self.version,
            "ok": self.ok,
            "stopped_early": self.stopped_early,
            "counts": {o.value: self.count(o) for o in Outcome},
            "hosts": [r.to_dict() for r in self.results],
        }
