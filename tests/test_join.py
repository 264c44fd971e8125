"""One-command join, for real: a TLS node pool (its own `hivemind up`), and "new hosts" that
are separate HIVEMIND_HOMEs knowing nothing but the token."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivemind.join import parse_token
from tests.cluster import Cluster, Host, started_cluster
from tests.helpers import RedisServer


@pytest.fixture(scope="module")
def pool(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("join-pool")
    with started_cluster(redis_server, root, workers=1, tls="on") as cluster:
        yield cluster


def _token(pool: Cluster, *args: str) -> str:
    return pool.cli("join-token", *args).stdout.strip()


def test_a_host_joins_with_one_token_and_runs_tasks(pool: Cluster, tmp_path: Path) -> None:
    token = _token(pool, "--label", "joined", "--ttl", "120")
    assert parse_token(token).labels == ("joined",)
    host = Host(tmp_path / "host-b")
    joined = host.cli("join", token, "--node-id", "joined-1")
    try:
        assert joined.returncode == 0, joined.stdout + joined.stderr
        assert "as worker joined-1 (labels joined)" in joined.stdout
        assert "worker joined-1 runs (pid" in joined.stdout
        token_file = host.home / "worker" / "config" / "joined-1.token"
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        config = (host.home / "hivemind.toml").read_text()
        assert f'NODEPOOL_ADDRESS = "{parse_token(token).address}"' in config
        ca = (host.home / "worker" / "config" / "ca.crt").read_bytes()
        assert ca == (pool.home / "node_pool" / "tls" / "ca.crt").read_bytes()

        deadline = time.monotonic() + 20
        while pool.redis().hget("worker:joined-1", "status") != "online":
            assert time.monotonic() < deadline, "the joined worker never came online"
            time.sleep(0.2)
        ran = pool.cli(
            "submit", "hivemind.examples:add", "--arg", "1", "--arg", "2",
            "--label", "joined", "--wait", "--json",
        )  # fmt: skip
        [task] = json.loads(ran.stdout)
        assert task["status"] == "SUCCEEDED" and task["worker"] == "joined-1"
        assert task["result"] == 3

        # The same token again, on another host: refused, and that host is left untouched.
        again = Host(tmp_path / "host-c")
        reused = again.cli("join", token)
        assert reused.returncode != 0
        assert "used already" in reused.stdout + reused.stderr
        assert again.written() == []

        # Stopped and started again without --label: the labels of the join stay.
        stopped = host.cli("worker-stop")
        assert stopped.returncode == 0 and "worker joined-1 stopped" in stopped.stdout
        assert pool.redis().hget("worker:joined-1", "status") == "offline"
        started = host.cli("worker-start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert pool.redis().hget("worker:joined-1", "labels") == "joined"
    finally:
        host.cli("down")


def test_an_expired_token_is_refused_and_nothing_is_written(pool: Cluster, tmp_path: Path) -> None:
    token = _token(pool, "--ttl", "0.5")
    time.sleep(1.0)
    host = Host(tmp_path / "host-d")
    refused = host.cli("join", token)
    assert refused.returncode != 0
    assert "expired" in refused.stdout + refused.stderr and "Traceback" not in refused.stderr
    assert host.written() == []


def _tampered(token: str, **changes: object) -> str:
    prefix, body, mac = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(changes)
    new_body = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{prefix}.{new_body}.{mac}"


def test_a_tampered_token_is_refused_and_nothing_is_written(pool: Cluster, tmp_path: Path) -> None:
    token = _token(pool, "--label", "cpu")
    host = Host(tmp_path / "host-e")

    relabelled = host.cli("join", _tampered(token, l=["gpu"]))
    assert relabelled.returncode != 0
    assert "altered" in relabelled.stdout + relabelled.stderr
    assert host.written() == []

    repinned = host.cli("join", _tampered(token, f="sha256:" + "0" * 64))
    assert repinned.returncode != 0
    assert "does not present the CA this token pins" in repinned.stdout + repinned.stderr
    assert host.written() == []

    garbage = host.cli("join", "hello")
    assert garbage.returncode != 0 and "not a join token" in garbage.stdout + garbage.stderr

    # The tampered tries did not use it up: the genuine token still joins.
    joined = host.cli("join", token, "--no-start")
    assert joined.returncode == 0, joined.stdout + joined.stderr
    written = sorted(path.name for path in host.written())
    assert len(written) == 6 and "ca.crt" in written and "hivemind.toml" in written, written


def test_a_plaintext_node_pool_gives_no_join_token(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with started_cluster(redis_server, tmp_path, workers=0) as plain:
        refused = plain.cli("join-token", check=False)
    assert refused.returncode != 0
    assert "a join needs TLS" in refused.stdout + refused.stderr


def test_a_token_for_one_node_id_joins_only_as_that_id(pool: Cluster, tmp_path: Path) -> None:
    token = _token(pool, "--node-id", "box-7")
    host = Host(tmp_path / "host-f")
    other = host.cli("join", token, "--node-id", "box-8", "--no-start")
    assert other.returncode != 0
    assert "is for worker box-7, not box-8" in other.stdout + other.stderr
    assert host.written() == []
    # Refused before it was used: the same token joins as box-7.
    joined = host.cli("join", token, "--no-start")
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "as worker box-7" in joined.stdout
    assert (host.home / "worker" / "config" / "box-7.token").is_file()
