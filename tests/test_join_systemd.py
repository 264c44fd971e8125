"""The systemd units `hivemind join` writes for a joined worker where systemd runs.

No systemd manager runs in the test machine, so nothing is started: ``systemd-analyze
verify`` (the systemd package) reads the template and the drop-in as systemd would.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hivemind.errors import UsageError
from recovery.systemd import (
    UNIT_DIR,
    joined_worker_units,
    systemd_manages_services,
    worker_instance,
    write_joined_worker_units,
)


def _verify(unit_dir: Path, unit: str) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd", pytrace=False)
    return subprocess.run(
        [analyze, "verify", unit],
        env={"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_reads_the_joined_workers_units_as_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    written = write_joined_worker_units(tmp_path, "gpu-1", ["gpu", "zone=a b"], home, "root")
    unit_dir = tmp_path / UNIT_DIR
    assert {p.relative_to(unit_dir).as_posix() for p in written} == {
        "hivemind-worker@.service",
        "hivemind-worker@gpu-1.service.d/joined.conf",
    }
    verified = _verify(unit_dir, "hivemind-worker@gpu-1.service")
    assert verified.returncode == 0, verified.stderr
    assert "Unknown" not in verified.stderr and "ignoring" not in verified.stderr, verified.stderr
    dropin = (unit_dir / "hivemind-worker@gpu-1.service.d/joined.conf").read_text()
    exec_start = [line for line in dropin.splitlines() if line.startswith("ExecStart=")]
    assert exec_start[0] == "ExecStart="  # clears the template's, so the worker runs once
    argv = shlex.split(exec_start[1].removeprefix("ExecStart="))
    assert argv[-7:] == ["worker", "--node-id", "gpu-1", "--label", "gpu", "--label", "zone=a b"]
    assert f"Environment=HIVEMIND_HOME={home}" in dropin


def test_a_broken_drop_in_is_what_the_verification_catches(tmp_path: Path) -> None:
    # The check above can fail: a drop-in systemd cannot run is reported as such.
    write_joined_worker_units(tmp_path, "gpu-1", [], tmp_path, "root")
    dropin = tmp_path / UNIT_DIR / "hivemind-worker@gpu-1.service.d/joined.conf"
    dropin.write_text(dropin.read_text().replace("ExecStart=/", "ExecStart=relative/"))
    assert _verify(tmp_path / UNIT_DIR, "hivemind-worker@gpu-1.service").returncode != 0


def test_an_installed_template_is_kept(tmp_path: Path) -> None:
    template = tmp_path / UNIT_DIR / "hivemind-worker@.service"
    template.parent.mkdir(parents=True)
    template.write_text("# from hivemind service install --user hivemind\n")
    write_joined_worker_units(tmp_path, "cpu-2", [], tmp_path, "root")
    assert template.read_text() == "# from hivemind service install --user hivemind\n"
    assert (tmp_path / UNIT_DIR / "hivemind-worker@cpu-2.service.d/joined.conf").is_file()


def test_node_ids_systemd_cannot_name_are_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    for bad in ("", "a/b", "x y", "../etc"):
        with pytest.raises(UsageError, match="cannot name a systemd unit"):
            write_joined_worker_units(tmp_path, bad, [], tmp_path, "root")
    assert not (tmp_path / UNIT_DIR).exists()
    assert worker_instance("gpu-1.rack2") == "hivemind-worker@gpu-1.rack2.service"
    assert set(joined_worker_units("n", [], tmp_path, "root", "/bin/hm")) == {
        Path("hivemind-worker@.service"),
        Path("hivemind-worker@n.service.d/joined.conf"),
    }


def test_without_a_running_systemd_the_pid_supervisor_is_used(tmp_path: Path) -> None:
    assert systemd_manages_services(tmp_path / "no-such-dir") is False
