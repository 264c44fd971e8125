"""The API a task's own code calls: progress, checkpoints and who am I.

A bundle task learns its context from ``HIVEMIND_*`` environment variables set by the
worker; a function task runs in a pool process, which sets the context directly. Outside
any task every call still works (progress is dropped, checkpoints go to a temp folder), so
task code can be run and tested by hand. Imported by every task: keep it small and light.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

__all__ = ["attempt", "checkpoint_dir", "report_progress", "task_id"]

ENV_TASK_ID = "HIVEMIND_TASK_ID"
ENV_ATTEMPT = "HIVEMIND_TASK_ATTEMPT"
ENV_PROGRESS_FILE = "HIVEMIND_PROGRESS_FILE"
ENV_CHECKPOINT_DIR = "HIVEMIND_CHECKPOINT_DIR"

_log = logging.getLogger(__name__)


class _Context(NamedTuple):
    task_id: str
    attempt: int
    checkpoint_dir: Path
    progress: Callable[[float, str], None]


_context: _Context | None = None
_scratch_checkpoint: Path | None = None


def _set_context(
    task_id: str, attempt: int, checkpoint_dir: Path, progress: Callable[[float, str], None]
) -> None:
    """Set by the function pool around each call; wins over the environment."""
    global _context
    _context = _Context(task_id, attempt, Path(checkpoint_dir), progress)


def _clear_context() -> None:
    global _context
    _context = None


def report_progress(fraction: float, message: str = "") -> None:
    """Tell the worker how far along the task is; ``fraction`` is clamped to [0, 1]."""
    value = float(fraction)
    # NaN fails both comparisons and ends up as 0.
    value = min(value, 1.0) if value >= 0.0 else 0.0
    text = str(message)
    if _context is not None:
        _context.progress(value, text)
        return
    progress_file = os.environ.get(ENV_PROGRESS_FILE)
    if not progress_file:
        _log.debug("progress %.3f %s (not running as a HiveMind task)", value, text)
        return
    line = json.dumps({"fraction": value, "message": text}) + "\n"
    # Opened per call so the worker sees each line as soon as it is written.
    with open(progress_file, "a", encoding="utf-8") as handle:
        handle.write(line)


def checkpoint_dir() -> Path:
    """A folder whose contents survive into the task's next attempt; created if missing."""
    global _scratch_checkpoint
    if _context is not None:
        folder = _context.checkpoint_dir
    elif os.environ.get(ENV_CHECKPOINT_DIR):
        folder = Path(os.environ[ENV_CHECKPOINT_DIR])
    else:
        if _scratch_checkpoint is None:
            _scratch_checkpoint = Path(tempfile.mkdtemp(prefix="hivemind-checkpoint-"))
        folder = _scratch_checkpoint
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def task_id() -> str | None:
    """The id of the running task, or None outside a task."""
    if _context is not None:
        return _context.task_id
    return os.environ.get(ENV_TASK_ID) or None


def attempt() -> int:
    """The attempt number the worker gave this run (1 outside a task)."""
    if _context is not None:
        return _context.attempt
    raw = os.environ.get(ENV_ATTEMPT, "")
    return int(raw) if raw.isdigit() else 1
