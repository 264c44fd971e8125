"""The CLI as a newcomer meets it on an 80-column terminal: ids taken by any unique prefix, a
call no worker would run refused before a task exists, help that reads right, one set of SSH
options, piped passwords, and `up` output that keeps paths whole."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from hivemind import taskstore
from hivemind.cli.app import app
from hivemind.client import Client
from hivemind.errors import NodePoolError
from hivemind.taskstore import NewTask, TaskStore
from tests.cluster import Cluster, _databases, make_cluster
from tests.helpers import RedisServer

WIDTH = "80"
SSH_OPTIONS = {
    "--host",
    "--inventory",
    "--ssh-key",
    "--known-hosts",
    "--insecure-host-key",
    "--remote-hivemind",
}


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, str]]:
    """One worker, and what `hivemind up` printed at 80 columns."""
    root = tmp_path_factory.mktemp("newcomer")
    url = redis_server.url.rsplit("/", 1)[0] + f"/{next(_databases)}"
    c = make_cluster(root, url)
    c.redis().flushdb()
    c.env["COLUMNS"] = WIDTH
    up = c.up(workers=1)
    try:
        yield c, up.stdout
    finally:
        c.down()


def _task_keys(c: Cluster) -> set[str]:
    return {k for k in c.redis().scan_iter("task:*") if k.count(":") == 1}


def _admin_tasks_with_ids(c: Cluster, monkeypatch: pytest.MonkeyPatch, *ids: str) -> None:
    """Tasks of the CLI's user (admin) whose ids we choose, queued through the task store."""
    chosen = iter(ids)
    monkeypatch.setattr(taskstore, "new_task_id", lambda: next(chosen))
    task = NewTask(
        owner="admin",
        name="chosen-id",
        kind="FUNCTION",
        spec={"function": "hivemind.examples:noop", "args_json": "[]"},
        timeout=60,
        retries=0,
        priority=0,
        req_labels=("no-such-label",),  # never leased: it stays as it is
    )
    TaskStore(c.redis()).submit([task] * len(ids))


def test_a_task_is_taken_by_any_unique_prefix_and_listed_whole(
    cluster: tuple[Cluster, str],
) -> None:
    c, _ = cluster
    submitted = c.cli("submit", "hivemind.examples:add", "--arg", "1", "--arg", "2", "--wait")
    task_id = submitted.stdout.split(":")[0].strip()
    assert len(task_id) == 16

    shown = c.cli("task", "show", task_id[:6])
    assert shown.stdout.startswith(task_id)
    assert c.cli("task", "result", task_id[:5]).stdout.strip() == "3"
    listing = c.cli("tasks").stdout
    assert task_id in listing and "…" not in listing
    assert all(len(line) <= int(WIDTH) for line in listing.splitlines())


def test_an_ambiguous_prefix_names_the_candidates(
    cluster: tuple[Cluster, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _ = cluster
    _admin_tasks_with_ids(c, monkeypatch, "beef00000000aaaa", "beef00000000bbbb")

    ambiguous = c.cli("task", "show", "beef0000", check=False)
    assert ambiguous.returncode != 0
    message = ambiguous.stdout + ambiguous.stderr
    assert "ambiguous" in message
    assert "beef00000000aaaa" in message and "beef00000000bbbb" in message
    assert "Traceback" not in message
    assert c.cli("task", "show", "beef00000000b").stdout.startswith("beef00000000bbbb")
    cancelled = c.cli("task", "cancel", "beef00000000a")
    assert cancelled.stdout.startswith("beef00000000aaaa: CANCELLED")
    # Too short to be a prefix: plainly no such task.
    short = c.cli("task", "show", "bee", check=False)
    assert short.returncode != 0 and "no task 'bee'" in short.stdout + short.stderr


def test_another_users_tasks_are_not_found_by_prefix(
    cluster: tuple[Cluster, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _ = cluster
    _admin_tasks_with_ids(c, monkeypatch, "cafe00000000aaaa")
    c.cli("user", "add", "carol", "--password", "carol-password-1")
    with Client(c.address, "") as anonymous:
        token = anonymous.login("carol", "carol-password-1").token
    with Client(c.address, token) as carol, pytest.raises(NodePoolError, match="no task"):
        carol.get("cafe0000")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("hivemind.examples:nope",), "defines no 'nope'"),
        (("os:system", "--arg", "true"), "no live worker runs functions of module 'os'"),
        (("hivemind.examples:echo", "--arg", "{bad"), "looks like JSON but does not parse"),
    ],
)
def test_a_call_no_worker_would_run_is_refused_before_a_task_exists(
    cluster: tuple[Cluster, str], args: tuple[str, ...], expected: str
) -> None:
    c, _ = cluster
    before = _task_keys(c)
    refused = c.cli("submit", *args, "--wait", check=False)
    message = refused.stdout + refused.stderr
    assert refused.returncode != 0, message
    assert expected in message and "Traceback" not in message
    assert _task_keys(c) == before


def test_text_that_is_not_json_is_still_sent_as_text(cluster: tuple[Cluster, str]) -> None:
    c, _ = cluster
    echoed = c.cli("submit", "hivemind.examples:echo", "--arg", "plain words", "--wait")
    assert '"plain words"' in echoed.stdout


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under a group (typer ships its own click: no isinstance here)."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


def _help(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": WIDTH}, color=False)
    assert result.exit_code == 0, result.output
    return result.output


#: Options whose default really is zero (not "not given" in disguise).
REAL_ZERO_DEFAULTS = {("user", "add"): "--credits", ("worker",): "--gpu"}


def test_help_has_no_type_placeholders_or_fake_defaults() -> None:
    commands = list(_commands(typer.main.get_command(app)))
    assert ("submit",) in commands and ("task", "show") in commands
    for path in commands:
        text = _help(*path)
        where = f"hivemind {' '.join(path)} --help"
        options = text.split("Options:", 1)[-1]
        placeholders = re.findall(r"(--[\w-]+(?:, -\w)? <[^>]+>)", options)
        assert not placeholders, f"{where} shows type placeholders: {placeholders}"
        zero_defaults = [
            line
            for line in options.splitlines()
            if re.search(r"\[default: (0|0\.0|-1)\]", line)
            and REAL_ZERO_DEFAULTS.get(path, "--none") not in line
        ]
        assert not zero_defaults, f"{where} shows placeholder defaults: {zero_defaults}"
        too_wide = [line for line in text.splitlines() if len(line) > int(WIDTH)]
        assert not too_wide, f"{where}: {too_wide}"
    submit = _help("submit")
    assert "--timeout SECONDS" in submit and "--arg VALUE" in submit and "[default:" not in submit


def test_every_ssh_capable_command_takes_the_same_ssh_options() -> None:
    for path in (("doctor",), ("recover",), ("playbook", "run"), ("backup",), ("top",)):
        flags = set(re.findall(r"^\s+(--[a-z-]+)", _help(*path), re.MULTILINE))
        assert flags >= SSH_OPTIONS, f"hivemind {' '.join(path)} lacks {SSH_OPTIONS - flags}"


def _piped(c: Cluster, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with ``stdin`` piped in, as `echo "$PW" | hivemind ...` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "hivemind", *args],
        input=stdin,
        env=c.env,
        cwd=c.home,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_piped_password_is_read_without_a_warning(cluster: tuple[Cluster, str]) -> None:
    c, _ = cluster
    added = _piped(c, "dave-password-1\n", "user", "add", "dave")
    assert added.returncode == 0, added.stdout + added.stderr
    assert "GetPassWarning" not in added.stderr and "echoed" not in added.stderr
    with Client(c.address, "") as anonymous:
        assert anonymous.login("dave", "dave-password-1").token
    for user, password in (
        ("dave", "dave-password-1"),
        ("admin", (c.home / "node_pool" / "admin.password").read_text().strip()),
    ):
        login = _piped(c, password + "\n", "login", "--username", user)
        assert login.returncode == 0, login.stdout + login.stderr
        assert "GetPassWarning" not in login.stderr
    assert "admin" in c.cli("whoami").stdout
    empty = _piped(c, "", "user", "add", "erin")
    assert empty.returncode == 2 and "no password on stdin" in empty.stdout + empty.stderr


def test_up_names_the_console_and_keeps_paths_whole(cluster: tuple[Cluster, str]) -> None:
    c, output = cluster
    port = c.env["HIVEMIND_MASTER_PORT"]
    assert f"Web console:  http://localhost:{port}/" in output
    paths = re.findall(r"(?<![\w:/])(/[\w./-]+)", output)
    assert paths, output
    # Each path printed is whole on its line: it names something that exists.
    for path in paths:
        assert Path(path.rstrip(".,)")).exists(), f"{path!r} is cut in:\n{output}"
