"""The playbook commands' contract: list and show, a malformed playbook or a missing variable
is one line and exit 2 before anything runs, and `service install` writes the guide's units
(into a temp root, never the real /etc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hivemind.config import Settings
from tests.test_doctor_remote import settings_env


def hivemind(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hivemind", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **settings_env(settings), "COLUMNS": "200"},
    )


def test_list_and_show(settings: Settings) -> None:
    listed = hivemind(settings, "playbook", "list")
    assert listed.returncode == 0
    for name in ("recover", "requeue-stuck", "sync-data", "rebuild-db", "swap"):
        assert name in listed.stdout
    shown = hivemind(settings, "playbook", "show", "recover")
    assert shown.returncode == 0
    assert "Start the node pool" in shown.stdout and "ports.redis is fail" in shown.stdout


def test_a_malformed_playbook_is_one_line_and_exit_2_before_anything_runs(
    settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ndescription: d\nsteps:\n"
        "  - name: fine\n    clean: {glob: '*/logs/*.log.old'}\n"
        "  - name: wipe\n    redis: {command: [FLUSHALL]}\n"
    )
    old = Path(settings.home) / "node_pool" / "logs" / "x.log.old"
    old.write_text("")
    proc = hivemind(settings, "playbook", "run", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{bad}:7: redis: Redis command FLUSHALL is refused" in " ".join(proc.stderr.split())
    assert old.exists()  # the first, valid step did not run either
    assert not (Path(settings.home) / "recovery" / "audit.log").exists()


def test_bad_arguments_are_usage_errors(settings: Settings) -> None:
    missing = hivemind(settings, "playbook", "run", "open-firewall", "--dry-run")
    assert missing.returncode == 2 and "needs --var subnet=VALUE" in missing.stderr
    unknown = hivemind(settings, "playbook", "run", "no-such-playbook")
    assert unknown.returncode == 2 and "no playbook named" in unknown.stderr
    var = hivemind(settings, "playbook", "run", "swap", "--var", "size_gb")
    assert var.returncode == 2 and "NAME=VALUE" in var.stderr
    typo = hivemind(settings, "recover", "--playbook", "recoverr", "--dry-run")
    assert typo.returncode == 2 and "no playbook named" in typo.stderr


def test_service_install_writes_the_guides_units_into_the_root(
    settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    dry = hivemind(settings, "service", "install", "--root", str(root), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would write" in dry.stdout and "LimitNOFILE=65536" in dry.stdout
    assert not root.exists()

    done = hivemind(settings, "service", "install", "--root", str(root), "--user", "hive")
    assert done.returncode == 0, done.stderr
    units = root / "etc" / "systemd" / "system"
    names = sorted(p.name for p in units.iterdir())
    assert names == [
        "hivemind-master.service",
        "hivemind-nodepool.service",
        "hivemind-worker@.service",
    ]
    nodepool = (units / "hivemind-nodepool.service").read_text()
    for line in ("LimitNOFILE=65536", "Restart=on-failure", "User=hive", "Group=hive"):
        assert line in nodepool.splitlines()
    assert f"Environment=HIVEMIND_HOME={Path(settings.home).resolve()}" in nodepool
    assert any(
        line.startswith("ExecStart=") and line.endswith(" nodepool")
        for line in nodepool.splitlines()
    )
    worker = (units / "hivemind-worker@.service").read_text()
    assert "worker --node-id %i" in worker

    again = hivemind(settings, "service", "install", "--root", str(root), "--user", "hive")
    assert again.stdout.count("unchanged") == 3
    bad_user = hivemind(settings, "service", "install", "--root", str(root), "--user", "a b")
    assert bad_user.returncode == 2 and "not a user name" in bad_user.stderr
