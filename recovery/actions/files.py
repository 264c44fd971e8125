"""The `clean` action: delete files matching a glob inside HIVEMIND_HOME, and only there.

The guide's `rm -f */logs/*.log.old` and `rm -f */tmp/*`, made safe: the pattern is relative
to HIVEMIND_HOME, may not climb out of it (``..``, an absolute path, a symlink pointing
elsewhere), and never matches the data HiveMind cannot rebuild (users.db, the signing secret,
Redis's persistence, backups, pid files of live services).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path, PurePosixPath
from typing import Any

from hivemind.supervisor import running_pid
from recovery.actions import Outcome, Param, StepContext, action
from recovery.model import ActionFailed

#: Relative to HIVEMIND_HOME: never deleted by a glob, whatever it says.
PROTECTED = ("node_pool/users.db*", "node_pool/secret.key", "redis/*", "backups/*", "**/*.token")


def check_pattern(params: dict[str, Any]) -> None:
    pattern = str(params["glob"])
    path = PurePosixPath(pattern)
    if not pattern.strip():
        raise ValueError("the glob is empty")
    if path.is_absolute() or pattern.startswith("~"):
        raise ValueError(f"glob {pattern!r} escapes HIVEMIND_HOME: it must be relative to it")
    if ".." in path.parts:
        raise ValueError(f"glob {pattern!r} escapes HIVEMIND_HOME: it climbs out with '..'")
    if pattern in ("*", "**", "**/*") or (path.parts[0] == "**" and len(path.parts) <= 2):
        raise ValueError(f"glob {pattern!r} matches the whole of HIVEMIND_HOME; be specific")


def _protected(relative: str) -> bool:
    pure = PurePosixPath(relative)
    return any(pure.match(pattern) for pattern in PROTECTED)


def matches(home: Path, pattern: str) -> tuple[list[Path], list[str]]:
    """The files ``pattern`` would delete, and what it matched but will not touch (and why)."""
    root = home.resolve()
    files: list[Path] = []
    kept: list[str] = []
    for name in sorted(glob.glob(pattern, root_dir=root, recursive=True)):
        candidate = root / name
        real = candidate.resolve()
        if not real.is_relative_to(root):
            kept.append(f"{name}: resolves outside HIVEMIND_HOME ({real})")
        elif candidate.is_dir() and not candidate.is_symlink():
            kept.append(f"{name}: a directory")
        elif _protected(name):
            kept.append(f"{name}: protected data")
        elif name.endswith(".pid") and running_pid(candidate) is not None:
            kept.append(f"{name}: names a live service")
        else:
            files.append(candidate)
    return files, kept


@action(
    "clean",
    "Delete files matching a glob relative to HIVEMIND_HOME (never outside it)",
    {"glob": Param(str, required=True)},
    validate=check_pattern,
)
def clean(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    check_pattern(params)  # again at run time: a variable may have filled it in
    files, kept = matches(ctx.home.root, params["glob"])
    before = {"matched": len(files), "kept": kept}
    if not files:
        return Outcome(False, f"nothing matches {params['glob']}", before, before)
    if ctx.dry_run:
        return Outcome(True, f"would delete {len(files)} file(s) matching {params['glob']}", before)
    removed = 0
    for path in files:
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ActionFailed(f"cannot delete {path}: {exc.strerror}") from None
    after = {"matched": 0, "deleted": removed, "kept": kept}
    return Outcome(True, f"deleted {removed} file(s) matching {params['glob']}", before, after)
