"""The CLI's contract for failures: one line, no traceback, exit 1 (failed) or 2 (usage)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT, free_port


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HIVEMIND_")}
    base.update(HIVEMIND_HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    base["PYTHONPATH"] = str(REPO_ROOT)
    base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "hivemind", *args],
        cwd=tmp_path,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_setting_is_one_line_and_exit_two(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("GRPC_PROT = 1\n")
    proc = run(tmp_path, "--config", str(config), "tasks")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {config}: unknown setting 'GRPC_PROT'"]
    proc = run(tmp_path, "tasks", HIVEMIND_GRPC_PORT="many")
    assert proc.returncode == 2 and "HIVEMIND_GRPC_PORT" in proc.stderr


def test_unreachable_node_pool_is_one_line_and_exit_one(tmp_path: Path) -> None:
    proc = run(tmp_path, "tasks", HIVEMIND_GRPC_PORT=str(free_port()))
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the node pool") and "Traceback" not in line
    debug = run(tmp_path, "--debug", "tasks", HIVEMIND_GRPC_PORT=str(free_port()))
    assert "Traceback" in debug.stderr


def test_bad_items_file_names_the_line(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text('1\n{"a": \n')
    proc = run(tmp_path, "submit", "--map", "hivemind.examples:echo", "--items", str(items))
    assert proc.returncode == 2
    assert f"{items}:2: not JSON" in proc.stderr
