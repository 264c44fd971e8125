"""Playbooks are checked whole before anything runs: a malformed one is rejected with
file:line: reason; the Redis allowlist and the HIVEMIND_HOME glob guard refuse what they must;
every shipped playbook loads and is in the wheel."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hivemind.config import Settings
from hivemind.errors import UsageError
from recovery import PlaybookError, parse_playbook, shipped
from recovery.actions import StepContext
from recovery.actions.files import clean, matches
from recovery.engine import render, resolve_variables
from recovery.hosts import in_batches
from recovery.loader import load_playbook
from tests.helpers import REPO_ROOT

SHIPPED = {
    "recover", "restart", "requeue-stuck", "reset-stale-workers", "sync-data", "rebuild-db",
    "redis-harden", "open-firewall", "swap", "ha-recover",
}  # fmt: skip


def book(steps: str, head: str = "") -> str:
    return f"name: t\ndescription: a test\n{head}steps:\n{steps}"


def rejected(text: str) -> str:
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(text, "bad.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("name: t\ndescription: [unclosed\n", "bad.yaml:3:", "not valid YAML"),
        (book("  - name: a\n    frobnicate: {}\n"), "bad.yaml:5:", "unknown action or key"),
        (book("  - name: a\n    service: {name: nodepool}\n"), "bad.yaml:5:", "needs 'state'"),
        (
            book("  - name: a\n    service: {name: galaxy, state: started}\n"),
            "bad.yaml:5:",
            "one of redis",
        ),
        (book("  - name: a\n    requeue_stuck:\n    retries: three\n"), "bad.yaml:6:", "retries"),
        (book("  - name: a\n    shell: {command: 'true'}\n"), "bad.yaml:5:", "allow_shell: true"),
        (
            book("  - name: a\n    requeue_stuck:\n    when: {check: nope.nope, status: fail}\n"),
            "bad.yaml:6:",
            "unknown doctor check 'nope.nope'",
        ),
        (
            book("  - name: a\n    clean: {glob: '{{ where }}/*'}\n"),
            "bad.yaml:5:",
            "variable 'where' is not declared",
        ),
        (book("  - name: a\n    requeue_stuck:\n    doctor: {}\n"), "bad.yaml:4:", "exactly one"),
        ("name: t\ndescription: d\nsteps: []\n", "bad.yaml:3:", "non-empty list"),
        ("name: t\nname: u\n", "bad.yaml:2:", "duplicate key 'name'"),
        ("name: t\ndescription: d\nhost: all\nsteps: []\n", "bad.yaml:3:", "unknown key 'host'"),
    ],
)
def test_a_malformed_playbook_is_rejected_with_file_line_and_reason(
    text: str, where: str, reason: str
) -> None:
    message = rejected(text)
    assert message.startswith(where), message
    assert reason in message


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("[FLUSHALL]", "FLUSHALL is refused"),
        ("[flushdb]", "FLUSHDB is refused"),
        ("[CONFIG, REWRITE]", "CONFIG REWRITE is refused"),
        ("[DEBUG, SLEEP, '10']", "DEBUG is refused"),
        ("[SHUTDOWN, NOSAVE]", "SHUTDOWN is refused"),
        ("[CONFIG, SET, dir, /etc]", "CONFIG SET dir is refused"),
        ("[CONFIG, SET, dbfilename, x]", "CONFIG SET dbfilename is refused"),
        ("[DEL, task_queue]", "DEL is refused"),
        ("[SET, a, b]", "not in the allowlist"),
    ],
)
def test_the_redis_allowlist_refuses_what_loses_data_or_hands_over_the_server(
    command: str, reason: str
) -> None:
    message = rejected(book(f"  - name: a\n    redis: {{command: {command}}}\n"))
    assert message.startswith("bad.yaml:5:") and reason in message, message


def test_the_redis_allowlist_keeps_what_the_guide_tunes() -> None:
    for command in ("[PING]", "[CONFIG, GET, bind]", "[CONFIG, SET, appendonly, 'yes']"):
        parse_playbook(book(f"  - name: a\n    redis: {{command: {command}}}\n"), "ok.yaml")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("../outside/*", "climbs out"),
        ("node_pool/../../x", "climbs out"),
        ("/etc/*", "must be relative"),
        ("~/x", "must be relative"),
        ("**", "whole of HIVEMIND_HOME"),
        ("*", "whole of HIVEMIND_HOME"),
    ],
)
def test_the_clean_glob_may_not_escape_hivemind_home(pattern: str, reason: str) -> None:
    message = rejected(book(f"  - name: a\n    clean: {{glob: '{pattern}'}}\n"))
    assert message.startswith("bad.yaml:5:") and reason in message, message


def test_clean_deletes_inside_home_only_and_keeps_protected_data(
    settings: Settings, tmp_path: Path
) -> None:
    home = Path(settings.home)
    outside = tmp_path / "precious.log.old"
    outside.write_text("keep me")
    (home / "node_pool" / "logs" / "nodepool.log.old").write_text("old")
    (home / "worker" / "logs" / "escape.log.old").symlink_to(outside)
    (home / "node_pool" / "users.db").write_text("users")
    files, kept = matches(home, "*/logs/*.log.old")
    assert [p.name for p in files] == ["nodepool.log.old"]
    assert any("resolves outside HIVEMIND_HOME" in k for k in kept)
    _, kept_db = matches(home, "node_pool/*")
    assert any("users.db: protected data" in k for k in kept_db)

    outcome = clean(StepContext(settings), {"glob": "*/logs/*.log.old"})
    assert outcome.changed and outcome.after["deleted"] == 1
    assert outside.read_text() == "keep me"
    assert (home / "node_pool" / "users.db").exists()
    assert not clean(StepContext(settings), {"glob": "*/logs/*.log.old"}).changed


def test_variables_are_required_declared_and_shell_quoted() -> None:
    playbook = load_playbook("open-firewall")
    with pytest.raises(UsageError, match="needs --var subnet=VALUE"):
        resolve_variables(playbook, {})
    with pytest.raises(UsageError, match="has no variable 'subnett'"):
        resolve_variables(playbook, {"subnett": "x"})
    values = resolve_variables(playbook, {"subnet": "10.0.0.0/24; rm -rf /"})
    command = render(playbook.steps[0].params, values, quote=True)["command"]
    assert command == "ufw allow from '10.0.0.0/24; rm -rf /' to any port 50051 proto tcp"


def test_every_shipped_playbook_loads_and_the_opt_in_ones_say_so() -> None:
    assert set(shipped()) == SHIPPED
    for name in SHIPPED:
        playbook = load_playbook(name)
        assert playbook.name == name and playbook.description
    for name in ("redis-harden", "open-firewall", "swap", "restart"):
        assert load_playbook(name).opt_in
    assert not load_playbook("recover").opt_in
    recover = [s.action for s in load_playbook("recover").steps]
    assert recover[0] == "service" and recover[-1] == "doctor"


def test_in_batches_keeps_every_host_and_stops_starting_past_max_fail_percent() -> None:
    def work(target: object) -> str:
        if str(target).startswith("bad"):
            raise RuntimeError("down")
        return f"ok {target}"

    results = in_batches(
        ["bad-1", "good-1", "good-2", "good-3"],  # type: ignore[list-item]
        work,  # type: ignore[arg-type]
        failed=lambda r: not r.startswith("ok"),
        broken=lambda host, why: f"{host}: {why}",
        serial=1,
        max_fail_percent=0,
    )
    assert results[0] == "bad-1: RuntimeError: down"
    assert all("not run: more than 0%" in r for r in results[1:])
    everything = in_batches(
        ["bad-1", "good-1"],  # type: ignore[list-item]
        work,  # type: ignore[arg-type]
        failed=lambda r: not r.startswith("ok"),
        broken=lambda host, why: f"{host}: {why}",
    )
    assert everything == ["bad-1: RuntimeError: down", "ok good-1"]


def test_the_wheel_ships_the_playbooks(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for folder in ("hivemind", "doctor", "recovery", "playbooks"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / file, source / file)
    # With setuptools at hand the build needs no network; without it pip fetches it.
    offline = importlib.util.find_spec("setuptools") is not None
    isolation = ["--no-build-isolation"] if offline else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
         "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"playbooks/{name}.yaml" for name in SHIPPED} <= names
    assert "recovery/engine.py" in names
