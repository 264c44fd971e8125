"""Small functions for trying HiveMind out; every worker allows this module by default."""

from __future__ import annotations

import time
from typing import Any

from hivemind.task import attempt, checkpoint_dir, report_progress


def add(a: float, b: float) -> float:
    return a + b


def noop() -> None:
    return None


def echo(value: Any) -> Any:
    return value


def square(x: float) -> float:
    return x * x


def sleep(seconds: float) -> float:
    """Sleep, reporting progress every tenth of the way; returns the seconds slept."""
    steps = 10
    for step in range(steps):
        time.sleep(seconds / steps)
        report_progress((step + 1) / steps, f"slept {(step + 1) * seconds / steps:.1f}s")
    return seconds


def to_int(text: str) -> int:
    """``int(text)``: a ValueError for text that is not a number (the Python API's example)."""
    return int(text)


def fail(message: str = "this task fails on purpose") -> None:
    raise RuntimeError(message)


def resumable(seconds: float = 60.0) -> str:
    """Save a checkpoint, then work for ``seconds``. An attempt that finds the checkpoint (its
    worker was lost, or handed the task back) picks up from it and finishes at once."""
    state = checkpoint_dir() / "state.txt"
    if state.exists():
        return f"{state.read_text()} -> resumed in attempt {attempt()}"
    state.write_text(f"saved by attempt {attempt()}")
    report_progress(0.5, "checkpoint saved")
    time.sleep(seconds)
    return f"finished in attempt {attempt()} without a checkpoint to resume from"
