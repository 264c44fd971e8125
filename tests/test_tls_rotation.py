"""Mutual TLS across "hosts" and CA rotation without downtime: a real `hivemind up` with
REQUIRE_CLIENT_CERT, two local workers and one joined from another HIVEMIND_HOME, 500 tasks
running while `hivemind tls rotate` replaces the CA under them."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from cryptography import x509

from hivemind import tls
from hivemind.client import function_spec
from hivemind.client_certs import node_of_certificate
from hivemind.config import Settings
from hivemind.service_health import grpc_serving
from hivemind.tls_rotation import finish, rotate, split_pems
from tests.cluster import Cluster, Host, started_cluster
from tests.helpers import RedisServer, free_port
from tests.nodepool_support import node_pool_serving

LOCAL_WORKERS = ("local-1", "local-2")
JOINED = "joined-1"


@pytest.fixture(scope="module")
def pool(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("mtls-pool")
    with started_cluster(
        redis_server,
        root,
        workers=2,
        tls="on",
        require_client_cert="1",
        enroll_port=str(free_port()),
    ) as cluster:
        yield cluster


def _wait_online(pool: Cluster, node_id: str, since: float = 0.0, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        record = pool.redis().hgetall(f"worker:{node_id}")
        if record.get("status") == "online" and float(record.get("last_heartbeat", 0)) > since:
            return
        assert time.monotonic() < deadline, f"worker {node_id} not online: {record}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def joined(pool: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """Another host, joined with nothing but a token: it enrols on the enrolment port."""
    token = pool.cli("join-token", "--label", "joined", "--ttl", "120").stdout.strip()
    host = Host(tmp_path_factory.mktemp("mtls-joined") / "host")
    ran = host.cli("join", token, "--node-id", JOINED)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    try:
        _wait_online(pool, JOINED)
        yield host
    finally:
        host.cli("down")


def _cert(home: Path, node_id: str) -> bytes:
    return (home / "worker" / "config" / f"{node_id}.crt").read_bytes()


def _issuer(cert_pem: bytes) -> str:
    return x509.load_pem_x509_certificate(cert_pem).issuer.rfc4514_string()


def _subject(cert_pem: bytes) -> str:
    return x509.load_pem_x509_certificate(cert_pem).subject.rfc4514_string()


def test_a_host_joins_a_mutual_tls_pool_with_a_certificate_of_its_own(
    pool: Cluster, joined: Host
) -> None:
    cert = _cert(joined.home, JOINED)
    assert node_of_certificate(cert) == JOINED
    key = joined.home / "worker" / "config" / f"{JOINED}.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    pool_ca = (pool.home / "node_pool" / "tls" / "ca.crt").read_bytes()
    assert _issuer(cert) == _subject(pool_ca)
    # The key was made on the joined host: the node pool's home holds no copy of it.
    assert not (pool.home / "worker" / "config" / f"{JOINED}.key").exists()
    ran = pool.cli(
        "submit", "hivemind.examples:add", "--arg", "4", "--arg", "5",
        "--label", "joined", "--wait", "--json",
    )  # fmt: skip
    assert '"worker": "joined-1"' in ran.stdout and '"result": 9' in ran.stdout


def _stop_node_pool(pool: Cluster) -> None:
    process = psutil.Process(pool.pid("nodepool"))
    os.kill(process.pid, signal.SIGTERM)
    process.wait(30)


def test_rotating_the_ca_while_500_tasks_run_loses_none(pool: Cluster, joined: Host) -> None:
    files = tls.TLSFiles(pool.home / "node_pool" / "tls")
    old_ca = split_pems(files.ca_cert.read_bytes())[0]
    with pool.client() as client:
        ids = client.submit([function_spec("hivemind.examples:sleep", [0.1]) for _ in range(500)])
        deadline = time.monotonic() + 30
        while sum(t.status == "SUCCEEDED" for t in client.wait(ids[:100], 0)) < 20:
            assert time.monotonic() < deadline, "the tasks never started"
            time.sleep(0.05)
        pool.cli("tls", "rotate", "--grace", "1")
        unfinished = sum(t.status != "SUCCEEDED" for t in client.wait(ids, 0))
    assert unfinished > 200, f"only {unfinished} tasks were left when the CA rotated"
    new_ca = split_pems(files.ca_cert.read_bytes())[0]
    assert tls.fingerprint(new_ca) != tls.fingerprint(old_ca)

    tasks = pool.wait_all(ids, 180)
    assert [t.status for t in tasks] == ["SUCCEEDED"] * 500
    assert all(t.attempt == 1 for t in tasks)
    for task_id in ids:
        assert pool.terminal_events(task_id) == ["succeeded"]

    # Every worker renewed onto the new CA while it ran: certificate and trust.
    homes = {node: pool.home for node in LOCAL_WORKERS} | {JOINED: joined.home}
    deadline = time.monotonic() + 20
    while any(_issuer(_cert(home, node)) != _subject(new_ca) for node, home in homes.items()):
        assert time.monotonic() < deadline, "a worker kept its old certificate"
        time.sleep(0.2)
    joined_trust = (joined.home / "worker" / "config" / "ca.crt").read_bytes()
    assert tls.fingerprint(joined_trust) == tls.fingerprint(new_ca)
    log = (pool.home / "node_pool" / "logs" / "nodepool.log").read_text()
    for node in homes:
        assert f"renewed: worker {node} certificate" in log

    # The old CA trusted no more and the node pool restarted: every worker connects again,
    # which it could not with an old certificate or trust, and tasks run.
    status = pool.cli("tls", "status")
    assert "previous CA" in status.stdout and "trusted until" in status.stdout
    pool.cli("tls", "rotate", "--finish")
    assert len(split_pems(files.ca_cert.read_bytes())) == 1
    _stop_node_pool(pool)
    restarted = time.time()
    pool.up(workers=2)
    for node in homes:
        _wait_online(pool, node, since=restarted)
    with pool.client() as client:
        ids = client.submit([function_spec("hivemind.examples:add", [i, 1]) for i in range(30)])
    assert [t.status for t in pool.wait_all(ids, 60)] == ["SUCCEEDED"] * 30
    assert "previous CA" not in pool.cli("tls", "status").stdout
    # The console, started before the rotation, followed it: its next call verifies.
    assert {w["node_id"] for w in _console_workers(pool)} == set(homes)


def _console_workers(pool: Cluster) -> list[dict[str, object]]:
    with pool.client() as client:
        token = client.token
    request = urllib.request.Request(
        f"http://127.0.0.1:{pool.env['HIVEMIND_MASTER_PORT']}/api/workers",
        headers={"authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())["workers"]


@pytest.fixture
def serving(settings: Settings, free_port_factory: Callable[[], int]) -> Iterator[Settings]:
    """A TLS node pool in this process (server certificates only)."""
    s = settings.replace(grpc_host="127.0.0.1", grpc_port=free_port_factory(), tls="on")
    with node_pool_serving(s):
        yield s


def _verifies(address: str, ca_pem: bytes) -> bool:
    return grpc_serving(address, timeout=5, security=tls.ChannelSecurity(ca_pem))


def test_clients_of_either_ca_verify_the_rotated_node_pool_until_the_rotation_ends(
    serving: Settings,
) -> None:
    files = tls.tls_files(serving)
    old_ca = files.ca_cert.read_bytes()
    report = rotate(serving, grace_days=1)
    assert report.old_fingerprint == tls.fingerprint(old_ca) != report.new_fingerprint
    new_ca = split_pems(files.ca_cert.read_bytes())[0]
    # No restart: the next handshake already has the new certificate, behind the cross one.
    assert _verifies(serving.client_address, old_ca)
    assert _verifies(serving.client_address, new_ca)
    with pytest.raises(tls.TLSError, match="finish it first"):
        rotate(serving)

    assert finish(serving) == tls.fingerprint(old_ca)
    assert _verifies(serving.client_address, new_ca)
    assert not _verifies(serving.client_address, old_ca)
    with pytest.raises(tls.TLSError, match="no rotation to finish"):
        finish(serving)


def test_rotation_needs_a_ca_and_a_positive_grace(settings: Settings) -> None:
    with pytest.raises(tls.TLSError, match="not a TLS node pool's host"):
        rotate(settings)
    with pytest.raises(tls.TLSError, match="positive number of days"):
        rotate(settings, grace_days=0)
