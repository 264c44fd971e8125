"""The runner interface against this host and a real sshd on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hivemind.errors import CommandTimeout, RemoteError, UsageError
from hivemind.remote import (
    LocalRunner,
    Runner,
    SSHRunner,
    SSHTarget,
    for_each_host,
    load_inventory,
    open_runner,
    parse_target,
)
from hivemind.remote.inventory import parse_inventory_text, parse_inventory_toml
from hivemind.remote.runner import compose_argv
from tests.helpers import free_port
from tests.sshd import SSHD


def ssh_runner(sshd: SSHD, **options: object) -> SSHRunner:
    defaults: dict[str, object] = {"key_file": sshd.client_key, "known_hosts": sshd.known_hosts}
    defaults.update(options)
    return SSHRunner(sshd.target, connect_timeout=5, **defaults)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "ssh"])
def runner(request: pytest.FixtureRequest) -> Runner:
    if request.param == "local":
        made: Runner = LocalRunner()
    else:
        made = ssh_runner(request.getfixturevalue("sshd"))
    request.addfinalizer(made.close)
    return made


# -- targets and inventories ---------------------------------------------------------------
def test_parse_target_forms() -> None:
    assert parse_target("alice@gpu-1:2222") == SSHTarget("alice", "gpu-1", 2222)
    assert parse_target("alice@gpu-1") == SSHTarget("alice", "gpu-1", 22)
    assert parse_target("gpu-1", default_user="bob") == SSHTarget("bob", "gpu-1", 22)
    assert parse_target("root@[::1]:2200") == SSHTarget("root", "::1", 2200)
    assert str(SSHTarget("root", "::1", 2200)) == "root@[::1]:2200"
    for bad in ("", "alice@", "alice@host:0", "alice@host:99999", "alice@host:x", "a b"):
        with pytest.raises(UsageError, match="not a host"):
            parse_target(bad)


def test_inventory_text_groups_and_errors(tmp_path: Path) -> None:
    inventory = parse_inventory_text(
        "# lab\nroot@pool:22\n[workers]\nhive@gpu-1  # the big one\nhive@gpu-2:2222\n"
        "[nodepool]\nroot@pool:22\n"
    )
    assert [str(t) for t in inventory.targets()] == [
        "root@pool:22",
        "hive@gpu-1:22",
        "hive@gpu-2:2222",
    ]
    assert [str(t) for t in inventory.targets("workers")] == ["hive@gpu-1:22", "hive@gpu-2:2222"]
    assert inventory.groups == ["nodepool", "workers"]
    bad = tmp_path / "hosts"
    bad.write_text("root@pool\n[workers\n")
    with pytest.raises(UsageError, match=rf"{bad}:2: a group header"):
        load_inventory(bad)
    bad.write_text("root@pool:70000\n")
    with pytest.raises(UsageError, match=rf"{bad}:1: not a host"):
        load_inventory(bad)
    with pytest.raises(UsageError, match="cannot read inventory"):
        load_inventory(tmp_path / "missing")


def test_inventory_toml() -> None:
    inventory = parse_inventory_toml(
        'hosts = ["root@pool"]\n[groups]\nworkers = ["hive@gpu-1:2222", "root@pool"]\n'
    )
    assert [str(t) for t in inventory.targets()] == ["root@pool:22", "hive@gpu-1:2222"]
    # File order: the first mention of a host decides where it stands.
    assert [str(t) for t in inventory.targets("workers")] == ["root@pool:22", "hive@gpu-1:2222"]
    with pytest.raises(UsageError, match=r"groups\.workers must be a list"):
        parse_inventory_toml("[groups]\nworkers = 3\n")


def test_compose_argv_env_and_sudo() -> None:
    assert compose_argv(["ls", "-l"], env=None, sudo=False) == ["ls", "-l"]
    assert compose_argv("echo $X", env={"X": "1"}, sudo=True) == [
        "sudo",
        "-n",
        "--",
        "env",
        "X=1",
        "sh",
        "-c",
        "echo $X",
    ]
    for bad_env in ({"": "1"}, {"A=B": "1"}):
        with pytest.raises(UsageError, match="malformed environment variable"):
            compose_argv(["true"], env=bad_env, sudo=False)
    with pytest.raises(UsageError, match="empty command"):
        compose_argv([], env=None, sudo=False)


# -- the same behaviour on both runners ----------------------------------------------------
def test_same_output_locally_and_over_ssh(sshd: SSHD, tmp_path: Path) -> None:
    commands: list[list[str] | str] = [
        ["printf", "%s|", "two words", "it's"],
        "echo out; echo err >&2; exit 3",
        ["sh", "-c", 'echo "$GREETING"'],
        ["definitely-not-a-tool-xyz"],
    ]
    with LocalRunner() as local, ssh_runner(sshd) as remote:
        for command in commands:
            a = local.run(command, timeout=10, env={"GREETING": "hi there"})
            b = remote.run(command, timeout=10, env={"GREETING": "hi there"})
            assert (a.exit_code, a.stdout) == (b.exit_code, b.stdout), command
            if command != commands[-1]:
                assert a.stderr == b.stderr, command
        assert local.run(["cat"], timeout=5, input=b"\x00bytes\xff").stdout == b"\x00bytes\xff"
        assert remote.run(["cat"], timeout=5, input=b"\x00bytes\xff").stdout == b"\x00bytes\xff"
        assert local.run(["false"], timeout=5).exit_code == 1
        assert remote.run(["false"], timeout=5).exit_code == 1
        missing = local.run(["definitely-not-a-tool-xyz"], timeout=5)
        assert missing.exit_code == 127 and b"not found" in missing.stderr
        assert local.which("sh") == remote.which("sh")
        assert local.which("no-such-tool-xyz") is None and remote.which("no-such-tool-xyz") is None
        with pytest.raises(UsageError):
            remote.which("sh; rm -rf /")


def test_sudo_as_root_runs_plainly(runner: Runner) -> None:
    # The test machine runs as root in CI, where sudo is not installed: no prefix is needed.
    if runner.run(["id", "-u"], timeout=5).text.strip() != "0":
        pytest.skip("only meaningful as root")
    assert runner.run(["id", "-u"], timeout=5, sudo=True).text.strip() == "0"


def test_file_round_trip(runner: Runner, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    remote_path = str(tmp_path / f"written-{runner.host.replace('/', '_')}.bin")
    runner.write_file(remote_path, data, mode=0o600)
    assert runner.read_file(remote_path) == data
    assert Path(remote_path).stat().st_mode & 0o777 == 0o600
    fetched = tmp_path / "fetched.bin"
    runner.get(remote_path, fetched)
    assert fetched.read_bytes() == data
    sent = tmp_path / "sent.bin"
    runner.put(fetched, str(sent))
    assert sent.read_bytes() == data
    with pytest.raises(RemoteError, match=r"cannot read .*missing"):
        runner.read_file(str(tmp_path / "missing"))
    with pytest.raises(RemoteError, match="cannot"):
        runner.write_file(str(tmp_path / "no-dir" / "x"), b"x")


def test_timeout_stops_the_command(runner: Runner, tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"did not finish within 0.5 s") as caught:
        runner.run(f"echo started; sleep 3; touch {marker}", timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert caught.value.host == runner.host
    assert caught.value.stdout == b"started\n"
    time.sleep(3)
    assert not marker.exists(), "the timed-out command kept running"
    # The runner still works after a timeout.
    assert runner.run(["echo", "ok"], timeout=5).stdout == b"ok\n"


def test_one_runner_serves_many_threads_at_once(runner: Runner) -> None:
    # The doctor runs its checks concurrently on one runner: commands and file reads at once.
    expected = Path("/proc/loadavg").read_bytes()[:4]

    def both(number: int) -> tuple[bytes, bytes]:
        text = runner.run(["echo", str(number)], timeout=10).stdout
        return text, runner.read_file("/proc/loadavg")[:4]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(both, range(16)))
    assert [text for text, _ in results] == [f"{n}\n".encode() for n in range(16)]
    assert all(len(head) == len(expected) for _, head in results)


# -- connecting: every failure is one clear RemoteError, within the timeout ---------------
def test_wrong_port_fails_fast_and_clearly(sshd: SSHD) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(RemoteError, match=rf"127.0.0.1:{port}: connection refused on port") as e:
        SSHRunner(f"{sshd.user}@127.0.0.1:{port}", key_file=sshd.client_key, connect_timeout=3)
    assert time.monotonic() - started < 3
    assert e.value.host == f"{sshd.user}@127.0.0.1:{port}"


def test_silent_port_times_out_within_the_connect_timeout(sshd: SSHD) -> None:
    # A port that accepts but never speaks: the banner never comes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RemoteError, match="no SSH banner within 1 s"):
            SSHRunner(f"{sshd.user}@127.0.0.1:{port}", key_file=sshd.client_key, connect_timeout=1)
        assert time.monotonic() - started < 3


def test_unknown_host_key_is_refused_unless_insecure_on_purpose(sshd: SSHD, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(RemoteError, match=r"unknown host key.*--insecure-host-key"):
        ssh_runner(sshd, known_hosts=empty)
    with ssh_runner(sshd, known_hosts=empty, insecure_host_key=True) as runner:
        assert runner.run(["echo", "in"], timeout=5).stdout == b"in\n"
    assert empty.read_text() == "", "an insecure connection must not remember the key"


def test_changed_host_key_is_refused_even_when_insecure(sshd: SSHD, tmp_path: Path) -> None:
    other = tmp_path / "other"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key_type, key_data = other.with_suffix(".pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key_data}\n")
    for insecure in (False, True):
        with pytest.raises(RemoteError, match="host key mismatch"):
            ssh_runner(sshd, known_hosts=wrong, insecure_host_key=insecure)


def test_refused_key_names_the_user(sshd: SSHD, tmp_path: Path) -> None:
    import subprocess

    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(RemoteError, match=f"key authentication refused for user {sshd.user}"):
        ssh_runner(sshd, key_file=stranger)
    with pytest.raises(RemoteError, match="does not exist"):
        ssh_runner(sshd, key_file=tmp_path / "nope")


def test_many_hosts_in_parallel_one_failure_hides_nothing(sshd: SSHD) -> None:
    dead = f"{sshd.user}@127.0.0.1:{free_port()}"
    hosts = [sshd.target, dead, None]

    def hostname(host: str | None) -> str:
        with open_runner(
            host, key_file=sshd.client_key, known_hosts=sshd.known_hosts, connect_timeout=3
        ) as runner:
            return runner.run(["echo", "alive"], timeout=5).text.strip()

    results = for_each_host(hosts, hostname, label=lambda h: h or "local")
    assert [r.host for r in results] == [sshd.target, dead, "local"]
    assert [r.value for r in results] == ["alive", None, "alive"]
    assert results[1].error and "connection refused" in results[1].error
    assert results[0].ok and results[2].ok
