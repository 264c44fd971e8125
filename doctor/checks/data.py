"""Do Redis, users.db and the data folder agree? The guide's 數據不一致, done by references:
every task's owner is a user, every blob a record names is on disk, every blob on disk has a
record. Repair belongs to the sync-data recovery playbook, not to ``--fix``."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import redis

from doctor.checks.sqlite import open_readonly
from doctor.context import Context, Unavailable
from doctor.model import Finding
from doctor.probes.data_refs import BLOB_KINDS, BlobFile, TaskRef, blob_owner, find_dangling
from doctor.registry import check
from hivemind import keys
from hivemind.states import TaskState

#: Newest live tasks and archived tasks read; older ones are left out (and said to be).
LIVE_TASK_LIMIT = 50_000
ARCHIVE_TASK_LIMIT = 50_000
#: A bundle is uploaded a moment before the task that names it is submitted.
BUNDLE_GRACE_S = 3600.0
SAMPLES = 10
SYNC_DATA = "hivemind recover --playbook sync-data"
#: States in which a task still needs its bundle and checkpoint.
_UNFINISHED = (TaskState.QUEUED, TaskState.RUNNING)
_FIELDS = ("id", "owner", "status", "kind", "has_result_archive", "attempt", "has_checkpoint")


def live_tasks(client: redis.Redis) -> tuple[list[TaskRef], int]:
    """The newest live task records (and how many tasks:all lists in all)."""
    total = int(client.zcard(keys.TASKS_ALL))
    ids = [str(i) for i in client.zrevrange(keys.TASKS_ALL, 0, LIVE_TASK_LIMIT - 1)]
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(keys.task_key(task_id), _FIELDS)
    records = [dict(zip(_FIELDS, row, strict=True)) for row in pipe.execute()]
    # tasks:all keeps ids whose hash expired after archiving; those are not live.
    records = [r for r in records if r["id"]]
    # Only an unfinished bundle task still needs its bundle; spec is fetched for those alone
    # (a function task's spec can be large).
    need_spec = [r for r in records if r["kind"] == "BUNDLE" and r["status"] in _UNFINISHED]
    pipe = client.pipeline(transaction=False)
    for record in need_spec:
        pipe.hget(keys.task_key(str(record["id"])), "spec")
    for record, spec in zip(need_spec, pipe.execute(), strict=True):
        record["spec"] = spec
    return [TaskRef.from_record(r) for r in records], total


_ARCHIVED_COLUMNS = (
    "id, owner, status, attempt, "
    "json_extract(record, '$.has_result_archive'), "
    "json_extract(record, '$.has_checkpoint'), "
    "json_extract(json_extract(record, '$.spec'), '$.bundle_id')"
)


def _archived_ref(row: tuple[object, ...]) -> TaskRef:
    task_id, owner, status, attempt, has_result, has_checkpoint, bundle_id = row
    return TaskRef(
        id=str(task_id),
        owner=str(owner or ""),
        status=str(status or ""),
        bundle_id=str(bundle_id or ""),
        result_attempt=int(str(attempt or 0)) if str(has_result) == "1" else None,
        has_checkpoint=str(has_checkpoint) == "1",
    )


def archived_tasks(conn: sqlite3.Connection, blob_task_ids: Iterable[str]) -> list[TaskRef]:
    """The newest archived tasks, plus any archived task a blob on disk is named after."""
    rows = conn.execute(
        f"SELECT {_ARCHIVED_COLUMNS} FROM tasks ORDER BY rowid DESC LIMIT ?",
        (ARCHIVE_TASK_LIMIT,),
    ).fetchall()
    seen = {str(row[0]) for row in rows}
    wanted = sorted(set(blob_task_ids) - seen)
    for start in range(0, len(wanted), 500):
        batch = wanted[start : start + 500]
        rows += conn.execute(
            f"SELECT {_ARCHIVED_COLUMNS} FROM tasks WHERE id IN ({','.join('?' * len(batch))})",
            batch,
        ).fetchall()
    return [_archived_ref(row) for row in rows]


def archived_bundle_ids(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT json_extract(json_extract(record, '$.spec'), '$.bundle_id') "
        "FROM tasks WHERE kind = 'BUNDLE'"
    )
    return {str(row[0]) for row in rows if row[0]}


def blob_files(data: Path, now: float) -> list[BlobFile]:
    blobs = []
    for kind in BLOB_KINDS:
        try:
            entries = list(os.scandir(data / kind))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Unavailable(f"cannot list {data / kind}: {exc.strerror or exc}") from exc
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    blobs.append(BlobFile(kind, entry.name, now - entry.stat().st_mtime))
            except OSError:
                continue  # removed while we listed
    return blobs


@check(
    "data.consistency",
    title="Redis, users.db and the data folder refer to each other consistently",
    guide="5 數據問題 / 數據不一致: 比較數據源",
)
def consistency(ctx: Context) -> Finding:
    client = ctx.redis()
    db_path = ctx.home.users_db
    if not db_path.exists():
        raise Unavailable(f"{db_path} does not exist (see sqlite.file)")
    # Redis first, then the disk, then SQLite: a target is written before anything refers to
    # it (a result file before its task completes, a user before their tasks), and a task
    # exists before any blob named after it, so this order never catches a half-made link.
    try:
        live, total_live = live_tasks(client)
        queue_owners = [str(owner) for owner in client.zrange(keys.QUEUE_OWNERS, 0, -1)]
    except (redis.RedisError, OSError) as exc:
        raise Unavailable(f"Redis stopped answering: {exc}") from exc
    blobs = blob_files(ctx.home.data, ctx.now())
    blob_ids = {owner for b in blobs if b.kind != "bundles" and (owner := blob_owner(b))}
    try:
        conn = open_readonly(db_path, ctx.probe_timeout)
        try:
            usernames = {str(row[0]) for row in conn.execute("SELECT username FROM users")}
            archived = archived_tasks(conn, blob_ids)
            # Every archived bundle reference counts, even beyond the archive sample; that
            # means reading every bundle task's record, so only when some old bundle is
            # otherwise unused.
            used = {t.bundle_id for t in live + archived}
            unused = any(
                b.kind == "bundles" and b.age_s > BUNDLE_GRACE_S and blob_owner(b) not in used
                for b in blobs
            )
            bundles_in_archive = archived_bundle_ids(conn) if unused else set()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise Unavailable(f"cannot read {db_path.name}: {exc} (see sqlite.integrity)") from exc

    found = find_dangling(
        live,
        archived,
        usernames,
        queue_owners,
        blobs,
        BUNDLE_GRACE_S,
        bundles_used_elsewhere=bundles_in_archive,
    )
    evidence: dict[str, object] = {
        "live_tasks_checked": len(live),
        "live_tasks_listed": total_live,
        "archived_tasks_checked": len(archived),
        "users": len(usernames),
        "blob_files": len(blobs),
    }
    if total_live > LIVE_TASK_LIMIT:
        evidence["note"] = f"only the newest {LIVE_TASK_LIMIT} live tasks were checked"
    if found.unknown_owners:
        evidence["unknown_owners"] = {
            owner: ids[:SAMPLES] for owner, ids in sorted(found.unknown_owners.items())
        }
    if found.missing_blobs:
        evidence["missing_blobs"] = found.missing_blobs[:SAMPLES]
    if found.orphan_blobs:
        evidence["orphan_blobs"] = found.orphan_blobs[:SAMPLES]
    if found.unreferenced_bundles:
        evidence["unreferenced_bundles"] = found.unreferenced_bundles[:SAMPLES]

    problems = []
    if found.unknown_owners:
        owned = sum(len(ids) for ids in found.unknown_owners.values())
        names = ", ".join(sorted(found.unknown_owners)[:5])
        problems.append(f"{owned} Redis record(s) name user(s) users.db lacks ({names})")
    if found.missing_blobs:
        problems.append(f"{len(found.missing_blobs)} blob(s) a task record names are missing")
    if found.orphan_blobs:
        problems.append(
            f"{len(found.orphan_blobs)} blob(s) on disk belong to no task Redis or users.db knows"
        )
    if problems:
        return Finding.fail("; ".join(problems), SYNC_DATA, **evidence)
    if found.unreferenced_bundles:
        return Finding.warn(
            f"{len(found.unreferenced_bundles)} bundle(s) older than "
            f"{BUNDLE_GRACE_S / 3600:g} h are used by no task (a rejected submit leaves one)",
            SYNC_DATA,
            **evidence,
        )
    return Finding.ok(
        f"{len(live)} live and {len(archived)} archived task(s), {len(usernames)} user(s) "
        f"and {len(blobs)} blob file(s) agree",
        **evidence,
    )
