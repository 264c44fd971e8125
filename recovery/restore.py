"""`hivemind restore`: put a verified backup in place of this host's cluster state.

The archive is verified first (checksums, integrity, a trial Redis load); a damaged one, or
one from a newer schema, is refused before anything is touched. Then the services are
stopped, and the swap is all or nothing:

* files (users.db, secret.key, data/, master/config/, worker/config/) are renamed aside into
  ``backups/before-restore-<time>/`` and the archive's renamed into place;
* Redis's HiveMind keys are saved to the same folder and replaced in one MULTI/EXEC;
* tasks that were RUNNING in the backup go back to the queue, and the backup's workers are
  marked offline (those processes hold nothing in the restored cluster).

If any step fails, what was moved aside is put back and Redis gets its old keys back. The
folder with the previous state stays after a successful restore, for a change of mind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hivemind import redis_client, stack
from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.paths import layout
from hivemind.taskstore import TaskStore
from hivemind.userdb import migrate
from recovery import redis_dump
from recovery.archive import ArchiveError, Counts, Progress, extract_verified
from recovery.verify import VerifyReport, check_schema, trial_redis, verify_extracted

#: What a restore replaces, relative to HIVEMIND_HOME (SQLite's side files go with users.db).
RESTORED_PATHS = ("node_pool/users.db", "node_pool/secret.key", "data", "master/config",
                  "worker/config")  # fmt: skip
SQLITE_SIDE_FILES = ("node_pool/users.db-wal", "node_pool/users.db-shm")


class RestoreError(HivemindError):
    """A restore failed; the message says whether the previous state was put back."""


@dataclass
class RestoreReport:
    archive: Path
    dry_run: bool
    counts: Counts
    verify: VerifyReport
    #: Tasks RUNNING in the backup: requeued (or, in a dry run, that would be).
    requeued: list[str] = field(default_factory=list)
    #: Services of `hivemind up` that were running: stopped, then started again.
    services: list[str] = field(default_factory=list)
    #: Where the state before the restore was kept.
    previous_state: Path | None = None
    #: The doctor's counts by status after the services came back (None: not run).
    doctor: dict[str, int] | None = None
    #: Ids of the doctor's checks that failed or errored after the restore.
    doctor_problems: list[str] = field(default_factory=list)


def _running_services(settings: Settings) -> tuple[list[str], int]:
    """(names of running services `up` started, number of its workers among them)."""
    status = stack.status(settings)
    running = [s.name for s in status.services if s.enabled and s.running and s.started_by_up]
    return running, sum(1 for name in running if name.startswith("worker "))


def _refuse_outsiders(settings: Settings) -> None:
    outsiders = [
        s.name
        for s in stack.status(settings).services
        if s.enabled and s.running and not s.started_by_up and s.name != "redis"
    ]
    if outsiders:
        raise RestoreError(
            f"{', '.join(outsiders)} still running but not started by `hivemind up`, so "
            "restore cannot stop it; stop it yourself, then restore (nothing was changed)"
        )


class _Swap:
    """Files renamed aside and into place, undone in reverse on failure."""

    def __init__(self, home: Path, staged: Path, aside: Path) -> None:
        self.home, self.staged, self.aside = home, staged, aside
        self._done: list[tuple[Path, Path]] = []

    def _move(self, source: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, dest)
        self._done.append((source, dest))

    def apply(self) -> None:
        for rel in (*RESTORED_PATHS, *SQLITE_SIDE_FILES):
            if (self.home / rel).exists():
                self._move(self.home / rel, self.aside / rel)
        for rel in RESTORED_PATHS:
            if (self.staged / rel).exists():
                self._move(self.staged / rel, self.home / rel)

    def undo(self) -> None:
        for source, dest in reversed(self._done):
            os.rename(dest, source)
        self._done.clear()


def restore_backup(
    settings: Settings,
    archive: Path,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_event: Callable[[str], None] | None = None,
) -> RestoreReport:
    """Verify ``archive`` and, unless ``dry_run``, make it this host's state."""
    emit = on_event or (lambda _line: None)
    home = layout(settings.home)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    if dry_run:
        # A dry run leaves no trace in HIVEMIND_HOME, not even a folder's mode.
        work = Path(tempfile.mkdtemp(prefix="hivemind-restore-"))
    else:
        # Inside HIVEMIND_HOME, so the swap is a rename on one filesystem.
        home.root.mkdir(parents=True, exist_ok=True)
        work = home.root / f".restore-{stamp}"
        work.mkdir(mode=0o700)
    try:
        staged = work / "archive"
        staged.mkdir()
        manifest = extract_verified(archive, staged, progress)
        check_schema(manifest, archive)
        report = VerifyReport(archive, manifest)
        entries = verify_extracted(report, staged)
        trial_redis(report, staged, entries)
        if not report.ok:
            problems = "; ".join(f"{c.name}: {c.detail}" for c in report.problems)
            raise ArchiveError(f"{archive} failed verification, nothing restored: {problems}")
        result = RestoreReport(archive, dry_run, manifest.counts, report)
        result.requeued = redis_dump.count(entries).running
        result.services, workers = _running_services(settings)
        if dry_run:
            return result
        _refuse_outsiders(settings)
        if result.services:
            emit(f"stopping {', '.join(result.services)}")
            stack.down(settings, emit)
        _refuse_outsiders(settings)
        started_redis = stack.ensure_redis(settings, on_event=emit)
        aside = home.backups / f"before-restore-{stamp}"
        aside.mkdir(parents=True)
        failed: RestoreError | None = None
        try:
            result.requeued = _swap_in(settings, home.root, staged, aside, entries)
            result.previous_state = aside
        except RestoreError as exc:
            failed = exc  # the previous state is back (or the message says where it is)
        finally:
            if started_redis and not result.services:
                stack.stop_redis(settings, emit)
        # Restored or rolled back, what was running runs again.
        if result.services:
            _restart(settings, workers, emit, failed)
            if failed is None:
                _run_doctor(settings, result)
        if failed is not None:
            raise failed
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _restart(
    settings: Settings, workers: int, emit: Callable[[str], None], failed: RestoreError | None
) -> None:
    emit("starting the services again")
    from hivemind.bootstrap import ensure_admin

    try:
        ensure_admin(settings)  # a restored secret signs a new CLI token
        stack.up(settings, workers=workers, on_event=emit)
    except HivemindError as exc:
        done = f"{failed}" if failed else "the backup was restored"
        raise RestoreError(
            f"{done}, but the services did not start again: {exc}; see `hivemind status`"
        ) from None


def _run_doctor(settings: Settings, result: RestoreReport) -> None:
    """A full doctor run on the restarted stack, when the doctor is installed."""
    try:
        from doctor import run_doctor
    except ImportError:
        return
    report = run_doctor(settings)
    result.doctor = report.counts()
    result.doctor_problems = [
        r.id for r in report.results if r.finding.status.value in ("fail", "error")
    ]


def _swap_in(
    settings: Settings,
    home: Path,
    staged: Path,
    aside: Path,
    entries: list[redis_dump.KeyEntry],
) -> list[str]:
    client = redis_client.connect(settings, socket_timeout=60, socket_connect_timeout=5)
    try:
        previous = redis_dump.snapshot(client)
        (aside / "redis.json").write_bytes(redis_dump.dumps(previous))
        swap = _Swap(home, staged, aside)
        try:
            swap.apply()
            layout(home).ensure()  # folders the archive lacked, and 0700 on the private ones
            migrate(home / "node_pool" / "users.db")  # an older backup's schema moves forward
            redis_dump.replace_state(client, redis_dump.workers_offline(entries))
            return TaskStore(client).requeue_restored(redis_dump.count(entries).running)
        except BaseException as exc:
            try:
                swap.undo()
                redis_dump.replace_state(client, previous)
                shutil.rmtree(aside)  # everything is back where it was; nothing to keep
            except Exception as undo_exc:
                raise RestoreError(
                    f"restore failed ({exc}) and putting the previous state back failed too "
                    f"({undo_exc}); it is kept in {aside}"
                ) from None
            raise RestoreError(
                f"restore failed and the previous state was put back: {exc}"
            ) from None
    finally:
        client.close()
