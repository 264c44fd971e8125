"""Is there a recent backup, and has anyone checked that it restores?"""

from __future__ import annotations

from datetime import datetime, timezone

from doctor.context import Context
from doctor.model import Finding
from doctor.probes.backup_marker import (
    BACKUP_GLOB,
    MARKER_SUFFIX,
    BackupFile,
    newest,
    parse_marker,
)
from doctor.registry import check

MAX_AGE_S = 24 * 3600


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds")


@check(
    "backup.recent",
    title="A backup from the last 24 h exists and was verified",
    guide="恢復程序 / 數據備份和恢復",
)
def recent_backup(ctx: Context) -> Finding:
    folder = ctx.home.backups
    files = []
    for path in folder.glob(BACKUP_GLOB) if folder.is_dir() else []:
        try:
            info = path.stat()
        except OSError:
            continue  # rotated away while we looked
        files.append(BackupFile(path.name, info.st_mtime, info.st_size))
    latest = newest(files)
    if latest is None:
        return Finding.warn(
            f"no backup in {folder}: users.db and the configs exist only once",
            "hivemind backup",
            folder=str(folder),
        )
    now = ctx.now()
    age = max(0.0, now - latest.mtime)
    evidence: dict[str, object] = {
        "newest": latest.name,
        "written_at": _iso(latest.mtime),
        "age_h": round(age / 3600, 1),
        "size": latest.size,
        "backups": len(files),
    }
    marker_path = folder / (latest.name + MARKER_SUFFIX)
    verification = None
    if marker_path.is_file():
        try:
            verification = parse_marker(marker_path.read_text(errors="replace"))
        except OSError:
            verification = None
        evidence["marker"] = "valid" if verification else "unreadable"
    verify = f"hivemind backup verify {folder / latest.name}"
    problems = []
    stale = age > MAX_AGE_S or latest.size == 0
    if age > MAX_AGE_S:
        problems.append(f"the newest backup is {age / 3600:.0f} h old")
    if latest.size == 0:
        problems.append("the newest backup is empty")
    if verification is None:
        problems.append("the newest backup was never verified")
    elif not verification.ok:
        problems.append("verifying the newest backup found it bad")
        stale = True
    elif verification.verified_at < latest.mtime:
        problems.append("the newest backup changed after it was verified")
    if verification is not None:
        evidence["verified_at"] = _iso(verification.verified_at)
    fix = "hivemind backup, then `hivemind backup verify` on the new archive" if stale else verify
    if problems:
        return Finding.warn("; ".join(problems), fix, **evidence)
    return Finding.ok(
        f"{latest.name}, {age / 3600:.1f} h old, verified {evidence['verified_at']}", **evidence
    )
