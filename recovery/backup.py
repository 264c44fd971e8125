"""`hivemind backup`: one archive of the whole cluster state, safe to take while it runs.

Order matters for consistency while tasks are submitted and finish:

1. Redis first, in one atomic read (:func:`recovery.redis_dump.snapshot`).
2. users.db next, through SQLite's online backup API. A task archived to SQLite after step 1
   is still in the Redis dump (and marked pending, so it is archived again: an upsert).
3. Files last. Bundles are stored before the task that names them is submitted, and a result
   before its task is marked finished, so every record in the dump finds its file. Files
   are replaced by rename, so each copy is one whole version.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import redis

from hivemind import __version__, redis_client
from hivemind.config import Settings
from hivemind.errors import HivemindError, UsageError
from hivemind.paths import HomeLayout, layout
from hivemind.userdb import SCHEMA_VERSION, schema_version
from recovery import redis_dump
from recovery.archive import (
    ARCHIVE_FORMAT,
    ARCHIVE_PREFIX,
    ARCHIVE_SUFFIX,
    REDIS_DUMP_NAME,
    USERS_DB_NAME,
    Counts,
    FileEntry,
    Manifest,
    Progress,
    sha256_file,
    write_archive,
)

ARCHIVE_NAME = re.compile(rf"^{re.escape(ARCHIVE_PREFIX)}(\d{{8}}-\d{{6}})(?:-(\d+))?\.tar\.gz$")
#: What of HIVEMIND_HOME goes into a backup besides users.db and Redis.
SECRET_KEY_NAME = "node_pool/secret.key"
COPIED_TREES = ("data", "master/config", "worker/config")
#: data/tmp holds uploads still arriving: never part of a consistent state.
SKIPPED_TREES = ("data/tmp",)
#: The marker `backup verify` leaves beside an archive (recovery.verify writes it).
VERIFIED_MARKER_SUFFIX = ".verified"


class BackupError(HivemindError):
    """A backup could not be taken."""


@dataclass(frozen=True)
class BackupResult:
    archive: Path
    manifest: Manifest
    sha256: str
    #: Older archives deleted by ``keep``.
    removed: list[Path]


def _report(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress:
        progress(stage, done, total)


def copy_users_db(source: Path, dest: Path) -> tuple[int, int]:
    """Copy users.db with the online backup API and check the copy; (users, archived tasks)."""
    if not source.exists():
        raise BackupError(f"{source} does not exist; is this the node pool's HIVEMIND_HOME?")
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
        finally:
            src.close()
        try:
            verdict = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise BackupError(f"the copy of {source} fails its integrity check: {verdict}")
            users = int(dst.execute("SELECT count(*) FROM users").fetchone()[0])
            tasks = int(dst.execute("SELECT count(*) FROM tasks").fetchone()[0])
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source}: {exc}") from None
    os.chmod(dest, 0o600)
    return users, tasks


def archived_task_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM tasks")}
    finally:
        conn.close()


def _copy_trees(home: HomeLayout, staged: Path, progress: Progress | None) -> None:
    sources: list[Path] = []
    for tree in COPIED_TREES:
        root = home.root / tree
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(home.root).as_posix()
                if any(rel == s or rel.startswith(s + "/") for s in SKIPPED_TREES):
                    continue
                if path.is_file() and not path.is_symlink():
                    sources.append(path)
    secret = home.root / SECRET_KEY_NAME
    if secret.is_file():
        sources.append(secret)
    for number, path in enumerate(sources, start=1):
        target = staged / path.relative_to(home.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # One open, one read: a file replaced meanwhile is copied whole, old or new.
            with path.open("rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(target, path.stat().st_mode & 0o777)
        except FileNotFoundError:
            continue  # removed since the listing: it was never part of the Redis state read
        _report(progress, "files", number, len(sources))


def _versions(client: redis.Redis) -> dict[str, str]:
    try:
        redis_version = str(client.info("server").get("redis_version", "?"))
    except redis.RedisError:
        redis_version = "?"
    return {
        "hivemind": __version__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "redis": redis_version,
    }


def archive_name(now: datetime, folder: Path) -> Path:
    base = f"{ARCHIVE_PREFIX}{now.strftime('%Y%m%d-%H%M%S')}"
    candidate = folder / f"{base}{ARCHIVE_SUFFIX}"
    number = 1
    while candidate.exists():  # two backups in one second
        candidate = folder / f"{base}-{number}{ARCHIVE_SUFFIX}"
        number += 1
    return candidate


def create_backup(
    settings: Settings,
    out_dir: Path | None = None,
    keep: int | None = None,
    progress: Progress | None = None,
) -> BackupResult:
    """Write one archive of this host's cluster state into ``out_dir`` (default
    ``$HIVEMIND_HOME/backups``); with ``keep``, delete all but the newest ``keep`` archives
    there (never the one just made)."""
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1 (the new backup is always kept), got {keep}")
    home = layout(settings.home)
    if not home.users_db.exists():
        raise BackupError(f"{home.users_db} does not exist; is this the node pool's HIVEMIND_HOME?")
    folder = (out_dir or home.backups).expanduser().absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise BackupError(f"cannot write to {folder}")
    db_version = schema_version(home.users_db)
    if db_version > SCHEMA_VERSION:
        raise BackupError(
            f"{home.users_db} has schema {db_version}, newer than this HiveMind "
            f"({SCHEMA_VERSION}); back it up with the HiveMind that wrote it"
        )
    client = redis_client.connect(settings, socket_timeout=30, socket_connect_timeout=5)
    try:
        _report(progress, "redis", 0, 1)
        entries = redis_dump.snapshot(client)
        versions = _versions(client)
    finally:
        client.close()
    _report(progress, "redis", 1, 1)
    now = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=folder) as tmp:
        staged = Path(tmp)
        (staged / "node_pool").mkdir()
        users, archived = copy_users_db(home.users_db, staged / USERS_DB_NAME)
        _report(progress, "users.db", 1, 1)
        (staged / REDIS_DUMP_NAME).write_bytes(redis_dump.dumps(entries))
        _copy_trees(home, staged, progress)
        files = [
            FileEntry(p.relative_to(staged).as_posix(), p.stat().st_size, sha256_file(p))
            for p in sorted(staged.rglob("*"))
            if p.is_file()
        ]
        live = redis_dump.count(entries)
        all_tasks = set(redis_dump.task_records(entries)) | archived_task_ids(
            staged / USERS_DB_NAME
        )
        manifest = Manifest(
            format=ARCHIVE_FORMAT,
            created_at=now.isoformat(timespec="seconds"),
            host=socket.gethostname(),
            home=str(home.root),
            versions=versions,
            schema_version=db_version or SCHEMA_VERSION,
            counts=Counts(
                users=users,
                tasks=len(all_tasks),
                tasks_in_redis=live.tasks,
                tasks_archived=archived,
                workers=live.workers,
                redis_keys=live.keys,
                tasks_by_status=live.by_status,
            ),
            files=files,
        )
        dest = archive_name(now.astimezone(), folder)
        write_archive(dest, staged, manifest, progress)
    removed = apply_retention(folder, keep, dest) if keep else []
    return BackupResult(dest, manifest, sha256_file(dest), removed)


def list_archives(folder: Path) -> list[Path]:
    """The backup archives in ``folder``, oldest first (by the time in their names)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = ARCHIVE_NAME.match(path.name)
        if match and path.is_file():
            found.append(((match.group(1), int(match.group(2) or 0)), path))
    return [path for _, path in sorted(found)]


def apply_retention(folder: Path, keep: int, just_made: Path) -> list[Path]:
    """Delete all but the newest ``keep`` archives in ``folder``; ``just_made`` always stays."""
    archives = [p for p in list_archives(folder) if p != just_made]
    doomed = archives[: max(0, len(archives) - (keep - 1))]
    for path in doomed:
        path.unlink(missing_ok=True)
        path.with_name(path.name + VERIFIED_MARKER_SUFFIX).unlink(missing_ok=True)
    return doomed
