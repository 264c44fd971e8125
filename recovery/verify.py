"""`hivemind backup verify`: prove an archive restores, without touching the live cluster.

The archive is checked whole (checksums, safe paths), then restored as a trial into a
scratch copy of users.db and a scratch Redis server of our own on a free port, and the
restored state is checked against the manifest and for internal consistency: every queued
task is a QUEUED record, every bundle task finds its bundle, every result its file.
"""

from __future__ import annotations

import json
import secrets
import socket
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import redis

from hivemind import keys
from hivemind.config import Settings
from hivemind.redis_server import start_redis
from hivemind.states import TaskState
from hivemind.supervisor import stop_pid
from hivemind.userdb import SCHEMA_VERSION
from recovery import redis_dump
from recovery.archive import (
    REDIS_DUMP_NAME,
    USERS_DB_NAME,
    ArchiveError,
    Manifest,
    Progress,
    extract_verified,
)
from recovery.backup import VERIFIED_MARKER_SUFFIX


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


#: Written next to an archive after verifying it; `hivemind doctor`'s backup.recent reads it.
MARKER_SUFFIX = VERIFIED_MARKER_SUFFIX


@dataclass
class VerifyReport:
    archive: Path
    manifest: Manifest
    checks: list[Check] = field(default_factory=list)
    #: The marker file written beside the archive; None when its folder is read-only.
    marker: Path | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


def check_schema(manifest: Manifest, source: Path) -> None:
    if manifest.schema_version > SCHEMA_VERSION:
        raise ArchiveError(
            f"{source} holds users.db schema {manifest.schema_version}, newer than this "
            f"HiveMind ({SCHEMA_VERSION}); restore it with a newer HiveMind"
        )


def _check_users_db(report: VerifyReport, db: Path) -> None:
    counts = report.manifest.counts
    try:
        conn = sqlite3.connect(db)
        try:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            users = int(conn.execute("SELECT count(*) FROM users").fetchone()[0])
            archived = int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        report.add("sqlite.open", False, f"the scratch copy of users.db cannot be read: {exc}")
        return
    report.add("sqlite.integrity", verdict == "ok", f"PRAGMA integrity_check: {verdict}")
    report.add(
        "sqlite.schema",
        version == report.manifest.schema_version,
        f"schema {version}, manifest says {report.manifest.schema_version}",
    )
    report.add(
        "sqlite.counts",
        (users, archived) == (counts.users, counts.tasks_archived),
        f"{users} users, {archived} archived tasks; manifest says "
        f"{counts.users} and {counts.tasks_archived}",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _consistency(root: Path, entries: list[redis_dump.KeyEntry]) -> list[str]:
    """What a restored cluster would trip over: the first few problems, as sentences."""
    records = redis_dump.task_records(entries)
    problems: list[str] = []
    queue: list[str] = next((e.value for e in entries if e.key == keys.TASK_QUEUE), [])
    for task_id in queue:
        if records.get(task_id, {}).get("status") != TaskState.QUEUED:
            problems.append(f"task_queue holds {task_id}, which is not a QUEUED task")
    for task_id, record in records.items():
        try:
            bundle = json.loads(record.get("spec") or "{}").get("bundle_id", "")
        except ValueError:
            problems.append(f"task {task_id} has a spec that is not JSON")
            continue
        if bundle and not (root / "data" / "bundles" / f"{bundle}.zip").is_file():
            problems.append(f"task {task_id} needs bundle {bundle}, which is not in the backup")
        terminal = record.get("status") not in (TaskState.QUEUED, TaskState.RUNNING)
        if terminal and record.get("has_result_archive") == "1":
            result = root / "data" / "results" / f"{task_id}-{record.get('attempt', '0')}.zip"
            if not result.is_file():
                problems.append(f"task {task_id} has a result archive not in the backup")
    return problems


def trial_redis(report: VerifyReport, root: Path, entries: list[redis_dump.KeyEntry]) -> None:
    """Load the dump into a scratch Redis and read it back."""
    port = _free_port()
    scratch = root.parent / "scratch-redis"
    # A password of its own: a scratch Redis holds a whole backup, as readable as the live one.
    url = f"redis://:{secrets.token_urlsafe(24)}@127.0.0.1:{port}/0"
    started = start_redis(
        url, scratch / "data", scratch / "redis.pid", scratch / "redis.log", wait=15
    )
    try:
        client = redis.Redis.from_url(started.url, socket_timeout=30)
        try:
            redis_dump.replace_state(client, entries)
            back = redis_dump.snapshot(client)
        finally:
            client.close()
        doctor_checks(report, root, started.url)
    finally:
        stop_pid(scratch / "redis.pid")
    counts = redis_dump.count(back)
    expected = report.manifest.counts
    # A key whose TTL ran out between backup and trial is gone: compare what must survive.
    same = [e.to_json() | {"ttl_ms": 0} for e in entries if e.ttl_ms < 0] == [
        e.to_json() | {"ttl_ms": 0} for e in back if e.ttl_ms < 0
    ]
    report.add(
        "redis.trial_restore",
        same,
        f"{counts.keys} keys restored into a scratch Redis on port {port} and read back "
        + ("identical" if same else "DIFFERENT from the dump"),
    )
    report.add(
        "redis.counts",
        (counts.tasks, counts.workers) == (expected.tasks_in_redis, expected.workers),
        f"{counts.tasks} tasks, {counts.workers} workers; manifest says "
        f"{expected.tasks_in_redis} and {expected.workers}",
    )


def verify_extracted(report: VerifyReport, root: Path) -> list[redis_dump.KeyEntry]:
    """The checks on an unpacked archive at ``root``; returns the Redis dump's entries."""
    _check_users_db(report, root / USERS_DB_NAME)
    entries = redis_dump.loads((root / REDIS_DUMP_NAME).read_bytes())
    counts = redis_dump.count(entries)
    report.add(
        "redis.dump",
        counts.keys == report.manifest.counts.redis_keys,
        f"{counts.keys} keys, manifest says {report.manifest.counts.redis_keys}",
    )
    problems = _consistency(root, entries)
    report.add(
        "backup.consistency",
        not problems,
        "every queued task, bundle and result is present"
        if not problems
        else "; ".join(problems[:5])
        + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
    )
    return entries


#: The doctor's categories that judge a restored state: the database, Redis, and the data that
#: ties them to the files.
DOCTOR_CATEGORIES = ("sqlite", "redis", "data")


def doctor_checks(report: VerifyReport, home: Path, redis_url: str) -> None:
    """Run the doctor's data checks against the scratch copies, when the doctor is installed.

    Only ``fail`` counts against the archive: ``warn`` is advice about a live host, and
    ``error`` or ``skip`` means the doctor could not look (said so in the detail).
    """
    try:
        import doctor

        categories = {spec.category for spec in doctor.all_checks()}
    except ImportError as exc:
        # Not installed, or from another HiveMind version than this one.
        report.add("doctor", True, f"doctor not usable ({exc}); the checks above stand in")
        return
    present = sorted(categories & set(DOCTOR_CATEGORIES))
    if not present:
        report.add("doctor", True, "the doctor has no sqlite/redis/data checks to run")
        return
    scratch = Settings(home=home, redis_url=redis_url)
    for result in doctor.run_doctor(scratch, only=present).results:
        status = result.finding.status.value
        report.add(f"doctor.{result.id}", status != "fail", f"{status}: {result.finding.summary}")


def write_marker(archive: Path, ok: bool) -> Path | None:
    """``ARCHIVE.verified``: when it was verified and whether it passed."""
    marker = archive.with_name(archive.name + MARKER_SUFFIX)
    # Microseconds: the doctor compares this with the archive's mtime, and a time cut to the
    # second reads as "changed after it was verified" for an archive verified the same second.
    verified_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    body = {"verified_at": verified_at, "ok": ok}
    try:
        marker.write_text(json.dumps(body) + "\n", encoding="utf-8")
    except OSError:
        return None  # a read-only folder: the verdict is still printed
    return marker


def verify_archive(path: Path, progress: Progress | None = None) -> VerifyReport:
    """Checksums, integrity, then a trial restore into scratch SQLite and Redis.

    Raises :class:`ArchiveError` when the archive cannot be read at all (damaged, altered,
    newer schema), after marking it failed; otherwise returns every check, passed or not,
    and marks the archive verified (or failed) with :func:`write_marker`.
    """
    with tempfile.TemporaryDirectory(prefix="hivemind-verify-") as tmp:
        root = Path(tmp) / "archive"
        root.mkdir()
        try:
            manifest = extract_verified(path, root, progress)
            check_schema(manifest, path)
        except ArchiveError:
            if path.is_file():
                write_marker(path, ok=False)
            raise
        report = VerifyReport(path, manifest)
        report.add("archive.checksums", True, f"{len(manifest.files)} files match the manifest")
        entries = verify_extracted(report, root)
        trial_redis(report, root, entries)
    report.marker = write_marker(path, report.ok)
    return report
