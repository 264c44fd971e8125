"""data.consistency: the reference finder on captured task hashes, and the verdict on a real
Redis + users.db + data folder put into each inconsistent state."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import redis

from doctor.engine import run_doctor
from doctor.model import Finding, Status
from doctor.probes.data_refs import BlobFile, TaskRef, blob_owner, find_dangling
from hivemind import keys
from hivemind.config import Settings
from hivemind.nodepool.blobs import BlobStore
from hivemind.paths import layout
from hivemind.states import TaskState
from hivemind.taskstore import NewTask, Outcome, TaskStore, WorkerCaps
from hivemind.userdb import UserStore
from tests.helpers import free_port

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"
CAPS = WorkerCaps(cpu=4, memory_mb=4096, gpu=0, labels=())


def captured_task(name: str) -> dict[str, str]:
    record: dict[str, str] = json.loads((FIXTURES / f"data_task_{name}.json").read_text())
    return record


# -- the reference finder on captured records --------------------------------------------------
def test_task_refs_from_captured_hashes() -> None:
    queued = TaskRef.from_record(captured_task("queued_bundle"))
    assert queued.owner == "alice" and queued.status == "QUEUED" and not queued.terminal
    assert queued.bundle_id == hashlib.sha256(b"bundle").hexdigest()
    assert queued.result_attempt is None
    done = TaskRef.from_record(captured_task("succeeded_with_result"))
    assert done.terminal and done.result_attempt == 1
    assert TaskRef.from_record({"spec": "not json"}).bundle_id == ""


def test_blob_names_are_the_node_pools() -> None:
    task_id = captured_task("succeeded_with_result")["id"]
    assert blob_owner(BlobFile("results", f"{task_id}-1.zip", 0)) == task_id
    assert blob_owner(BlobFile("logs", f"{task_id}.log", 0)) == task_id
    assert blob_owner(BlobFile("checkpoints", f"{task_id}.zip", 0)) == task_id
    assert blob_owner(BlobFile("results", "tmpab12.zip", 0)) is None
    assert blob_owner(BlobFile("logs", f"{task_id}.tmp", 0)) is None


def test_find_dangling_on_captured_records() -> None:
    queued = TaskRef.from_record(captured_task("queued_bundle"))
    done = TaskRef.from_record(captured_task("succeeded_with_result"))
    bundle = BlobFile("bundles", f"{queued.bundle_id}.zip", 10)
    result = BlobFile("results", f"{done.id}-1.zip", 10)

    clean = find_dangling([queued, done], [], {"alice"}, ["alice"], [bundle, result], 3600)
    assert not clean.broken and not clean.unreferenced_bundles

    nobody = find_dangling([queued], [], set(), ["alice"], [bundle], 3600)
    assert nobody.unknown_owners == {"alice": [queued.id, "queue:owners"]}
    lost = find_dangling([queued, done], [], {"alice"}, [], [], 3600)
    assert len(lost.missing_blobs) == 2
    # Only the archive knows the finished task: its result is not an orphan.
    archived = find_dangling([], [done], {"alice"}, [], [result], 3600)
    assert not archived.broken
    orphan = find_dangling([], [], {"alice"}, [], [result, bundle], 3600)
    assert orphan.orphan_blobs == [result.ref]
    assert orphan.unreferenced_bundles == []  # 10 s old: its submit may be on its way
    old = BlobFile("bundles", bundle.name, 7200)
    assert find_dangling([], [], set(), [], [old], 3600).unreferenced_bundles == [old.ref]


# -- verdicts on a real system -----------------------------------------------------------------
@pytest.fixture
def stack(settings: Settings) -> Settings:
    store = UserStore(layout(settings.home).users_db)
    store.create_user("alice", "password1", role="admin")
    store.close()
    return settings


def tasks(settings: Settings) -> TaskStore:
    return TaskStore(redis.Redis.from_url(settings.redis_url, decode_responses=True))


def blobs(settings: Settings) -> BlobStore:
    return BlobStore(layout(settings.home).data, settings.max_task_data_size)


def upload_bundle(settings: Settings, content: bytes = b"print('hi')") -> str:
    store = blobs(settings)
    temp, digest, _ = store.receive([content])
    store.keep(temp, "bundles", digest)
    return digest


def submit(settings: Settings, owner: str = "alice", bundle_id: str = "") -> str:
    kind, spec = ("BUNDLE", {"bundle_id": bundle_id}) if bundle_id else ("FUNCTION", {})
    task = NewTask(owner, "t", kind, spec, timeout=60, retries=0, priority=0)
    [task_id] = tasks(settings).submit([task])
    return task_id


def finish_with_result(settings: Settings, task_id: str) -> Path:
    """Run the task the way a worker does: lease, upload a result archive, complete."""
    store = tasks(settings)
    [lease] = store.lease("w1", CAPS, 1, 30)
    assert lease.task_id == task_id
    assert store.mark_data(task_id, lease.attempt, "w1", "result") == ""
    data = blobs(settings)
    temp, _, _ = data.receive([b"PK result"])
    path = data.keep(temp, "results", f"{task_id}-{lease.attempt}")
    outcome = Outcome(task_id, lease.attempt, "w1", TaskState.SUCCEEDED, has_result_archive=True)
    assert store.complete([outcome]) == [""]
    return path


def consistency(settings: Settings) -> Finding:
    return run_doctor(settings, only=["data.consistency"]).result("data.consistency").finding


def test_a_consistent_stack_is_ok(stack: Settings) -> None:
    finished = submit(stack, bundle_id=upload_bundle(stack))
    submit(stack, bundle_id=upload_bundle(stack, b"other"))  # stays queued
    finish_with_result(stack, finished)  # the oldest is leased first
    result = consistency(stack)
    assert result.status is Status.OK, result.summary
    assert result.evidence["live_tasks_checked"] == 2
    assert result.evidence["blob_files"] == 3


def test_a_task_owned_by_a_user_sqlite_lacks_fails(stack: Settings) -> None:
    submit(stack, owner="alice")
    ghost = submit(stack, owner="mallory")
    result = consistency(stack)
    assert result.status is Status.FAIL
    assert "mallory" in result.summary
    assert result.evidence["unknown_owners"] == {"mallory": [ghost, "queue:owners"]}
    assert result.fix == "hivemind recover --playbook sync-data"


def test_a_queued_task_whose_bundle_vanished_fails(stack: Settings) -> None:
    bundle_id = upload_bundle(stack)
    task_id = submit(stack, bundle_id=bundle_id)
    blobs(stack).path("bundles", bundle_id).unlink()
    result = consistency(stack)
    assert result.status is Status.FAIL
    assert result.evidence["missing_blobs"] == [
        f"task {task_id}: bundle bundles/{bundle_id}.zip is missing"
    ]


def test_a_finished_task_whose_result_vanished_fails(stack: Settings) -> None:
    result_file = finish_with_result(stack, submit(stack))
    assert consistency(stack).status is Status.OK
    result_file.unlink()
    result = consistency(stack)
    assert result.status is Status.FAIL
    assert "1 blob(s) a task record names are missing" in result.summary


def test_a_result_of_an_unknown_task_fails_but_an_archived_one_is_fine(
    stack: Settings,
) -> None:
    task_id = submit(stack)
    finish_with_result(stack, task_id)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    record = {str(k): str(v) for k, v in client.hgetall(keys.task_key(task_id)).items()}
    # Past retention: only the SQLite archive holds the task; its result is still its own.
    store = UserStore(layout(stack.home).users_db)
    store.archive_tasks([(record, [])])
    store.close()
    client.delete(keys.task_key(task_id))
    assert consistency(stack).status is Status.OK

    stray = blobs(stack).path("results", "0123456789abcdef-1")
    stray.write_bytes(b"PK")
    result = consistency(stack)
    assert result.status is Status.FAIL
    assert result.evidence["orphan_blobs"] == ["results/0123456789abcdef-1.zip"]


def test_an_old_bundle_nobody_uses_warns(stack: Settings) -> None:
    bundle_id = upload_bundle(stack)
    assert consistency(stack).status is Status.OK  # just uploaded: its task may follow
    path = blobs(stack).path("bundles", bundle_id)
    two_hours_ago = time.time() - 7200
    os.utime(path, (two_hours_ago, two_hours_ago))
    result = consistency(stack)
    assert result.status is Status.WARN
    assert result.evidence["unreferenced_bundles"] == [f"bundles/{bundle_id}.zip"]


def test_without_redis_or_users_db_it_skips(stack: Settings) -> None:
    down = stack.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    result = run_doctor(down, only=["data.consistency"], timeout=3).result("data.consistency")
    assert result.status is Status.SKIP and "ports.redis" in result.finding.summary
    layout(stack.home).users_db.unlink()
    result = run_doctor(stack, only=["data.consistency"]).result("data.consistency")
    assert result.status is Status.SKIP and "sqlite.file" in result.finding.summary


def test_an_old_bundle_of_an_archived_task_is_still_in_use(stack: Settings) -> None:
    bundle_id = upload_bundle(stack)
    task_id = submit(stack, bundle_id=bundle_id)
    finish_with_result(stack, task_id)
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    record = {str(k): str(v) for k, v in client.hgetall(keys.task_key(task_id)).items()}
    store = UserStore(layout(stack.home).users_db)
    store.archive_tasks([(record, [])])
    store.close()
    client.delete(keys.task_key(task_id))  # past retention: only the archive names the bundle
    two_hours_ago = time.time() - 7200
    os.utime(blobs(stack).path("bundles", bundle_id), (two_hours_ago, two_hours_ago))
    result = consistency(stack)
    assert result.status is Status.OK, result.summary
    assert result.evidence["live_tasks_checked"] == 0
