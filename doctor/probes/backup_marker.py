"""Backups in ``$HIVEMIND_HOME/backups`` and the verification markers beside them.

The contract with ``hivemind backup verify``: after checking ``hivemind-backup-X.tar.gz`` it
writes ``hivemind-backup-X.tar.gz.verified``, a JSON object with ``verified_at`` (ISO-8601
with a timezone, or unix seconds) and optionally ``ok`` (false when verification found the
archive bad; absent means true). Pure functions over names, times and the marker's text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

BACKUP_GLOB = "hivemind-backup-*.tar.gz"
MARKER_SUFFIX = ".verified"


@dataclass(frozen=True)
class Verification:
    verified_at: float
    ok: bool


def parse_marker(text: str) -> Verification | None:
    """A marker's content, or None when it is not one (then the backup counts as unverified)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    at = _timestamp(data.get("verified_at"))
    if at is None:
        return None
    ok = data.get("ok", True)
    return Verification(at, ok is True)


def _timestamp(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None  # a local time without zone cannot be compared safely
        return moment.timestamp()
    return None


@dataclass(frozen=True)
class BackupFile:
    name: str
    mtime: float
    size: int


def newest(backups: Iterable[BackupFile]) -> BackupFile | None:
    """The most recently written backup (names sort by date too, but a copy keeps its name)."""
    return max(backups, key=lambda b: (b.mtime, b.name), default=None)
