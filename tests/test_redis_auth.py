"""The Redis `hivemind up` starts has a password, and every HiveMind process uses it.

Over real processes: `hivemind up` with REDIS_URL at a free port (so it starts its own
Redis), `redis-cli` from outside, tasks end to end, `hivemind doctor`, and the file modes of
the home, the logs and the AOF.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hivemind.config import Settings, effective_redis_url, url_password
from tests.cluster import Cluster, make_cluster
from tests.helpers import free_port

pytestmark = pytest.mark.slow

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello"


def redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        pytest.fail("redis-cli is not installed (Debian: redis-tools)", pytrace=False)
    return found


def cli_ping(port: int, password: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if password is not None:
        env["REDISCLI_AUTH"] = password  # never on the command line
    proc = subprocess.run(
        [redis_cli(), "-p", str(port), "ping"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    return (proc.stdout + proc.stderr).strip()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    port = free_port()
    c = make_cluster(tmp_path_factory.mktemp("redis-auth"), f"redis://127.0.0.1:{port}/0")
    c.up(workers=1)
    try:
        yield c
    finally:
        c.down()


def port_of(cluster: Cluster) -> int:
    return int(cluster.redis_url.rsplit(":", 1)[1].split("/")[0])


def password_of(cluster: Cluster) -> str:
    return (cluster.home / "redis" / "redis.password").read_text().strip()


def test_the_redis_up_starts_needs_the_generated_password(cluster: Cluster) -> None:
    password_file = cluster.home / "redis" / "redis.password"
    assert mode(password_file) == 0o600
    password = password_of(cluster)
    assert len(password) >= 40
    port = port_of(cluster)
    assert cli_ping(port, None).startswith("NOAUTH")
    assert cli_ping(port, "not-the-password").startswith(("WRONGPASS", "AUTH failed"))
    assert cli_ping(port, password) == "PONG"
    # The password is in no process's command line and no pid file.
    redis_pid = cluster.pid("redis")
    for proc in psutil.process_iter(["cmdline"]):
        assert not any(password in arg for arg in proc.info["cmdline"] or []), proc
    for pidfile in (cluster.home / "run").glob("*.pid"):
        assert password not in pidfile.read_text()
    conf = Path(json.loads((cluster.home / "run" / "redis.pid").read_text())["cmdline"][1])
    assert mode(conf) == 0o600 and password in conf.read_text()
    assert psutil.Process(redis_pid).is_running()
    # REDIS_URL itself stays without it; the processes resolve it from the file.
    url = effective_redis_url(Settings(home=cluster.home, redis_url=cluster.redis_url))
    assert url_password(cluster.redis_url) is None and url_password(url) == password


def test_tasks_run_end_to_end_with_the_password(cluster: Cluster) -> None:
    add = cluster.cli(
        "submit", "hivemind.examples:add", "--arg", "2", "--arg", "3", "--wait", "--json"
    )
    [task] = json.loads(add.stdout)
    assert task["status"] == "SUCCEEDED" and task["result"] == 5
    bundle = cluster.cli("submit", str(HELLO), "--wait", "--json")
    [run] = json.loads(bundle.stdout)
    assert run["status"] == "SUCCEEDED", run
    assert cluster.redis().hget(f"task:{task['id']}", "status") == "SUCCEEDED"
    status = json.loads(cluster.cli("status", "--json").stdout)
    assert status["healthy"] is True


def test_doctor_passes_the_redis_checks(cluster: Cluster) -> None:
    proc = cluster.cli(
        "doctor", "--only", "redis,ports.redis,security.secrets", "--json", check=False
    )
    checks = {c["id"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["ports.redis"]["status"] == "ok", checks["ports.redis"]
    assert checks["redis.auth"]["status"] == "ok", checks["redis.auth"]
    assert checks["redis.auth"]["evidence"]["told_by"] == "requirepass"
    assert checks["redis.config_exposure"]["evidence"]["requirepass"] == "set"
    assert checks["security.secrets"]["status"] == "ok", checks["security.secrets"]
    failed = [c["id"] for c in checks.values() if c["status"] in ("fail", "error")]
    assert failed == []
    assert password_of(cluster) not in proc.stdout


def test_backup_and_its_trial_restore_work_with_the_password(cluster: Cluster) -> None:
    made = json.loads(cluster.cli("backup", "--json").stdout)
    assert made["manifest"]["counts"]["tasks_in_redis"] >= 2, made
    checked = json.loads(cluster.cli("backup", "verify", made["archive"], "--json").stdout)
    assert checked["ok"] is True, checked
    assert password_of(cluster) not in json.dumps(checked)


def test_home_logs_and_aof_are_closed_to_other_users(cluster: Cluster) -> None:
    home = cluster.home
    assert mode(home) & ~0o750 == 0
    redis_dir = home / "redis"
    data = [p for p in redis_dir.rglob("*") if p.is_file() and ".aof" in p.name]
    assert data, "no AOF written"
    logs = [
        *redis_dir.glob("*.log"),
        *(home / "node_pool" / "logs").iterdir(),
        *(home / "worker" / "logs").iterdir(),
    ]
    assert any(p.name == "nodepool.log" for p in logs)
    assert any(p.name.endswith(".out") for p in logs)
    for path in data + logs:
        assert mode(path) & ~0o640 == 0, f"{path} is {mode(path):04o}"


def test_a_restart_reuses_the_password_and_keeps_the_data(cluster: Cluster) -> None:
    before = password_of(cluster)
    submitted = cluster.cli(
        "submit", "hivemind.examples:add", "--arg", "1", "--arg", "1", "--wait", "--json"
    )
    [task] = json.loads(submitted.stdout)
    tid = task["id"]
    cluster.down()
    # A password file made by hand with a loose mode is tightened, not replaced.
    os.chmod(cluster.home / "redis" / "redis.password", 0o644)
    os.chmod(cluster.home, 0o755)
    cluster.up(workers=1)
    assert password_of(cluster) == before
    assert mode(cluster.home / "redis" / "redis.password") == 0o600
    assert mode(cluster.home) == 0o750
    assert cli_ping(port_of(cluster), before) == "PONG"
    assert cluster.redis().exists(f"task:{tid}")
