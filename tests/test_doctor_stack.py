"""`hivemind doctor` against a real stack started with `hivemind up`: a healthy run, explain
and the support bundle, through the CLI as an operator runs them."""

from __future__ import annotations

import json
import os
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, started_cluster
from tests.helpers import RedisServer, wait_until

SECRET = "s3cr3t-signing-key-0123456789abcdef"


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("doctor-stack")
    with started_cluster(redis_server, root, workers=1, secret_key=SECRET) as c:
        yield c


def test_a_fresh_stack_has_no_fail_and_exits_zero(cluster: Cluster) -> None:
    proc = cluster.cli("doctor", "--json", check=False, timeout=60)
    report = json.loads(proc.stdout)
    bad = [(c["id"], c["summary"]) for c in report["checks"] if c["status"] in ("fail", "error")]
    assert bad == [], bad
    assert proc.returncode == 0
    by_id = {c["id"]: c for c in report["checks"]}
    assert by_id["ports.nodepool"]["status"] == "ok"
    assert by_id["ports.redis"]["status"] == "ok"
    assert by_id["workers.count"]["status"] == "ok"
    assert "local-1" in by_id["process.services"]["summary"]
    # The table rendering names every category and ends with the counts.
    table = cluster.cli("doctor", "--only", "ports,workers", check=False).stdout
    assert "ports.nodepool" in table and "workers.heartbeat" in table
    assert " 0 fail, " in table


def test_usage_errors_exit_two(cluster: Cluster) -> None:
    proc = cluster.cli("doctor", "--only", "ports.nodpool", check=False)
    assert proc.returncode == 2
    assert "unknown doctor check or category: ports.nodpool" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_explain_names_the_requirement_no_worker_meets(cluster: Cluster) -> None:
    submitted = cluster.cli(
        "submit", "hivemind.examples:add", "--arg", "1", "--arg", "2",
        "--memory", str(512 * 1024), "--json",
    )  # fmt: skip
    (task_id,) = json.loads(submitted.stdout)["task_ids"]
    out = " ".join(cluster.cli("doctor", "explain", task_id).stdout.split())
    assert "QUEUED" in out
    assert f"memory_mb {512 * 1024} >" in out
    assert "closest is local-1" in out
    as_json = json.loads(cluster.cli("doctor", "explain", task_id, "--json").stdout)
    assert as_json["status"] == "QUEUED"
    assert any("no live worker meets the requirements" in c for c in as_json["causes"])
    cluster.cli("task", "cancel", task_id)


def test_explain_of_a_failed_task_shows_its_error_attempts_and_log(
    cluster: Cluster, tmp_path: Path
) -> None:
    bundle = tmp_path / "breaks"
    bundle.mkdir()
    (bundle / "main.py").write_text(
        "print('loading the input', flush=True)\nraise RuntimeError('input file is empty')\n"
    )
    proc = cluster.cli("submit", str(bundle), "--wait", "--json", check=False)
    task_id = json.loads(proc.stdout)[0]["id"]
    out = json.loads(cluster.cli("doctor", "explain", task_id, "--json").stdout)
    assert out["status"] == "FAILED"
    events = [e["event"] for e in out["history"]]
    assert events[0] == "submitted" and "leased" in events and events[-1] == "failed"
    assert any("error:" in c for c in out["causes"]), out["causes"]
    assert "loading the input" in out["log_tail"]
    assert any("RuntimeError: input file is empty" in line for line in out["log_tail"])


def test_explain_of_an_unknown_task_is_one_clear_error(cluster: Cluster) -> None:
    proc = cluster.cli("doctor", "explain", "0123456789abcdef", check=False)
    assert proc.returncode == 1
    assert "no task '0123456789abcdef'" in proc.stderr and "Traceback" not in proc.stderr


def test_bundle_collects_findings_and_logs_and_hides_secrets(
    cluster: Cluster, tmp_path: Path
) -> None:
    (cluster.home / "master" / "config" / "smtp.toml").write_text(
        'host = "mail.example"\npassword = "hunter2hunter2"\n'
    )
    assert wait_until(lambda: (cluster.home / "node_pool" / "logs" / "nodepool.log").exists())
    proc = cluster.cli("doctor", "bundle", "-o", str(tmp_path), timeout=60)
    (archive,) = tmp_path.glob("hivemind-doctor-*.tar.gz")
    assert str(archive) in proc.stdout.replace("\n", "")
    assert "password" in proc.stdout  # it says what it redacted
    with tarfile.open(archive) as tar:
        members = {
            m.name.removeprefix("hivemind-doctor/"): tar.extractfile(m).read().decode()
            for m in tar.getmembers()
        }  # type: ignore[union-attr]
    for name in (
        "findings.json",
        "settings.json",
        "redis-info.json",
        "versions.json",
        "processes.txt",
        "logs/node_pool/logs/nodepool.log",
        "config/master/config/smtp.toml",
    ):
        assert name in members, sorted(members)
    assert json.loads(members["findings.json"])["schema"] == 1
    assert "redis_version" in members["redis-info.json"]
    everything = "\n".join(members.values())
    assert SECRET not in everything
    assert "hunter2hunter2" not in everything
    assert 'password = "***"' in members["config/master/config/smtp.toml"]


def test_fix_starts_a_killed_node_pool_as_the_last_up_did(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path, workers=1) as c:
        shape = (c.home / "run" / "stack.json").read_text()
        os.kill(c.pid("nodepool"), signal.SIGKILL)
        assert wait_until(
            lambda: json.loads(c.cli("doctor", "--json", "--only", "ports.nodepool",
                                     check=False).stdout)["checks"][0]["status"] == "fail",
            timeout=10,
        )  # fmt: skip
        proc = c.cli("doctor", "--fix", "--yes", "--only", "ports,process", check=False,
                     timeout=120)  # fmt: skip
        out = " ".join(proc.stdout.split())
        assert "ports.nodepool: fail → ok" in out, out
        assert proc.returncode == 0, out
        assert (c.home / "run" / "stack.json").read_text() == shape  # same workers as before
        log = [json.loads(line) for line in (c.home / "doctor" / "actions.log").open()]
        assert any(e["check"] == "ports.nodepool" and e["applied"] for e in log)
