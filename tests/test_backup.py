"""Backup, verify and restore against a real Redis and a real users.db."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import redis

from hivemind import keys
from hivemind.config import Settings
from hivemind.errors import UsageError
from hivemind.paths import layout
from hivemind.taskstore import NewTask, TaskStore, WorkerCaps
from hivemind.userdb import UserStore
from recovery import redis_dump
from recovery.archive import ArchiveError, Manifest, read_manifest, write_archive
from recovery.backup import create_backup, list_archives
from recovery.restore import RestoreError, restore_backup
from recovery.verify import verify_archive
from tests.helpers import REPO_ROOT, RedisServer, free_port

CAPS = WorkerCaps(cpu=4, memory_mb=4096, gpu=0, labels=())


def function_task(owner: str, n: int) -> NewTask:
    return NewTask(
        owner=owner,
        name=f"add-{n}",
        kind="FUNCTION",
        spec={"function": "hivemind.examples:add", "args": [n, 1]},
        timeout=60,
        retries=1,
        priority=0,
    )


def populate(settings: Settings) -> dict[str, list[str]]:
    """Two users, queued, running and finished tasks, a bundle and a result on disk."""
    home = layout(settings.home)
    store = UserStore(home.users_db)
    store.create_user("alice", "alice-password", credits=10)
    store.create_user("bob", "bob-password", role="admin")
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    tasks = TaskStore(client)
    (home.data / "bundles").mkdir(parents=True, exist_ok=True)
    (home.data / "results").mkdir(parents=True, exist_ok=True)
    bundle_id = "ab" * 32
    (home.data / "bundles" / f"{bundle_id}.zip").write_bytes(b"PK-bundle")
    bundle = NewTask("alice", "b", "BUNDLE", {"bundle_id": bundle_id}, 60, 1, 0)
    ids = tasks.submit([function_task("alice", n) for n in range(5)] + [bundle])
    leased = tasks.lease("w1", CAPS, 3, 30)
    running = [lease.task_id for lease in leased]
    done = running.pop()
    tasks.mark_data(done, 1, "w1", "result")
    (home.data / "results" / f"{done}-1.zip").write_bytes(b"PK-result")
    from hivemind.states import TaskState
    from hivemind.taskstore import Outcome

    tasks.complete([Outcome(done, 1, "w1", TaskState.SUCCEEDED, "6", "", True)])
    tasks.heartbeat("w1", {"cpu": 4}, {"status": "online", "cpu": 4}, running, 30)
    store.archive_tasks([(client.hgetall(f"task:{done}"), [])])
    store.close()
    (home.worker_config / "w1.token").write_text("token\n")
    (home.node_pool / "secret.key").write_text("s3cret\n")
    client.close()
    return {"all": ids, "running": running, "done": [done]}


def fresh_target(tmp_path: Path, redis_server: RedisServer, settings: Settings) -> Settings:
    url = redis_server.url.rsplit("/", 1)[0] + "/4"
    redis.Redis.from_url(url).flushdb()
    return settings.replace(home=layout(tmp_path / "restored").ensure().root, redis_url=url)


def home_state(settings: Settings) -> dict[str, str]:
    """Every path under HIVEMIND_HOME with its mode (and hash for a file), and Redis's keys."""
    root = layout(settings.home).root
    state = {
        str(p.relative_to(root)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )
        + f" {p.stat().st_mode:o}"
        for p in sorted(root.rglob("*"))
    }
    client = redis.Redis.from_url(settings.redis_url)
    try:
        state["<redis>"] = redis_dump.dumps(
            [e for e in redis_dump.snapshot(client) if e.type != "none"]
        ).decode()
    finally:
        client.close()
    return state


def test_every_documented_key_is_backed_up_except_rate_limits_the_lock_and_the_channel() -> None:
    # A key added to hivemind/keys.py without a backup pattern would silently be lost.
    documented = re.findall(r"^``([a-z_:<>]+)``", keys.__doc__ or "", flags=re.M)
    assert len(documented) > 15
    for name in documented:
        concrete = re.sub(r"<[a-z_]+>", "x1", name)
        covered = any(fnmatch.fnmatchcase(concrete, p) for p in keys.BACKUP_KEY_PATTERNS)
        # A rate-limit window, a running process's lock, a pub/sub channel (holds nothing).
        ephemeral = name.startswith("login_failures") or name in (
            keys.HOUSEKEEPING_LOCK,
            keys.NODEPOOL_EVENTS,
        )
        assert covered == (not ephemeral), name


def test_backup_then_restore_into_a_fresh_home(
    settings: Settings, tmp_path: Path, redis_server: RedisServer
) -> None:
    made = populate(settings)
    result = create_backup(settings)
    assert result.archive.parent == layout(settings.home).backups
    assert result.archive.name.startswith("hivemind-backup-")
    assert result.archive.stat().st_mode & 0o777 == 0o600
    counts = result.manifest.counts
    assert (counts.users, counts.tasks, counts.tasks_in_redis, counts.workers) == (2, 6, 6, 1)
    assert counts.tasks_archived == 1
    assert counts.tasks_by_status == {"QUEUED": 3, "RUNNING": 2, "SUCCEEDED": 1}
    paths = {f.path for f in result.manifest.files}
    assert {"node_pool/users.db", "redis.json", "node_pool/secret.key"} <= paths
    assert {"worker/config/w1.token", f"data/results/{made['done'][0]}-1.zip"} <= paths

    report = verify_archive(result.archive)
    assert report.ok, report.problems
    # The doctor's data checks judged the scratch copies too, or the report says why not.
    assert any(c.name == "doctor" or c.name.startswith("doctor.") for c in report.checks)
    marker = json.loads(result.archive.with_name(result.archive.name + ".verified").read_text())
    assert marker["ok"] is True and marker["verified_at"]

    target = fresh_target(tmp_path, redis_server, settings)
    restored = restore_backup(target, result.archive)
    assert sorted(restored.requeued) == sorted(made["running"])
    store = UserStore(layout(target.home).users_db)
    try:
        assert store.authenticate("alice", "alice-password") is not None
        assert store.authenticate("bob", "bob-password").role == "admin"  # type: ignore[union-attr]
        assert store.authenticate("alice", "wrong-password") is None
        assert store.archived_task(made["done"][0]) is not None
    finally:
        store.close()
    client = redis.Redis.from_url(target.redis_url, decode_responses=True)
    for task_id in made["running"]:
        assert client.hget(f"task:{task_id}", "status") == "QUEUED"
        assert "restored from a backup" in client.lrange(f"task:{task_id}:history", -1, -1)[0]
    assert client.hget(f"task:{made['done'][0]}", "status") == "SUCCEEDED"
    assert client.llen("task_queue") == 5
    assert client.zcard("leases") == 0 and client.scard("worker:w1:tasks") == 0
    # The backup's worker is history: offline until it heartbeats again.
    assert client.hget("worker:w1", "status") == "offline"
    assert json.loads(client.hget("worker_nodes", "w1"))["status"] == "offline"  # type: ignore[arg-type]
    # The restored queue works: a worker leases every queued task.
    leased = TaskStore(client).lease("w2", CAPS, 10, 30)
    assert len(leased) == 5
    restored_home = layout(target.home)
    assert (restored_home.worker_config / "w1.token").read_text() == "token\n"
    assert (restored_home.data / "results" / f"{made['done'][0]}-1.zip").read_bytes() == (
        b"PK-result"
    )
    assert restored.previous_state is not None and restored.previous_state.is_dir()


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_damaged_archive_is_refused_by_verify_and_restore(
    settings: Settings, tmp_path: Path, redis_server: RedisServer
) -> None:
    populate(settings)
    archive = create_backup(settings).archive
    flip_one_byte(archive)
    with pytest.raises(ArchiveError, match="damaged"):
        verify_archive(archive)
    marker = json.loads(archive.with_name(archive.name + ".verified").read_text())
    assert marker["ok"] is False
    target = fresh_target(tmp_path, redis_server, settings)
    before = home_state(target)
    with pytest.raises(ArchiveError):
        restore_backup(target, archive)
    assert home_state(target) == before


def test_a_failed_restore_puts_the_previous_state_back(
    settings: Settings, tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(settings)
    archive = create_backup(settings).archive
    target = fresh_target(tmp_path, redis_server, settings)
    store = UserStore(layout(target.home).users_db)
    store.create_user("carol", "carol-password")
    store.close()
    TaskStore(redis.Redis.from_url(target.redis_url)).submit([function_task("carol", 1)])
    before = home_state(target)

    def broken(self: TaskStore, task_ids: list[str]) -> list[str]:
        raise RuntimeError("disk on fire")

    # Fault injection: the last step of the swap fails, after files and Redis were replaced.
    monkeypatch.setattr(TaskStore, "requeue_restored", broken)
    with pytest.raises(RestoreError, match="previous state was put back: disk on fire"):
        restore_backup(target, archive)
    assert home_state(target) == before
    store = UserStore(layout(target.home).users_db)
    assert store.authenticate("carol", "carol-password") is not None
    store.close()


def test_altered_file_is_caught_by_its_checksum(settings: Settings, tmp_path: Path) -> None:
    populate(settings)
    archive = create_backup(settings).archive
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    manifest = Manifest.from_json((unpacked / "manifest.json").read_bytes())
    (unpacked / "worker/config/w1.token").write_text("forged\n")
    forged = tmp_path / "hivemind-backup-20000101-000000.tar.gz"
    write_archive(forged, unpacked, manifest)
    with pytest.raises(ArchiveError, match=r"worker/config/w1\.token does not match its checksum"):
        verify_archive(forged)


def test_newer_schema_is_refused(settings: Settings, tmp_path: Path) -> None:
    populate(settings)
    archive = create_backup(settings).archive
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    manifest = Manifest.from_json((unpacked / "manifest.json").read_bytes())
    manifest.schema_version = 99
    newer = tmp_path / "newer.tar.gz"
    write_archive(newer, unpacked, manifest)
    with pytest.raises(ArchiveError, match="schema 99, newer than this HiveMind"):
        restore_backup(settings, newer, dry_run=True)


def test_dry_run_changes_nothing(
    settings: Settings, tmp_path: Path, redis_server: RedisServer
) -> None:
    made = populate(settings)
    archive = create_backup(settings).archive
    target = fresh_target(tmp_path, redis_server, settings)
    UserStore(layout(target.home).users_db).close()
    before = home_state(target)
    report = restore_backup(target, archive, dry_run=True)
    assert report.dry_run and sorted(report.requeued) == sorted(made["running"])
    assert report.counts.users == 2
    assert home_state(target) == before


def test_keep_retention_never_deletes_the_new_archive(settings: Settings, tmp_path: Path) -> None:
    populate(settings)
    out = tmp_path / "archives"
    out.mkdir()
    old = [out / f"hivemind-backup-2020010{n}-000000.tar.gz" for n in range(1, 4)]
    for path in old:
        path.write_bytes(b"old")
    (out / "unrelated.tar.gz").write_bytes(b"keep me")
    result = create_backup(settings, out, keep=2)
    assert list_archives(out) == [old[2], result.archive]
    assert sorted(result.removed) == old[:2]
    assert (out / "unrelated.tar.gz").exists()
    again = create_backup(settings, out, keep=1)
    assert list_archives(out) == [again.archive]
    with pytest.raises(UsageError, match="--keep must be at least 1"):
        create_backup(settings, out, keep=0)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    env.update(
        HIVEMIND_HOME=str(settings.home),
        HIVEMIND_REDIS_URL=settings.redis_url,
        HIVEMIND_GRPC_PORT=str(settings.grpc_port),
        PYTHONPATH=str(REPO_ROOT),
    )
    return subprocess.run(
        [sys.executable, "-m", "hivemind", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_cli_backup_verify_and_bad_input(settings: Settings, tmp_path: Path) -> None:
    populate(settings)
    made = cli(settings, "backup", "--json")
    assert made.returncode == 0, made.stderr
    reply = json.loads(made.stdout)
    archive = Path(reply["archive"])
    assert read_manifest(archive).counts.users == 2 == reply["manifest"]["counts"]["users"]
    verified = cli(settings, "backup", "verify", str(archive))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "restorable" in verified.stdout and "redis.trial_restore" in verified.stdout

    flip_one_byte(archive)
    for args in (("backup", "verify", str(archive)), ("restore", str(archive), "--yes")):
        proc = cli(settings, *args)
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: ") and "damaged" in proc.stderr
        assert "Traceback" not in proc.stderr
    missing = cli(settings, "backup", "verify", str(tmp_path / "nope.tar.gz"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_text("hello")
    proc = cli(settings, "backup", "verify", str(not_tar))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    unconfirmed = cli(settings, "restore", str(archive))
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    no_redis = cli(settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0"), "backup")
    assert no_redis.returncode == 1 and "Traceback" not in no_redis.stderr
    assert no_redis.stderr.startswith("error: cannot read the Redis state")
    empty_home = settings.replace(home=tmp_path / "empty-home")
    no_db = cli(empty_home, "backup")
    assert no_db.returncode == 1 and "users.db does not exist" in no_db.stderr
    bad_keep = cli(settings, "backup", "--keep", "0")
    assert bad_keep.returncode == 2 and "--keep must be at least 1" in bad_keep.stderr
