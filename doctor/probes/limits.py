"""Resource limits of a process from ``/proc/PID/limits`` (what ``ulimit -a`` shows)."""

from __future__ import annotations

import re
from dataclasses import dataclass

UNLIMITED = -1
#: Columns are aligned with spaces; names contain single spaces, columns are split by two+.
_COLUMNS = re.compile(r"\s{2,}")


@dataclass(frozen=True)
class Limit:
    soft: int
    hard: int


def _value(text: str) -> int:
    return UNLIMITED if text == "unlimited" else int(text)


def parse_limits(text: str) -> dict[str, Limit]:
    """Limits by name (``Max open files`` …); ``UNLIMITED`` (-1) for ``unlimited``."""
    limits: dict[str, Limit] = {}
    for line in text.splitlines()[1:]:
        parts = _COLUMNS.split(line.strip())
        if len(parts) < 3:
            continue
        try:
            limits[parts[0]] = Limit(_value(parts[1]), _value(parts[2]))
        except ValueError:
            continue
    return limits


def open_files_limit(text: str) -> Limit:
    limit = parse_limits(text).get("Max open files")
    if limit is None:
        raise ValueError("no 'Max open files' line in the limits file")
    return limit
