"""Functions the function-pool tests run inside pool processes."""

from __future__ import annotations

import ctypes
import os
import time
from os import getcwd  # re-exported on purpose: the pool must not run it through this module
from typing import Any

from hivemind.task import attempt, checkpoint_dir, report_progress, task_id

__all__ = ["getcwd"]


def add(a: float, b: float) -> float:
    return a + b


def noop() -> None:
    return None


def pid() -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def sleep_for(seconds: float) -> int:
    """Announce the start (and the process id) through progress, then sleep."""
    report_progress(0.0, f"started in {os.getpid()}")
    time.sleep(seconds)
    return os.getpid()


def report(steps: list[list[Any]], pause: float) -> str:
    for fraction, message in steps:
        report_progress(fraction, message)
        time.sleep(pause)
    return "reported"


def exit_now(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def unserialisable() -> set[int]:
    return {1, 2}


def context() -> dict[str, Any]:
    return {"task_id": task_id(), "attempt": attempt()}


def bump_checkpoint() -> dict[str, Any]:
    """Count attempts in the checkpoint folder; returns the folder and the previous count."""
    counter = checkpoint_dir() / "count.txt"
    previous = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(previous + 1))
    return {"folder": str(checkpoint_dir()), "previous": previous}
