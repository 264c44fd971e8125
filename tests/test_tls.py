"""TLS on the node pool's gRPC port: real node pools on loopback with TLS=on, real clients,
and a TCP relay that sees every byte on the wire."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from doctor import Status, run_doctor
from doctor.checks.tls import tls_verdict
from hivemind import tls
from hivemind.client import Client
from hivemind.config import Settings
from hivemind.errors import NodePoolError
from hivemind.nodepool.server import NodePoolServer
from hivemind.service_health import grpc_serving
from tests.cluster import started_cluster
from tests.helpers import RedisServer
from tests.nodepool_support import node_pool_serving


@pytest.fixture
def secured(settings: Settings, free_port_factory: Callable[[], int]) -> Iterator[Settings]:
    """A node pool serving TLS on 127.0.0.1; the settings its own clients use."""
    s = settings.replace(grpc_host="127.0.0.1", grpc_port=free_port_factory(), tls="on")
    with node_pool_serving(s, alice=True):
        yield s


def test_the_node_pool_makes_its_ca_and_certificate_with_private_keys(secured: Settings) -> None:
    files = tls.tls_files(secured)
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(files.root.stat().st_mode) == 0o700
    # Made once: a restart keeps the CA its workers trust.
    before = files.ca_cert.read_bytes()
    _files, made = tls.ensure_server_files(secured)
    assert made == "" and files.ca_cert.read_bytes() == before


def test_a_client_that_trusts_the_ca_works_over_tls(secured: Settings) -> None:
    security = tls.client_security(secured)
    assert security is not None
    with Client(secured.client_address, security=security) as client:
        assert client.login("alice", "alice-password-1").token
    assert grpc_serving(secured.client_address, security=security)


def _refusal(address: str, security: tls.ChannelSecurity | None) -> str:
    with Client(address, timeout=5, security=security) as client, pytest.raises(NodePoolError) as e:
        client.login("alice", "alice-password-1")
    return str(e.value)


def test_a_plaintext_client_is_refused_and_the_server_log_says_why(
    secured: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    message = _refusal(secured.client_address, None)
    assert "closed a plaintext connection: it serves TLS" in message
    assert "TLS_CA_FILE" in message
    # gRPC's own log line on the server side (stderr, which the node pool's log file gets).
    assert "WRONG_VERSION_NUMBER" in capfd.readouterr().err


def test_a_client_that_trusts_another_ca_is_refused(secured: Settings) -> None:
    other_ca, _key = tls.make_ca("another cluster")
    message = _refusal(secured.client_address, tls.ChannelSecurity(other_ca))
    assert "a certificate that the trusted CA did not sign" in message


def test_a_name_the_certificate_does_not_list_is_refused(secured: Settings) -> None:
    security = tls.ChannelSecurity(tls.tls_files(secured).ca_cert.read_bytes(), "elsewhere.test")
    assert "certificate does not name" in _refusal(secured.client_address, security)


def test_an_expired_server_certificate_is_refused(tmp_path: Path) -> None:
    ca_cert, ca_key = tls.make_ca()
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=60)
    cert, key = tls.make_server_cert(ca_cert, ca_key, ["localhost"], days=30, not_before=long_ago)
    assert "expires" in tls.renewal_reason(cert, ["localhost"])  # a start would renew it
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    try:
        with (
            grpc.secure_channel(
                f"localhost:{port}", tls.ChannelSecurity(ca_cert).credentials()
            ) as channel,
            pytest.raises(grpc.RpcError) as e,
        ):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        why = tls.explain_failure(e.value.details() or "", f"localhost:{port}", secured=True)
        assert "presents an expired certificate" in why
    finally:
        server.stop(0)


class Relay:
    """A TCP relay from a local port to ``target``, keeping every byte it passes on."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                with self._lock:
                    self.seen += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def _sniffed_login(port: int, security: tls.ChannelSecurity | None) -> tuple[bytes, str]:
    relay = Relay(("127.0.0.1", port))
    try:
        with Client(f"127.0.0.1:{relay.port}", security=security) as client:
            token = client.login("alice", "alice-password-1").token
            client.token = token
            client.balance()
        return bytes(relay.seen), token
    finally:
        relay.close()


def test_nothing_secret_crosses_the_wire_in_the_clear(
    secured: Settings, settings: Settings, free_port_factory: Callable[[], int]
) -> None:
    wire, token = _sniffed_login(secured.grpc_port, tls.client_security(secured))
    assert len(wire) > 1000  # the relay did carry the calls
    assert b"alice-password-1" not in wire
    assert token.encode() not in wire and token.encode()[:40] not in wire

    # The same relay on a plaintext node pool sees both: the sniffer is not blind.
    plain = settings.replace(grpc_host="127.0.0.1", grpc_port=free_port_factory(), tls="off")
    server = NodePoolServer(plain)
    server.start()
    try:
        wire, token = _sniffed_login(plain.grpc_port, None)
    finally:
        server.stop(grace=1)
    assert b"alice-password-1" in wire and token.encode() in wire


def test_auto_serves_tls_on_every_bind_but_loopback(settings: Settings) -> None:
    assert tls.server_uses_tls(settings.replace(grpc_host="0.0.0.0", tls="auto"))
    assert tls.server_uses_tls(settings.replace(grpc_host="10.0.0.5", tls="auto"))
    assert not tls.server_uses_tls(settings.replace(grpc_host="127.0.0.1", tls="auto"))
    assert not tls.server_uses_tls(settings.replace(grpc_host="::1", tls="auto"))
    assert not tls.server_uses_tls(settings.replace(grpc_host="0.0.0.0", tls="off"))
    assert tls.server_uses_tls(settings.replace(grpc_host="127.0.0.1", tls="on"))
    assert "localhost" in tls.server_names(settings) and "127.0.0.1" in tls.server_names(settings)


def test_the_whole_stack_runs_over_tls(redis_server: RedisServer, tmp_path: Path) -> None:
    """`hivemind up` with TLS=on: the CLI, the workers, the master and the health checks all
    verify the node pool's certificate, and a task runs."""
    with started_cluster(redis_server, tmp_path, workers=1, tls="on") as cluster:
        assert (cluster.home / "node_pool" / "tls" / "ca.crt").is_file()
        ran = cluster.cli("submit", "hivemind.examples:add", "--arg", "2", "--arg", "3", "--wait")
        assert "SUCCEEDED" in ran.stdout
        status = cluster.cli("status")
        assert "stopped" not in status.stdout
        log = (cluster.home / "node_pool" / "logs" / "nodepool.log").read_text()
        assert "with TLS (CA" in log and "fingerprint sha256:" in log
        with cluster.client() as client:
            assert client.secured and client.whoami().username == "admin"


def test_the_doctor_judges_tls_where_the_network_reaches(secured: Settings) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    info = tls.CertificateInfo(now + dt.timedelta(days=200), frozenset({"localhost"}), "sha256:x")
    assert tls_verdict(False, True, None, [], now).status is Status.OK
    public_plaintext = tls_verdict(False, False, None, [], now)
    assert public_plaintext.status is Status.FAIL and "readable" in public_plaintext.summary
    assert tls_verdict(True, False, info, [], now).status is Status.OK
    soon = tls.CertificateInfo(now + dt.timedelta(days=3), info.names, info.fingerprint)
    assert tls_verdict(True, False, soon, [], now).status is Status.WARN
    gone = tls.CertificateInfo(now - dt.timedelta(days=1), info.names, info.fingerprint)
    assert tls_verdict(True, False, gone, [], now).status is Status.FAIL
    assert tls_verdict(True, False, info, ["/x/server.key"], now).status is Status.FAIL

    # The real check on the node pool of `secured`: its certificate, its CA's fingerprint.
    finding = run_doctor(secured, only=("security.tls",)).result("security.tls").finding
    assert finding.status is Status.OK, finding.summary
    ca = tls.tls_files(secured).ca_cert.read_bytes()
    server = tls.tls_files(secured).server_cert.read_bytes()
    assert finding.evidence["fingerprint"] == tls.fingerprint(server) != tls.fingerprint(ca)
    tls.tls_files(secured).server_key.chmod(0o644)
    loose = run_doctor(secured, only=("security.tls",)).result("security.tls").finding
    assert loose.status is Status.FAIL and "chmod 600" in loose.fix
