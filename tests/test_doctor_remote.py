"""`hivemind doctor --host`: the same findings over a real sshd on 127.0.0.1 as locally, and
one clear fail row for a host that cannot be reached."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hivemind.config import Settings
from tests.helpers import REPO_ROOT, free_port
from tests.sshd import SSHD

#: Checks whose verdict may differ between two runs a second apart (they sample the machine).
SAMPLED = {"resources.cpu", "resources.load", "redis.latency", "network.latency"}


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "HIVEMIND_HOME": str(settings.home),
        "HIVEMIND_REDIS_URL": settings.redis_url,
        "HIVEMIND_GRPC_PORT": str(settings.grpc_port),
        "HIVEMIND_MASTER_PORT": str(settings.master_port),
        "HIVEMIND_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
        "PYTHONPATH": str(REPO_ROOT),
    }


def remote_hivemind(settings: Settings) -> str:
    """How the remote side runs hivemind: this interpreter, on the test's settings."""
    env = settings_env(settings)
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"env {assignments} {shlex.quote(sys.executable)} -m hivemind"


def doctor_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hivemind", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def ssh_args(sshd: SSHD, target: str | None = None) -> list[str]:
    return [
        "--host", target or sshd.target,
        "--ssh-key", str(sshd.client_key),
        "--known-hosts", str(sshd.known_hosts),
    ]  # fmt: skip


def test_over_ssh_the_host_reports_what_its_local_run_reports(
    settings: Settings, sshd: SSHD
) -> None:
    local = doctor_cli("--json", "--timeout", "3", env=settings_env(settings))
    local_report = json.loads(local.stdout)
    remote = doctor_cli(
        "--json", "--timeout", "3", *ssh_args(sshd), "--remote-hivemind", remote_hivemind(settings)
    )
    document = json.loads(remote.stdout)
    assert document["schema"] == 1
    (report,) = document["reports"]
    assert report["host"] == sshd.target
    local_rows = {c["id"]: (c["status"], c["summary"]) for c in local_report["checks"]}
    remote_rows = {c["id"]: (c["status"], c["summary"]) for c in report["checks"]}
    assert remote_rows.keys() == local_rows.keys()
    for check_id in local_rows.keys() - SAMPLED:
        assert remote_rows[check_id][0] == local_rows[check_id][0], (
            check_id, local_rows[check_id], remote_rows[check_id],
        )  # fmt: skip
    # Nothing listens on the settings' node pool port: both runs say so, in the same words.
    assert remote_rows["ports.nodepool"] == local_rows["ports.nodepool"]
    assert remote_rows["ports.nodepool"][0] == "fail"
    assert remote.returncode == local.returncode == 1


def test_a_wrong_port_is_one_clear_fail_row_within_the_timeout(
    settings: Settings, sshd: SSHD
) -> None:
    wrong = f"{sshd.user}@127.0.0.1:{free_port()}"
    began = time.monotonic()
    proc = doctor_cli("--timeout", "2", *ssh_args(sshd, wrong))
    took = time.monotonic() - began
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    text = " ".join(proc.stdout.split())
    assert "remote.ssh" in text and wrong in text
    assert "refused" in text.lower()
    assert took < 2 + 1 + 2.5, f"took {took:.1f}s"  # the timeout, plus interpreter start-up


def test_one_dead_host_never_hides_a_live_one(settings: Settings, sshd: SSHD) -> None:
    dead = f"{sshd.user}@127.0.0.1:{free_port()}"
    proc = doctor_cli(
        "--json", "--timeout", "3", "--only", "tasks.timeout_config",
        *ssh_args(sshd), "--host", dead, "--remote-hivemind", remote_hivemind(settings),
    )  # fmt: skip
    reports = {r["host"]: r for r in json.loads(proc.stdout)["reports"]}
    assert [c["id"] for c in reports[dead]["checks"]] == ["remote.ssh"]
    assert reports[dead]["checks"][0]["status"] == "fail"
    live = reports[sshd.target]["checks"]
    assert [(c["id"], c["status"]) for c in live] == [("tasks.timeout_config", "ok")]
    assert proc.returncode == 1


def test_an_unknown_host_key_is_refused_unless_relaxed_on_purpose(
    settings: Settings, sshd: SSHD, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    args = [
        "--json", "--timeout", "3", "--only", "tasks.timeout_config",
        "--host", sshd.target, "--ssh-key", str(sshd.client_key), "--known-hosts", str(empty),
        "--remote-hivemind", remote_hivemind(settings),
    ]  # fmt: skip
    refused = json.loads(doctor_cli(*args).stdout)["reports"][0]["checks"][0]
    assert refused["id"] == "remote.ssh" and refused["status"] == "fail"
    assert "host key" in refused["summary"].lower()
    relaxed = json.loads(doctor_cli(*args, "--insecure-host-key").stdout)["reports"][0]
    assert [c["status"] for c in relaxed["checks"]] == ["ok"]


def test_without_hivemind_there_only_host_probes_run_and_the_rest_says_why(
    settings: Settings, sshd: SSHD
) -> None:
    proc = doctor_cli(
        "--json", "--timeout", "10", *ssh_args(sshd), "--remote-hivemind", "/nonexistent/hivemind"
    )
    (report,) = json.loads(proc.stdout)["reports"]
    rows = {c["id"]: c for c in report["checks"]}
    assert rows["ports.nodepool"]["status"] == "skip"
    assert "hivemind is not installed on" in rows["ports.nodepool"]["summary"]
    probed = [c for c in report["checks"] if "not installed" not in c["summary"]]
    assert probed, "the host probes should have run over SSH"
    assert all(c["status"] != "error" for c in probed), probed
