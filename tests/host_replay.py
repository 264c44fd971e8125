"""A doctor Context that answers host probes from fixture files, for the verdicts on states
this host cannot be put into (an OOM kill, firewall rules, memory pressure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from doctor.context import CommandOutput, Context, Unavailable
from doctor.model import Finding
from doctor.registry import all_checks

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "doctor"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@dataclass
class ReplayContext(Context):
    """Files and commands named here come from fixtures; a command not named is missing."""

    files: Mapping[str, str] = field(default_factory=dict)
    commands: Mapping[tuple[str, ...], CommandOutput] = field(default_factory=dict)

    def read_text(self, path: str | Path) -> str:
        if str(path) in self.files:
            return self.files[str(path)]
        return super().read_text(path)

    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandOutput:
        if tuple(argv) in self.commands:
            return self.commands[tuple(argv)]
        raise Unavailable(f"{argv[0]} is not installed on {self.host}")


def output(stdout: str, exit_code: int = 0, stderr: str = "") -> CommandOutput:
    return CommandOutput(exit_code, stdout, stderr)


def run_check(check_id: str, context: Context) -> Finding:
    """One check through the engine's own wrapper (Unavailable -> skip, exceptions -> error)."""
    from doctor.engine import run_one

    spec = next(spec for spec in all_checks() if spec.id == check_id)
    return run_one(spec, context)
