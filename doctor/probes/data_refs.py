"""Cross-references between Redis, users.db and the node pool's data folder.

Pure: the check collects task records, archived tasks, usernames and blob files; these
functions say which references dangle. Names of blobs are the node pool's own
(:mod:`hivemind.nodepool.blobs`): ``bundles/<sha256>.zip``, ``results/<task>-<attempt>.zip``,
``checkpoints/<task>.zip``, ``logs/<task>.log``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hivemind.states import is_terminal

BLOB_KINDS = ("bundles", "results", "checkpoints", "logs")
_TASK_ID = r"[0-9a-f]{16,64}"
_BLOB_NAMES = {
    "bundles": re.compile(r"^(?P<id>[0-9a-f]{16,64})\.zip$"),
    "results": re.compile(rf"^(?P<id>{_TASK_ID})-(?P<attempt>[0-9]+)\.zip$"),
    "checkpoints": re.compile(rf"^(?P<id>{_TASK_ID})\.zip$"),
    "logs": re.compile(rf"^(?P<id>{_TASK_ID})\.log$"),
}


@dataclass(frozen=True)
class BlobFile:
    kind: str
    name: str
    #: Seconds since it was last written.
    age_s: float

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class TaskRef:
    """What one task record (live in Redis or archived in SQLite) points at."""

    id: str
    owner: str
    status: str
    bundle_id: str = ""
    result_attempt: int | None = None  # set when the record says a result archive exists
    has_checkpoint: bool = False

    @property
    def terminal(self) -> bool:
        return is_terminal(self.status)

    @classmethod
    def from_record(cls, record: Mapping[str, str | None]) -> TaskRef:
        """From a task hash (or the archived copy of one); missing fields are empty."""
        try:
            spec = json.loads(record.get("spec") or "{}")
        except ValueError:
            spec = {}
        bundle_id = str(spec.get("bundle_id") or "") if isinstance(spec, dict) else ""
        has_result = record.get("has_result_archive") == "1"
        return cls(
            id=str(record.get("id") or ""),
            owner=str(record.get("owner") or ""),
            status=str(record.get("status") or ""),
            bundle_id=bundle_id,
            result_attempt=_int(record.get("attempt")) if has_result else None,
            has_checkpoint=record.get("has_checkpoint") == "1",
        )


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def blob_owner(blob: BlobFile) -> str | None:
    """The task id (or, for bundles, the content hash) a blob file belongs to."""
    pattern = _BLOB_NAMES.get(blob.kind)
    match = pattern.match(blob.name) if pattern else None
    return match.group("id") if match else None


@dataclass
class Dangling:
    #: owner -> ids of live tasks (or "queue:owners") naming a user users.db lacks.
    unknown_owners: dict[str, list[str]] = field(default_factory=dict)
    #: "task <id>: <what> <path> is missing".
    missing_blobs: list[str] = field(default_factory=list)
    #: results/checkpoints/logs of tasks neither Redis nor the archive knows.
    orphan_blobs: list[str] = field(default_factory=list)
    #: Bundles no task refers to (left by a rejected submit, say): garbage, not breakage.
    unreferenced_bundles: list[str] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return bool(self.unknown_owners or self.missing_blobs or self.orphan_blobs)


def find_dangling(
    live: Iterable[TaskRef],
    archived: Iterable[TaskRef],
    usernames: set[str],
    queue_owners: Iterable[str],
    blobs: Iterable[BlobFile],
    bundle_grace_s: float,
    bundles_used_elsewhere: Iterable[str] = (),
) -> Dangling:
    """Every reference between the three stores that points at nothing."""
    live, archived, blobs = list(live), list(archived), list(blobs)
    found = Dangling()
    for task in live:
        if task.owner not in usernames:
            found.unknown_owners.setdefault(task.owner, []).append(task.id)
    for owner in queue_owners:
        if owner not in usernames:
            found.unknown_owners.setdefault(owner, []).append("queue:owners")

    on_disk = {blob.ref for blob in blobs}
    live_ids = {task.id for task in live}
    # A live record is the truth; its archived copy (archived at its end) may be older.
    records = live + [task for task in archived if task.id not in live_ids]
    for task in records:
        wanted = []
        if task.bundle_id and not task.terminal:
            wanted.append(("bundle", f"bundles/{task.bundle_id}.zip"))
        if task.result_attempt is not None and task.terminal:
            wanted.append(("result archive", f"results/{task.id}-{task.result_attempt}.zip"))
        if task.has_checkpoint and not task.terminal:
            wanted.append(("checkpoint", f"checkpoints/{task.id}.zip"))
        for what, path in wanted:
            if path not in on_disk:
                found.missing_blobs.append(f"task {task.id}: {what} {path} is missing")

    known_tasks = {task.id for task in records}
    bundles_used = {task.bundle_id for task in records if task.bundle_id}
    bundles_used.update(bundles_used_elsewhere)
    for blob in blobs:
        named_after = blob_owner(blob)
        if named_after is None:
            continue  # not a name the node pool writes (a temp file, an operator's copy)
        if blob.kind == "bundles":
            if named_after not in bundles_used and blob.age_s > bundle_grace_s:
                found.unreferenced_bundles.append(blob.ref)
        elif named_after not in known_tasks:
            found.orphan_blobs.append(blob.ref)
    return found
