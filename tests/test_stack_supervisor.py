"""The pid-file supervisor and the stack built on it, with stand-in services."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from hivemind.config import Settings, effective_redis_url
from hivemind.errors import StackError
from hivemind.paths import layout
from hivemind.redis_server import Answer, redis_answers, redis_reply
from hivemind.stack import child_environment, down, master_installed, status, up
from hivemind.supervisor import (
    ServiceSpec,
    service_state,
    start_service,
    start_services,
    start_ticks,
    stop_services,
)
from tests.helpers import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
#: The master joins the stack once `hivemind.master` exists.
MASTER = ["master"] if master_installed() else []

#: Stands in for `python -m hivemind`: each role answers the health check `up` waits for.
FAKE_HIVEMIND = textwrap.dedent(
    """
    import os, sys, time
    role = sys.argv[1]
    print("role", role, "argv", sys.argv[2:], flush=True)
    print("HIVEMIND_HOME=" + os.environ["HIVEMIND_HOME"], flush=True)
    if role == "nodepool":
        from concurrent import futures
        import grpc
        from grpc_health.v1 import health, health_pb2_grpc
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_insecure_port("127.0.0.1:" + os.environ["HIVEMIND_GRPC_PORT"])
        server.start()
    elif role == "master":
        import socket
        listener = socket.create_server(("127.0.0.1", int(os.environ["HIVEMIND_MASTER_PORT"])))
    elif role == "worker":
        import redis
        node_id = sys.argv[sys.argv.index("--node-id") + 1]
        assert os.environ["HIVEMIND_WORKER_TOKEN"], "no worker token"
        from hivemind.config import effective_redis_url, load_settings
        # As a real worker's node pool would: with the password `up` generated, if any.
        client = redis.Redis.from_url(effective_redis_url(load_settings()))
        client.hset("worker:" + node_id, "status", "online")
    time.sleep(600)
    """
)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A pid-file folder; whatever is still recorded in it is stopped afterwards."""
    run = tmp_path / "run"
    run.mkdir()
    yield run
    stop_services(sorted(run.glob("*.pid")), timeout=2.0)


def make_spec(
    run: Path,
    name: str,
    argv: list[str] | None = None,
    health: Callable[[], bool] = lambda: True,
) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        argv=argv or SLEEPER,
        log=run.parent / "logs" / f"{name}.log",
        pidfile=run / f"{name}.pid",
        health=health,
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_start_writes_a_pid_file_and_a_second_start_is_a_no_op(run_dir: Path) -> None:
    events: list[str] = []
    spec = make_spec(run_dir, "alpha")
    first = start_service(spec, timeout=5, on_event=events.append)
    assert first.started
    record = json.loads(spec.pidfile.read_text())
    assert set(record) == {"pid", "cmdline", "started_at", "start_ticks", "name"}
    assert record["start_ticks"] == start_ticks(record["pid"])
    assert record["pid"] == first.pid
    assert record["cmdline"] == SLEEPER
    assert record["name"] == "alpha"
    process = psutil.Process(first.pid)
    assert process.cmdline() == SLEEPER
    assert abs(process.create_time() - record["started_at"]) < 0.1
    # Its own session: a Ctrl-C in the terminal that ran `up` does not reach it.
    assert os.getsid(first.pid) == first.pid

    second = start_service(spec, timeout=5, on_event=events.append)
    assert not second.started
    assert second.pid == first.pid
    assert events[0].startswith(f"started alpha (pid {first.pid}), log: ")
    assert events[-1] == f"alpha already running (pid {first.pid})"


def test_services_start_in_parallel_and_stop_together(run_dir: Path) -> None:
    specs = [make_spec(run_dir, name) for name in ("one", "two", "three")]
    started = start_services(specs, timeout=5)
    assert [s.name for s in started] == ["one", "two", "three"]
    results = stop_services([spec.pidfile for spec in specs], timeout=5)
    assert [r.outcome for r in results] == ["stopped"] * 3, [
        (r.name, r.outcome, r.detail) for r in results
    ]
    assert not any(alive(s.pid) for s in started)
    assert not any(spec.pidfile.exists() for spec in specs)


def test_status_reports_running_unhealthy_and_stale(run_dir: Path) -> None:
    healthy = {"now": True}
    spec = make_spec(run_dir, "beta", health=lambda: healthy["now"])
    started = start_service(spec, timeout=5)

    state = service_state("beta", spec.pidfile, spec.health, spec.log)
    assert (state.running, state.healthy, state.pid) == (True, True, started.pid)
    assert state.started_by_up
    healthy["now"] = False
    state = service_state("beta", spec.pidfile, spec.health, spec.log)
    assert (state.running, state.healthy) == (True, False)
    assert state.detail == f"running (pid {started.pid}) but not healthy"

    os.kill(started.pid, signal.SIGKILL)
    assert wait_until(lambda: not service_state("beta", spec.pidfile, spec.health).running)
    state = service_state("beta", spec.pidfile, spec.health)
    assert state.detail.startswith("stale pid file: ")
    assert spec.pidfile.exists(), "status only reads"

    events: list[str] = []
    [result] = stop_services([spec.pidfile], on_event=events.append)
    assert result.outcome == "stale"
    assert not result.stopped
    assert not spec.pidfile.exists()
    assert events == [result.detail]
    assert f"removed stale pid file {spec.pidfile}" in result.detail


def test_stop_leaves_alone_a_process_whose_pid_was_forged_into_a_pid_file(
    run_dir: Path,
) -> None:
    ours = start_service(make_spec(run_dir, "ours"), timeout=5)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(601)"])
    try:
        created = psutil.Process(stranger.pid).create_time()
        forged = {
            # Right start time, other program.
            "cmdline-mismatch": {"cmdline": SLEEPER, "started_at": created},
            # Right program, but started at another time: a recycled pid.
            "start-time-mismatch": {
                "cmdline": psutil.Process(stranger.pid).cmdline(),
                "started_at": created - 100,
            },
        }
        for name, fields in forged.items():
            record = {"pid": stranger.pid, "name": name, **fields}
            (run_dir / f"{name}.pid").write_text(json.dumps(record))

        results = stop_services(sorted(run_dir.glob("*.pid")), timeout=5)

        outcomes = {r.name: r.outcome for r in results}
        assert outcomes == {
            "cmdline-mismatch": "stale",
            "start-time-mismatch": "stale",
            "ours": "stopped",
        }
        for result in results:
            if result.outcome == "stale":
                assert f"pid {stranger.pid} now belongs to another program" in result.detail
        assert stranger.poll() is None, "the stranger must not be signalled"
        assert not alive(ours.pid)
        assert list(run_dir.glob("*.pid")) == []
    finally:
        stranger.kill()
        stranger.wait()


def test_a_service_that_dies_at_start_fails_with_its_log_tail(run_dir: Path) -> None:
    spec = make_spec(
        run_dir,
        "crasher",
        argv=[
            sys.executable,
            "-c",
            "import sys; print('boom: cannot bind port 1234', file=sys.stderr); sys.exit(3)",
        ],
        health=lambda: False,
    )
    spec.log.parent.mkdir(parents=True)
    spec.log.write_text("noise from an earlier run\n")
    with pytest.raises(StackError) as caught:
        start_service(spec, timeout=10)
    message = str(caught.value)
    assert message.startswith(
        f"crasher exited with code 3 while starting; last lines of {spec.log}:"
    )
    assert "boom: cannot bind port 1234" in message
    assert "earlier run" not in message
    assert not spec.pidfile.exists()


def test_a_service_that_never_becomes_healthy_is_stopped(run_dir: Path) -> None:
    spec = make_spec(run_dir, "sulker", health=lambda: False)
    with pytest.raises(StackError, match=re.escape("did not become healthy within 0.6 s")):
        start_service(spec, timeout=0.6)
    assert not spec.pidfile.exists()
    assert not any(
        p.info["cmdline"] == SLEEPER and p.info["ppid"] == os.getpid()
        for p in psutil.process_iter(["cmdline", "ppid"])
    )


def test_stop_kills_what_ignores_sigterm_and_its_children(run_dir: Path) -> None:
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        # Spelt in two pieces so that the log's header line (the argv) does not match.
        "print('arm' 'ed', child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    spec = make_spec(run_dir, "stubborn", argv=[sys.executable, "-c", code])
    spec = ServiceSpec(
        spec.name,
        spec.argv,
        spec.log,
        spec.pidfile,
        health=lambda: "armed " in spec.log.read_text(),
    )
    started = start_service(spec, timeout=5)
    grandchild = int(spec.log.read_text().split("armed ")[1].split()[0])

    [result] = stop_services([spec.pidfile], timeout=0.3)
    assert result.outcome == "killed"
    assert not alive(started.pid)
    assert wait_until(lambda: not alive(grandchild), timeout=3)


def test_unreadable_pid_file_is_reported_and_removed(run_dir: Path) -> None:
    pidfile = run_dir / "garbled.pid"
    pidfile.write_text("not json")
    state = service_state("garbled", pidfile, lambda: True)
    assert (state.running, state.detail) == (False, f"unreadable pid file {pidfile}")
    [result] = stop_services([pidfile])
    assert result.outcome == "stale"
    assert not pidfile.exists()


def test_child_environment_carries_every_setting(settings: Settings) -> None:
    env = child_environment(settings, base={"PATH": "/bin", "HIVEMIND_SECRET_KEY": "stale"})
    assert env["PATH"] == "/bin"
    assert env["HIVEMIND_HOME"] == str(layout(settings.home).root)
    assert env["HIVEMIND_REDIS_URL"] == settings.redis_url
    assert env["HIVEMIND_GRPC_PORT"] == str(settings.grpc_port)
    assert env["HIVEMIND_HEARTBEAT_INTERVAL"] == "0.5"
    # Empty secrets are left out, so a child uses its own (node_pool/secret.key).
    assert "HIVEMIND_SECRET_KEY" not in env
    assert "HIVEMIND_WORKER_TOKEN" not in env


# -- the stack, with a stand-in `hivemind` ---------------------------------------------------


@pytest.fixture
def launcher(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_hivemind.py"
    script.write_text(FAKE_HIVEMIND)
    return [sys.executable, str(script)]


@pytest.fixture
def stack_settings(settings: Settings) -> Iterator[Settings]:
    # The fake node pool below answers health checks in plaintext (TLS is tested for real in
    # test_tls.py).
    settings = settings.replace(tls="off")
    yield settings
    down(settings)


def test_up_status_down_with_an_external_redis(
    stack_settings: Settings, launcher: list[str], redis_url: str
) -> None:
    settings = stack_settings
    home = layout(settings.home)
    events: list[str] = []
    first = up(settings, workers=2, timeout=10, on_event=events.append, launcher=launcher)

    assert first.healthy, first
    by_name = {s.name: s for s in first.services}
    assert not first.embedded_redis
    assert not home.redis_password_file.exists(), "no password is forced onto an outside Redis"
    assert by_name["redis"].detail.startswith("answers at ")
    assert not by_name["redis"].started_by_up
    assert by_name["node pool"].running and by_name["node pool"].started_by_up
    assert by_name["worker local-1"].healthy and by_name["worker local-2"].healthy
    assert sorted(p.stem for p in home.run.glob("*.pid")) == sorted(
        [*MASTER, "nodepool", "worker-local-1", "worker-local-2"]
    )
    assert f"HIVEMIND_HOME={home.root}" in home.nodepool_log.with_suffix(".out").read_text()
    assert any(e.startswith("started node pool (pid ") for e in events)

    events.clear()
    again = up(settings, workers=2, timeout=10, on_event=events.append, launcher=launcher)
    assert [s.pid for s in again.services] == [s.pid for s in first.services]
    assert "node pool already running" in " ".join(events)

    stopped = down(settings).stopped
    assert [r.name for r in stopped] == ["worker local-2", "worker local-1", *MASTER, "node pool"]
    assert all(r.outcome == "stopped" for r in stopped)
    assert list(home.run.glob("*.pid")) == []
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping(), "down must not stop a Redis that up did not start"
    after = {s.name: s for s in status(settings).services}
    assert not after["node pool"].running
    assert not after["node pool"].healthy


def test_up_starts_its_own_redis_and_down_stops_it(
    stack_settings: Settings, launcher: list[str], free_port_factory: Callable[[], int]
) -> None:
    settings = stack_settings.replace(redis_url=f"redis://127.0.0.1:{free_port_factory()}/0")
    home = layout(settings.home)
    state = up(settings, workers=1, timeout=10, launcher=launcher)
    assert state.healthy, state
    assert state.embedded_redis
    redis_state = state.services[0]
    assert redis_state.started_by_up and redis_state.healthy
    assert (home.redis_dir / "redis.log").exists()
    # Its own Redis gets a generated password, which a client without it is refused.
    password = home.redis_password_file.read_text().strip()
    assert len(password) >= 40 and stat.S_IMODE(home.redis_password_file.stat().st_mode) == 0o600
    assert redis_reply(settings.redis_url)[0] is Answer.REFUSED
    assert redis_answers(effective_redis_url(settings))

    after = down(settings)
    assert not after.healthy
    names = [r.name for r in after.stopped]
    assert names == ["worker local-1", *MASTER, "node pool", "redis"]
    assert not psutil.pid_exists(redis_state.pid or 0)
    assert not status(settings).embedded_redis


def test_up_names_the_service_that_failed(
    stack_settings: Settings, tmp_path: Path, free_port_factory: Callable[[], int]
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nsys.exit('node pool: cannot open users.db')\n")
    with pytest.raises(StackError) as caught:
        up(stack_settings, workers=0, timeout=5, launcher=[sys.executable, str(broken)])
    assert str(caught.value).startswith("node pool exited with code 1 while starting")
    assert "cannot open users.db" in str(caught.value)


def test_run_foreground_stops_everything_on_sigterm(
    settings: Settings, launcher: list[str], tmp_path: Path
) -> None:
    settings = settings.replace(tls="off")  # the fake node pool answers in plaintext
    home = layout(settings.home)
    code = (
        "import sys\n"
        "from hivemind.config import load_settings\n"
        "from hivemind.stack import run_foreground\n"
        f"sys.exit(run_foreground(load_settings(), workers=1, timeout=10,"
        f" on_event=lambda line: print(line, flush=True), launcher={launcher!r}))\n"
    )
    out = tmp_path / "foreground.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=child_environment(settings), stdout=sink, stderr=sink
        )
    try:
        assert wait_until(lambda: "the stack is up" in out.read_text(), timeout=10), out.read_text()
        pids = [json.loads(p.read_text())["pid"] for p in home.run.glob("*.pid")]
        assert len(pids) == 2 + len(MASTER)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        down(settings)
    assert list(home.run.glob("*.pid")) == []
    assert not any(alive(pid) for pid in pids)
    assert "stopped node pool" in out.read_text()
