"""`process.services` reports this HIVEMIND_HOME's daemons only, not another stack's on the
same host: real stand-in processes under two homes, plus the pure parsers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from doctor import Context, Status, run_doctor
from doctor.checks.process import (
    _read_config_home,
    claimed_home,
    daemon_kind,
    others_line,
    parse_daemon_cmdline,
    scan_daemons,
    services,
)
from hivemind.config import Settings
from hivemind.paths import HomeLayout, layout
from hivemind.supervisor import PidRecord, start_ticks, stop_services, write_pidfile
from tests.helpers import wait_until

#: A stand-in for the `hivemind` console script: its command line reads like a daemon's.
STAND_IN = "import time\ntime.sleep(60)\n"


class Stack:
    """Stand-in daemons of one home, started as `hivemind up` starts them: HIVEMIND_HOME in
    their environment and (unless ``pidfile=False``) a pid file in ``$HIVEMIND_HOME/run``."""

    def __init__(self, home: HomeLayout, script: Path) -> None:
        self.home = home
        self.script = script
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *words: str, pidfile: str | None = None, **env: str) -> int:
        argv = [sys.executable, str(self.script), *words]
        environ = {"PATH": os.environ.get("PATH", ""), "HIVEMIND_HOME": str(self.home.root)}
        environ.update(env)
        proc = subprocess.Popen(argv, env=environ, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        assert wait_until(lambda: psutil.Process(proc.pid).cmdline() == argv)
        if pidfile:
            record = PidRecord(
                pidfile,
                proc.pid,
                tuple(argv),
                psutil.Process(proc.pid).create_time(),
                start_ticks(proc.pid),
            )
            write_pidfile(self.home.run / f"{pidfile}.pid", record)
        return proc.pid

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    script = tmp_path / "bin" / "hivemind"
    script.parent.mkdir()
    script.write_text(STAND_IN)
    a = Stack(layout(tmp_path / "home-a").ensure(), script)
    b = Stack(layout(tmp_path / "home-b").ensure(), script)
    try:
        yield a, b
    finally:
        a.kill_all()
        b.kill_all()


def check(home: HomeLayout):  # type: ignore[no-untyped-def]
    report = run_doctor(Settings(home=home.root), only=["process.services"], timeout=3.0)
    return report.result("process.services").finding


def pids_of(finding) -> set[int]:  # type: ignore[no-untyped-def]
    running = {info["pid"] for info in finding.evidence["running"].values()}
    return running | {d["pid"] for d in finding.evidence["unmanaged"]}


def test_reports_only_this_homes_daemons_and_not_once_they_stop(
    stacks: tuple[Stack, Stack], tmp_path: Path
) -> None:
    a, b = stacks
    a_pool = a.start("nodepool", pidfile="nodepool")
    a_worker = a.start("worker", "--node-id", "local-1", pidfile="worker-local-1")
    a_master = a.start("--config", str(tmp_path / "nowhere.toml"), "master")  # by hand
    b_pool = b.start("nodepool", pidfile="nodepool")
    b_worker = b.start("worker", "--node-id", "local-1", pidfile="worker-local-1")
    b_master = b.start("master")  # by hand, no pid file
    # Another user's stack: no HIVEMIND_HOME, so its default ($HOME/.hivemind) is its home.
    stranger = b.start("worker", HIVEMIND_HOME="", HOME=str(tmp_path / "someone"))

    finding = check(a.home)
    assert finding.status is Status.OK, finding.summary
    assert set(finding.evidence["running"]) == {"nodepool", "worker-local-1"}
    assert finding.evidence["running"]["nodepool"]["pid"] == a_pool
    assert finding.evidence["running"]["worker-local-1"]["pid"] == a_worker
    assert [(d["service"], d["pid"]) for d in finding.evidence["unmanaged"]] == [
        ("master", a_master)
    ]
    assert pids_of(finding) == {a_pool, a_worker, a_master}
    others = {d["pid"]: d for d in finding.evidence["other_homes"]}
    assert {b_pool, b_worker, b_master, stranger} <= set(others)
    assert others[b_pool]["home"] == str(b.home.root)
    assert others[stranger]["home"] == str(tmp_path / "someone" / ".hivemind")
    running_part, _, other_part = finding.summary.partition("; ")
    assert running_part == f"running: nodepool, worker-local-1, master (pid {a_master})"
    assert "HiveMind processes of other homes" in other_part
    assert f"nodepool (pid {b_pool}, {b.home.root})" in other_part
    for pid in (b_pool, b_worker, b_master):
        assert str(pid) not in running_part

    # B sees its own, and A's as another home's.
    finding_b = check(b.home)
    assert finding_b.status is Status.OK
    assert pids_of(finding_b) == {b_pool, b_worker, b_master}
    assert {a_pool, a_worker, a_master} <= {d["pid"] for d in finding_b.evidence["other_homes"]}

    # `hivemind down` for A, and its hand-started master stopped: B's keep running.
    stop_services(sorted(a.home.run.glob("*.pid")), timeout=5.0)
    psutil.Process(a_master).terminate()
    assert wait_until(lambda: not psutil.pid_exists(a_master) or _reaped(a, a_master))
    assert all(psutil.pid_exists(pid) for pid in (b_pool, b_worker, b_master))

    finding = check(a.home)
    assert finding.status is Status.SKIP, finding.summary
    assert finding.evidence["running"] == {} and finding.evidence["unmanaged"] == []
    assert finding.summary.startswith(f"no HiveMind daemon of {a.home.root} runs")
    assert "running:" not in finding.summary
    assert f"nodepool (pid {b_pool}, {b.home.root})" in finding.summary
    assert check(b.home).status is Status.OK


def _reaped(stack: Stack, pid: int) -> bool:
    proc = next(p for p in stack.procs if p.pid == pid)
    return proc.poll() is not None


def test_another_homes_pid_alone_never_makes_this_homes_stale_pid_file_look_running(
    stacks: tuple[Stack, Stack],
) -> None:
    a, b = stacks
    gone = a.start("nodepool", pidfile="nodepool")
    b_pool = b.start("nodepool", pidfile="nodepool")
    a.procs[0].kill()
    a.procs[0].wait()
    finding = check(a.home)
    assert finding.status is Status.WARN
    assert "nodepool.pid" in finding.summary
    assert finding.evidence["running"] == {}
    assert b_pool not in pids_of(finding) and gone not in pids_of(finding)
    assert b_pool in {d["pid"] for d in finding.evidence["other_homes"]}


def test_the_check_never_raises_when_the_process_table_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*_args: object, **_kwargs: object) -> object:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "process_iter", denied)
    assert scan_daemons(tmp_path, set()) == ([], [])
    finding = check(layout(tmp_path / "home").ensure())
    assert finding.status is Status.SKIP


def test_over_a_remote_runner_it_does_not_read_this_hosts_process_table(tmp_path: Path) -> None:
    context = Context(Settings(home=tmp_path), host="far", runner=object())  # type: ignore[arg-type]
    finding = services(context)
    assert finding.status is Status.SKIP
    assert "far" in finding.summary


# -- pure parsers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "parsed"),
    [
        (["/usr/bin/python3", "-m", "hivemind", "nodepool"], ("nodepool", None)),
        (
            ["python", "-m", "hivemind", "nodepool", "--config", "/a/h.toml"],
            ("nodepool", "/a/h.toml"),
        ),
        (["/venv/bin/hivemind", "--config", "/b/h.toml", "master"], ("master", "/b/h.toml")),
        (["/venv/bin/hivemind", "--config=/c.toml", "--debug", "worker"], ("worker", "/c.toml")),
        (["hivemind", "worker", "--node-id", "nodepool"], ("worker", None)),
        (["hivemind", "doctor"], (None, None)),
        (["hivemind", "--config"], (None, None)),
        (["python", "-c", "pass"], (None, None)),
        ([], (None, None)),
    ],
)
def test_parse_daemon_cmdline(cmdline: list[str], parsed: tuple[str | None, str | None]) -> None:
    assert parse_daemon_cmdline(cmdline) == parsed
    assert daemon_kind(cmdline) == parsed[0]


def test_claimed_home_follows_the_settings_order() -> None:
    hand = ["hivemind", "nodepool"]
    assert claimed_home(None, "/x", hand) is None, "unreadable environment: unknown"
    assert claimed_home({"HIVEMIND_HOME": "/srv/a"}, None, hand) == Path("/srv/a")
    assert claimed_home({"HIVEMIND_HOME": "rel/a/../b"}, "/w", hand) == Path("/w/rel/b")
    assert claimed_home({"HIVEMIND_HOME": "rel"}, None, hand) is None
    assert claimed_home({"HIVEMIND_HOME": "~/h", "HOME": "/u"}, None, hand) == Path("/u/h")
    assert claimed_home({"HOME": "/u"}, "/w", hand) == Path("/u/.hivemind")
    assert claimed_home({}, "/w", hand) is None, "no HOME: its default home is unknown"

    configs = {
        Path("/w/hivemind.toml"): (True, "/from/cwd"),
        Path("/etc/h.toml"): (True, "data"),
        Path("/etc/plain.toml"): (True, None),
    }

    def reader(path: Path) -> tuple[bool, str | None]:
        return configs.get(path, (False, None))

    env = {"HOME": "/u"}
    assert claimed_home(env, "/w", hand, reader) == Path("/from/cwd")
    by_option = ["hivemind", "--config", "/etc/h.toml", "master"]
    assert claimed_home(env, "/w", by_option, reader) == Path("/w/data")
    by_env = {"HOME": "/u", "HIVEMIND_CONFIG": "/etc/plain.toml"}
    assert claimed_home(by_env, "/w", hand, reader) == Path("/u/.hivemind")
    missing = ["hivemind", "--config", "/etc/none.toml", "master"]
    assert claimed_home(env, "/w", missing, reader) is None
    # HIVEMIND_HOME beats the config file, as in load_settings.
    assert claimed_home({"HIVEMIND_HOME": "/e"}, "/w", by_option, reader) == Path("/e")


def test_read_config_home(tmp_path: Path) -> None:
    assert _read_config_home(tmp_path / "absent.toml") == (False, None)
    (tmp_path / "a.toml").write_text('HOME = "/srv/a"\nGRPC_PORT = 1\n')
    assert _read_config_home(tmp_path / "a.toml") == (True, "/srv/a")
    (tmp_path / "b.toml").write_text("GRPC_PORT = 1\n")
    assert _read_config_home(tmp_path / "b.toml") == (True, None)
    (tmp_path / "c.toml").write_text("not [ toml")
    assert _read_config_home(tmp_path / "c.toml") == (True, None)


def test_others_line() -> None:
    assert others_line([]) == ""
    one = [{"service": "nodepool", "pid": 7, "home": "/srv/b"}]
    assert others_line(one) == (
        "1 HiveMind process of other homes (not counted): nodepool (pid 7, /srv/b)"
    )
    many = [{"service": "worker", "pid": n, "home": None} for n in range(7)]
    line = others_line(many)
    assert line.startswith("7 HiveMind processes of other homes (not counted): ")
    assert "worker (pid 0, home unknown)" in line and line.endswith(", 2 more")
