"""Playbooks and `hivemind recover` over a real sshd on 127.0.0.1: the host runs the same
engine itself, so over SSH they do what they do locally; a dead host is its own failed row."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hivemind import keys
from hivemind.config import Settings
from tests.cluster import Cluster, make_cluster
from tests.helpers import free_port
from tests.sshd import SSHD
from tests.test_doctor_cluster import _stuck_task, client
from tests.test_doctor_remote import remote_hivemind, settings_env, ssh_args


def hivemind(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hivemind", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_playbook_over_ssh_requeues_and_a_dead_host_is_its_own_row(
    settings: Settings, sshd: SSHD
) -> None:
    task_id, _ = _stuck_task(settings)
    dead = f"{sshd.user}@127.0.0.1:{free_port()}"
    remote = ["--remote-hivemind", remote_hivemind(settings)]
    plan = hivemind(
        "playbook", "run", "requeue-stuck", "--dry-run", "--json", *ssh_args(sshd), *remote,
        env=settings_env(settings),
    )  # fmt: skip
    (run,) = json.loads(plan.stdout)["runs"]
    assert run["host"] == sshd.target and run["steps"][0]["status"] == "planned"
    assert client(settings).hget(keys.task_key(task_id), "status") == "RUNNING"

    proc = hivemind(
        "playbook", "run", "requeue-stuck", "--json", *ssh_args(sshd), "--host", dead, *remote,
        env=settings_env(settings),
    )  # fmt: skip
    runs = {r["host"]: r for r in json.loads(proc.stdout)["runs"]}
    assert runs[dead]["failed"] and "refused" in runs[dead]["error"].lower()
    assert [s["status"] for s in runs[sshd.target]["steps"]] == ["changed"]
    assert proc.returncode == 1  # the dead host fails the run, and hides nothing
    assert client(settings).hget(keys.task_key(task_id), "status") == "QUEUED"
    # The audit line is written on the host that ran the step, naming who asked.
    audit = Path(settings.home) / "recovery" / "audit.log"
    (entry,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert entry["step"] == "Requeue stuck tasks" and "@" in entry["who"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Cluster]:
    cluster = make_cluster(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    cluster.up(workers=1)
    try:
        yield cluster
    finally:
        cluster.down()


def outage(cluster: Cluster) -> None:
    """The node pool and the worker die; the node pool's pid file goes with it."""
    procs = [psutil.Process(cluster.pid(name)) for name in ("nodepool", "worker-local-1")]
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    (cluster.home / "run" / "nodepool.pid").unlink()


def steps(report: dict) -> list[tuple[str, str, str]]:
    return [(r["playbook"], s["step"], s["status"]) for r in report["runs"] for s in r["steps"]]


def test_recover_over_ssh_does_what_it_does_locally(stack: Cluster, sshd: SSHD) -> None:
    outage(stack)
    local = hivemind("recover", "--json", env=stack.env)
    assert local.returncode == 0, local.stdout + local.stderr
    here = json.loads(local.stdout)
    assert here["healthy"] and here["time_to_healthy_s"] > 0

    outage(stack)
    env = {k: v for k, v in stack.env.items() if k.startswith(("HIVEMIND_", "XDG_", "PYTHON"))}
    words = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    remote = f"env {words} {shlex.quote(sys.executable)} -m hivemind"
    over = hivemind(
        "recover", "--json", *ssh_args(sshd), "--remote-hivemind", remote, env=stack.env
    )
    assert over.returncode == 0, over.stdout + over.stderr
    (there,) = json.loads(over.stdout)
    assert there["host"] == sshd.target and there["healthy"]
    assert [c["playbook"] for c in there["chosen"]] == [c["playbook"] for c in here["chosen"]]
    assert steps(there) == steps(here)
    assert ("recover", "Start the node pool", "changed") in steps(there)

    doctor = json.loads(hivemind("doctor", "--json", env=stack.env).stdout)
    assert [c["id"] for c in doctor["checks"] if c["status"] == "fail"] == []
