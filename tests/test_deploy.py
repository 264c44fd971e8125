"""`hivemind deploy` for real: a TLS node pool here, and three "hosts" that are three sshds
on 127.0.0.1, each with a HOME and HIVEMIND_HOME of its own (sshd's SetEnv). The deploy
builds this checkout's wheel, installs it in each host's venv over SSH and joins it; the
tests then run tasks through the deployed workers and upgrade them while tasks run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from hivemind.client import function_spec
from hivemind.deploy import build_wheel
from hivemind.deploy.model import default_node_id, hosts_from_inventory
from hivemind.errors import UsageError
from hivemind.remote.inventory import parse_inventory_yaml
from hivemind.remote.ssh import parse_target
from tests.cluster import Cluster, started_cluster
from tests.helpers import REPO_ROOT, RedisServer, free_port
from tests.sshd import SSHD, running_sshd

#: The Python the hosts make their venvs from: this one, whose site packages hold every
#: dependency (the sshd sessions' PATH finds only the system python3, which has none).
HOST_PYTHON = os.path.realpath(sys.executable)


@dataclass
class Host:
    sshd: SSHD
    home: Path

    @property
    def hivemind_home(self) -> Path:
        return self.home / ".hivemind"

    @property
    def node_id(self) -> str:
        return default_node_id(parse_target(self.sshd.target))

    @property
    def venv(self) -> Path:
        return self.hivemind_home / "venv"

    def worker_pid(self) -> int:
        pidfile = self.hivemind_home / "run" / f"worker-{self.node_id}.pid"
        return int(json.loads(pidfile.read_text())["pid"])


@dataclass
class Fleet:
    pool: Cluster
    hosts: list[Host]
    inventory: Path
    root: Path

    def deploy(self, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
        ssh = self.hosts[0].sshd
        # One client key for all three sshds; each has its own host key in known_hosts.
        known = self.root / "known_hosts"
        return self.pool.cli(
            "deploy", "--inventory", str(inventory or self.inventory),
            "--ssh-key", str(ssh.client_key), "--known-hosts", str(known),
            "--json", *args,
            check=False, timeout=240,
        )  # fmt: skip


def _host_env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "HIVEMIND_HOME": str(home / ".hivemind"),
        "HIVEMIND_HEARTBEAT_INTERVAL": "0.5",
        "HIVEMIND_SHUTDOWN_GRACE": "5",
        "HIVEMIND_MAX_CONCURRENT_TASKS": "4",
    }


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("deploy")
    with ExitStack() as stack:
        pool = stack.enter_context(
            started_cluster(redis_server, root / "pool", workers=0, tls="on")
        )
        hosts: list[Host] = []
        for number in range(1, 4):
            home = root / f"host-{number}" / "home"
            home.mkdir(parents=True)
            sshd = stack.enter_context(
                running_sshd(root / f"host-{number}" / "sshd", env=_host_env(home))
            )
            hosts.append(Host(sshd, home))
        # Its own key for every sshd, but the client key of the first: authorize it on all.
        client_pub = (hosts[0].sshd.client_key.with_suffix(".pub")).read_text()
        for host in hosts[1:]:
            (host.sshd.client_key.parent / "authorized_keys").write_text(client_pub)
        known = root / "known_hosts"
        known.write_text("".join(h.sshd.known_hosts.read_text() for h in hosts))
        inventory = root / "hosts.yaml"
        inventory.write_text(
            "groups:\n  workers:\n"
            + "".join(
                f"    - host: {h.sshd.target}\n      python: {HOST_PYTHON}\n" for h in hosts[:2]
            )
            + f"  spare:\n    - host: {hosts[2].sshd.target}\n      python: {HOST_PYTHON}\n"
        )
        fleet = Fleet(pool, hosts, inventory, root)
        try:
            yield fleet
        finally:
            for host in hosts:
                hivemind = host.venv / "bin" / "hivemind"
                if hivemind.exists():
                    env = {**os.environ, **_host_env(host.home)}
                    env.pop("PYTHONPATH", None)
                    subprocess.run(
                        [str(hivemind), "down"], env=env, capture_output=True, timeout=60
                    )


@pytest.fixture(scope="module")
def deployed(fleet: Fleet) -> dict[str, object]:
    """The first deploy, to the two hosts of the group workers."""
    started = time.monotonic()
    ran = fleet.deploy("--group", "workers")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary = json.loads(ran.stdout)
    summary["seconds"] = time.monotonic() - started
    return summary


def _runs_from_venv(host: Host) -> None:
    """The worker process is the venv's Python, and that Python, in the worker's own
    environment and working directory, imports hivemind from the venv (not from this
    checkout, which is installed editable on this machine too)."""
    pid = host.worker_pid()
    proc = Path(f"/proc/{pid}")
    argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
    assert argv[0] == str(host.venv / "bin" / "python"), argv
    assert argv[1:4] == ["-m", "hivemind", "worker"], argv
    environ = dict(
        entry.decode().split("=", 1)
        for entry in (proc / "environ").read_bytes().split(b"\0")
        if entry
    )
    assert "PYTHONPATH" not in environ
    where = subprocess.run(
        [argv[0], "-c", "import hivemind; print(hivemind.__file__)"],
        env=environ, cwd=os.readlink(proc / "cwd"), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(host.venv) + "/"), where


def test_deploy_to_a_group_runs_tasks_on_both_workers(fleet: Fleet, deployed: dict) -> None:
    workers = [h.node_id for h in fleet.hosts[:2]]
    assert deployed["counts"] == {"ok": 2, "failed": 0, "skipped": 0}, deployed
    assert [h["node_id"] for h in deployed["hosts"]] == workers
    assert all(h["phase"] == "done" and h["doctor_failures"] == 0 for h in deployed["hosts"])
    for host in fleet.hosts[:2]:
        _runs_from_venv(host)
    # The host of the other group was never touched.
    assert not fleet.hosts[2].hivemind_home.exists()

    with fleet.pool.client() as client:
        ids = client.submit([function_spec("hivemind.examples:sleep", [0.05]) for _ in range(200)])
    tasks = fleet.pool.wait_all(ids, 90)
    assert [t.status for t in tasks] == ["SUCCEEDED"] * 200
    assert all(t.attempt == 1 for t in tasks)
    ran_on = {t.worker for t in tasks}
    assert ran_on == set(workers), ran_on
    for task_id in ids:
        assert fleet.pool.terminal_events(task_id) == ["succeeded"]


def _new_version_wheel(root: Path, version: str) -> Path:
    """This checkout's wheel under another version: what an upgrade ships."""
    tree = root / "src"
    shutil.copytree(
        REPO_ROOT, tree, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "__pycache__")
    )
    pyproject = tree / "pyproject.toml"
    text, count = re.subn(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text())
    assert count == 1
    pyproject.write_text(text)
    return build_wheel(root / "dist", root=tree)


def test_rolling_upgrade_while_tasks_run(fleet: Fleet, deployed: dict) -> None:
    wheel = _new_version_wheel(fleet.root / "upgrade", "0.1.0+upgrade1")
    old_pids = {h.node_id: h.worker_pid() for h in fleet.hosts[:2]}
    with fleet.pool.client() as client:
        ids = client.submit([function_spec("hivemind.examples:sleep", [0.5]) for _ in range(300)])
        # Tasks really are running when the first host is drained.
        deadline = time.monotonic() + 20
        while not any(t.status == "RUNNING" for t in client.wait(ids[:50], 0)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    ran = fleet.deploy("--group", "workers", "--upgrade", "--serial", "1", "--wheel", str(wheel))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary = json.loads(ran.stdout)
    assert [h["installed_version"] for h in summary["hosts"]] == ["0.1.0+upgrade1"] * 2
    assert all("drain" in h["durations"] and "start" in h["durations"] for h in summary["hosts"])

    tasks = fleet.pool.wait_all(ids, 120)
    assert [t.status for t in tasks] == ["SUCCEEDED"] * 300
    for task_id in ids:
        assert fleet.pool.terminal_events(task_id) == ["succeeded"]
    for host in fleet.hosts[:2]:
        new_pid = host.worker_pid()
        assert new_pid != old_pids[host.node_id]
        _runs_from_venv(host)
        # The upgrade happened while tasks ran: each host's old worker finished tasks before
        # its successor started, and the successor (the new wheel) ran tasks afterwards.
        restarted_at = psutil.Process(new_pid).create_time()
        mine = [t for t in tasks if t.worker == host.node_id]
        assert any(t.finished_at < restarted_at for t in mine), host.node_id
        assert any(t.start_time > restarted_at for t in mine), host.node_id
        version = subprocess.run(
            [str(host.venv / "bin" / "python"), "-c",
             "import importlib.metadata as m; print(m.version('hivemind-platform'))"],
            capture_output=True, text=True, check=True, cwd=host.home,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        ).stdout.strip()  # fmt: skip
        assert version == "0.1.0+upgrade1"


def test_a_dead_host_stops_the_deploy_and_the_rest_is_skipped(fleet: Fleet) -> None:
    dead = f"root@127.0.0.1:{free_port()}"  # nothing listens there
    spare = fleet.hosts[2]
    inventory = fleet.root / "dead.yaml"
    inventory.write_text(
        f"hosts:\n  - {dead}\n  - host: {spare.sshd.target}\n    python: {HOST_PYTHON}\n"
    )
    ran = fleet.deploy("--serial", "1", "--max-fail-percent", "0", inventory=inventory)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr
    summary = json.loads(ran.stdout)
    first, second = summary["hosts"]
    assert first["outcome"] == "failed" and first["phase"] == "connect"
    assert "127.0.0.1" in first["message"] and "refused" in first["message"].lower(), first
    assert second["outcome"] == "skipped" and "max-fail-percent" in second["message"]
    assert summary["stopped_early"] is True
    assert not spare.hivemind_home.exists()

    # The same, rendered for a person: one table, the reason, no traceback.
    ssh = spare.sshd
    shown = fleet.pool.cli(
        "deploy", "--inventory", str(inventory), "--serial", "1", "--max-fail-percent", "0",
        "--ssh-key", str(ssh.client_key), "--known-hosts", str(fleet.root / "known_hosts"),
        check=False,
    )  # fmt: skip
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "1 failed, 1 skipped" in shown.stdout.replace("0 ok, ", ""), shown.stdout
    assert "connect:" in shown.stdout


def test_a_host_without_that_python_fails_clearly(fleet: Fleet) -> None:
    spare = fleet.hosts[2]
    inventory = fleet.root / "nopython.yaml"
    inventory.write_text(f"hosts:\n  - host: {spare.sshd.target}\n    python: /nowhere/python3\n")
    ran = fleet.deploy(inventory=inventory)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    [host] = json.loads(ran.stdout)["hosts"]
    assert host["outcome"] == "failed" and host["phase"] == "python"
    assert host["message"].startswith("python: no /nowhere/python3 on the host"), host
    assert not spare.hivemind_home.exists()


def test_bad_input_is_one_clear_line(fleet: Fleet, tmp_path: Path) -> None:
    missing = fleet.deploy(inventory=tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "cannot read inventory" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("hosts: [unclosed\n")
    bad = fleet.deploy(inventory=broken)
    assert bad.returncode == 2 and "not valid YAML" in bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr


# -- the YAML inventory, pure ------------------------------------------------------------


def test_yaml_inventory_hosts_groups_and_vars() -> None:
    inventory = parse_inventory_yaml(
        "hosts:\n"
        "  - root@10.0.0.1\n"
        "groups:\n"
        "  workers:\n"
        "    - hive@gpu-1\n"
        "    - host: hive@gpu-2:2222\n"
        "      node_id: gpu-2\n"
        "      labels: [gpu, big]\n"
        "      hivemind_home: /srv/hivemind\n"
        "  gpu:\n"
        "    - hive@gpu-2:2222\n"
    )
    assert [str(t) for t in inventory.targets()] == [
        "root@10.0.0.1:22", "hive@gpu-1:22", "hive@gpu-2:2222",
    ]  # fmt: skip
    assert inventory.groups == ["workers", "gpu"]
    gpu2 = inventory.hosts[2]
    assert gpu2.groups == ["workers", "gpu"]
    assert gpu2.vars == {
        "node_id": "gpu-2",
        "labels": ["gpu", "big"],
        "hivemind_home": "/srv/hivemind",
    }
    hosts = hosts_from_inventory(inventory, ["workers"])
    assert [(h.node_id, h.labels, h.hivemind_home) for h in hosts] == [
        ("gpu-1", (), None),
        ("gpu-2", ("gpu", "big"), "/srv/hivemind"),
    ]
    assert default_node_id(parse_target("u@10.0.0.1:2222")) == "10.0.0.1-2222"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hosts: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("servers: [a]\n", "unknown key 'servers'"),
        ("groups: [a]\n", "groups must be a mapping"),
        ("hosts: a@b\n", "hosts must be a list"),
        ("hosts: [3]\n", "hosts[0]: a host is user@host[:port]"),
        ("hosts:\n  - node_id: x\n", "a host entry needs host:"),
        ("hosts:\n  - {host: a@b, colour: red}\n", "unknown host variable 'colour'"),
        ("hosts:\n  - {host: a@b, labels: gpu}\n", "labels must be a list of strings"),
        ("hosts:\n  - {host: a@b, node_id: ''}\n", "node_id must not be empty"),
        ("hosts:\n  - a@b:99999\n", "the port must be 1-65535"),
        (
            "hosts:\n  - {host: a@b, node_id: x}\ngroups:\n  g:\n    - {host: a@b, node_id: y}\n",
            "has node_id 'x' already",
        ),
    ],
)
def test_yaml_inventory_errors_say_where(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_inventory_yaml(text, "hosts.yaml")


def test_an_empty_yaml_inventory_has_no_hosts() -> None:
    assert parse_inventory_yaml("").hosts == []
    assert parse_inventory_yaml("hosts:\ngroups:\n").hosts == []
