"""Backup and restore of real running stacks (`hivemind up`), locally and over real SSH."""

from __future__ import annotations

import io
import json
import shlex
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from hivemind.client import bundle_spec, function_spec, result_value
from hivemind.errors import NodePoolError
from recovery import redis_dump
from tests.cluster import Cluster, started_cluster
from tests.helpers import RedisServer, wait_until
from tests.sshd import SSHD

pytestmark = pytest.mark.slow

SLOW_BUNDLE = {
    "main.py": (
        "import time\nfrom pathlib import Path\ntime.sleep(4)\n"
        "Path('output').mkdir(exist_ok=True)\nPath('output/done.txt').write_text('done')\n"
    )
}


def bundle_zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def dumped_tasks(archive: Path) -> tuple[list[redis_dump.KeyEntry], dict[str, dict[str, str]]]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("redis.json")
        assert member is not None
        entries = redis_dump.loads(member.read())
    return entries, redis_dump.task_records(entries)


def assert_whole(entries: list[redis_dump.KeyEntry], records: dict[str, dict[str, str]]) -> None:
    """Every task in the dump is whole: its record, history, index and queue entries."""
    by_key = {e.key: e for e in entries}
    indexed = {member for member, _ in by_key["tasks:all"].value}
    queue = set(by_key["task_queue"].value) if "task_queue" in by_key else set()
    assert indexed == set(records)
    for task_id, record in records.items():
        assert {"spec", "owner", "status", "attempt"} <= set(record), task_id
        history = [json.loads(h)["event"] for h in by_key[f"task:{task_id}:history"].value]
        assert history[0] == "submitted", task_id
        assert (task_id in queue) == (record["status"] == "QUEUED"), task_id


def test_backup_under_load_restores_into_a_running_fresh_stack(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    submitted: list[str] = []
    with started_cluster(redis_server, tmp_path / "a", workers=1) as a:
        bundle_path = tmp_path / "slow.zip"
        bundle_path.write_bytes(bundle_zip(SLOW_BUNDLE))
        with a.client() as c:
            bundle_id = c.upload_bundle(bundle_path)
            first = c.submit([function_spec("hivemind.examples:add", [n, 1]) for n in range(5)])
            c.wait(first, timeout=60)
            slow = c.submit([bundle_spec(bundle_id, name=f"slow-{n}") for n in range(2)])
        assert wait_until(
            lambda: all(a.redis().hget(f"task:{t}", "status") == "RUNNING" for t in slow), 30
        )
        stop = threading.Event()

        def load() -> None:
            with a.client() as c:
                while not stop.wait(0.05):
                    specs = [function_spec("hivemind.examples:sleep", [0.01]) for _ in range(2)]
                    submitted.extend(c.submit(specs))

        loader = threading.Thread(target=load)
        loader.start()
        try:
            assert wait_until(lambda: len(submitted) >= 20, 30)
            made = a.cli("backup", "--json")
        finally:
            stop.set()
            loader.join()
        reply = json.loads(made.stdout)
        archive = Path(reply["archive"])
        password = (a.home / "node_pool" / "admin.password").read_text().strip()
        entries, records = dumped_tasks(archive)
        assert_whole(entries, records)
        # Tasks were being submitted while it ran: some are in it, and nothing half.
        in_backup = set(records) & set(submitted)
        assert in_backup, "the load submitted nothing before the snapshot"
        running = sorted(t for t, r in records.items() if r["status"] == "RUNNING")
        assert set(slow) <= set(running)
        assert reply["manifest"]["counts"]["tasks_in_redis"] == len(records)
        verified = a.cli("backup", "verify", str(archive))
        assert "restorable" in verified.stdout
        # The doctor sees a recent, verified backup.
        doctor = json.loads(a.cli("doctor", "--only", "backup.recent", "--json").stdout)
        assert doctor["checks"][0]["status"] == "ok", doctor

    with started_cluster(redis_server, tmp_path / "b", workers=1) as b:
        restored = b.cli("restore", str(archive), "--yes", "--json", timeout=240)
        report = json.loads(restored.stdout)
        assert sorted(report["requeued"]) == running
        assert report["counts"]["tasks"] == reply["manifest"]["counts"]["tasks"]
        assert any(s.startswith("worker") for s in report["services"])
        # The doctor ran on the restarted stack and found nothing failing.
        assert report["doctor"] is not None
        assert report["doctor_problems"] == [], report
        status = json.loads(b.cli("status", "--json", check=False).stdout)
        assert status["healthy"], status
        # The backup's admin and password, not the one this stack was created with.
        b.cli("login", "-u", "admin", "--password", password)
        with b.client() as c:
            finished = c.wait(sorted(records), timeout=120)
            by_id = {t.id: t for t in finished}
            for task_id, record in records.items():
                task = by_id[task_id]
                assert task.status == "SUCCEEDED", (task_id, task.status, task.error_message)
                if record["status"] == "SUCCEEDED":
                    assert task.result_json == record["result_json"]
                    assert task.attempt == int(record["attempt"])
            assert [result_value(by_id[t]) for t in first] == [n + 1 for n in range(5)]
            for task_id in slow:
                out = c.fetch_result(task_id, tmp_path / f"out-{task_id}")
                assert (out / "done.txt").read_text() == "done"
            # Tasks never in the backup are not in the restored stack.
            missing = sorted(set(submitted) - set(records))
            if missing:
                with pytest.raises(NodePoolError):
                    c.get(missing[0])


def remote_command(cluster: Cluster) -> str:
    """How the sshd session runs `hivemind` against this cluster's home."""
    env = {k: v for k, v in cluster.env.items() if k.startswith("HIVEMIND_") or k == "PYTHONPATH"}
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"env {assigns} {shlex.quote(sys.executable)} -m hivemind"


def test_backup_over_ssh_matches_a_local_backup(
    redis_server: RedisServer, tmp_path: Path, sshd: SSHD
) -> None:
    with started_cluster(redis_server, tmp_path / "a", workers=1) as a:
        with a.client() as c:
            ids = c.submit([function_spec("hivemind.examples:add", [n, 2]) for n in range(4)])
            c.wait(ids, timeout=60)
        a.cli("tasks")  # nothing moves between the two backups now
        time.sleep(0.5)
        local = json.loads(a.cli("backup", "--json", "-o", str(tmp_path / "local")).stdout)
        fetched_dir = tmp_path / "fetched"
        over_ssh = a.cli(
            "backup",
            "--json",
            "-o",
            str(fetched_dir),
            "--host",
            sshd.target,
            "--ssh-key",
            str(sshd.client_key),
            "--known-hosts",
            str(sshd.known_hosts),
            "--remote-hivemind",
            remote_command(a),
        )
        [result] = json.loads(over_ssh.stdout)
        assert result["error"] is None
        archive = Path(result["archive"])
        assert archive.parent == fetched_dir and archive.is_file()
        assert archive.stat().st_mode & 0o777 == 0o600
        assert result["remote_archive"] != str(archive)
        assert result["manifest"]["counts"] == local["manifest"]["counts"]
        assert a.cli("backup", "verify", str(archive)).returncode == 0

        wrong_port = a.cli(
            "backup",
            "--host",
            f"{sshd.user}@127.0.0.1:1",
            "--ssh-key",
            str(sshd.client_key),
            check=False,
        )
        assert wrong_port.returncode == 1
        assert "connection refused" in wrong_port.stderr + wrong_port.stdout
        assert "Traceback" not in wrong_port.stderr
