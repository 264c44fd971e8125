"""What every benchmarked system provides, and the outcome of a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: Seconds a latency sample may take before the phase is abandoned.
SAMPLE_TIMEOUT = 10.0


# -- the systems -------------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    submitted: int
    succeeded: int
    other: int
    submit_seconds: float
    total_seconds: float
    timed_out: bool


class System(Protocol):
    name: str
    setup: str

    def start(self) -> None: ...

    def one(self) -> None:
        """Submit one no-op task and block until its result is seen."""

    def batch(self, count: int, timeout: float) -> BatchOutcome: ...

    def stop(self) -> None: ...


def _outcome(
    submitted: int,
    succeeded: int,
    started: float,
    submitted_at: float,
    finished_at: float,
    deadline: float,
    other: int = 0,
) -> BatchOutcome:
    return BatchOutcome(
        submitted=submitted,
        succeeded=succeeded,
        other=other,
        submit_seconds=submitted_at - started,
        total_seconds=finished_at - started,
        timed_out=succeeded + other < submitted and finished_at >= deadline,
    )
