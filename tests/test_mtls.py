"""Mutual TLS (REQUIRE_CLIENT_CERT): real node pools on loopback, real certificates, real
workers; the wrong certificate, none, and another node's are each refused with a reason."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509

from doctor import Status, run_doctor
from doctor.checks.tls import tls_verdict
from hivemind import tls
from hivemind.auth import issue_worker_token
from hivemind.client import Client
from hivemind.client_certs import (
    issue_local,
    issue_to,
    make_client_cert,
    make_key_and_csr,
    node_of_certificate,
    renewal_reason,
    sign_csr,
)
from hivemind.config import Settings
from hivemind.errors import NodePoolError
from hivemind.proto import hivemind_pb2 as pb
from hivemind.tls_rotation import Rotation
from hivemind.worker.connection import WorkerConnection
from tests.nodepool_support import node_pool_serving


@pytest.fixture
def mutual(settings: Settings, free_port_factory: Callable[[], int]) -> Iterator[Settings]:
    """A node pool that requires client certificates; the settings its own host uses."""
    s = settings.replace(
        grpc_host="127.0.0.1",
        grpc_port=free_port_factory(),
        enroll_port=free_port_factory(),
        tls="on",
        require_client_cert=True,
    )
    with node_pool_serving(s, alice=True):
        yield s


def _login(address: str, security: tls.ChannelSecurity) -> str:
    with Client(address, timeout=5, security=security) as client:
        return client.login("alice", "alice-password-1").token


def _refused_login(address: str, security: tls.ChannelSecurity) -> str:
    with pytest.raises(NodePoolError) as refused:
        _login(address, security)
    return str(refused.value)


def test_the_hosts_own_cli_presents_its_certificate_and_works(mutual: Settings) -> None:
    security = tls.client_security(mutual)
    assert security is not None and security.presents_certificate
    assert _login(mutual.client_address, security)
    assert security.cert_pem is not None and node_of_certificate(security.cert_pem) == ""


def test_a_client_without_a_certificate_is_refused_and_the_server_log_says_why(
    mutual: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    ca = tls.tls_files(mutual).ca_cert.read_bytes()
    message = _refused_login(mutual.client_address, tls.ChannelSecurity(ca))
    assert "requires a client certificate (REQUIRE_CLIENT_CERT)" in message
    assert "hivemind join" in message
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in capfd.readouterr().err


def test_a_certificate_from_another_ca_is_refused(
    mutual: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    other_ca, other_key = tls.make_ca("another cluster")
    cert, key = make_client_cert(other_ca, other_key, "intruder")
    ca = tls.tls_files(mutual).ca_cert.read_bytes()
    message = _refused_login(mutual.client_address, tls.ChannelSecurity(ca, "", cert, key))
    assert "one its CA did not issue" in message
    assert "CERTIFICATE_VERIFY_FAILED" in capfd.readouterr().err


def _register(s: Settings, node_id: str, presented: str) -> None:
    """Register as ``node_id`` with its token, presenting the certificate of ``presented``."""
    conn = WorkerConnection(
        s.client_address,
        node_id,
        issue_worker_token(s, node_id),
        tls.client_security(s, presented),
    )
    try:
        conn.register(pb.WorkerResources(cpu=1, memory_mb=512), [])
    finally:
        conn.close()


def test_a_worker_presenting_another_nodes_certificate_is_refused(
    mutual: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    issue_local(mutual, "node-a")
    issue_local(mutual, "node-b")
    _register(mutual, "node-a", "node-a")  # its own: fine

    with caplog.at_level(logging.WARNING), pytest.raises(NodePoolError) as refused:
        _register(mutual, "node-a", "node-b")
    assert refused.value.code == "PERMISSION_DENIED"
    assert "token is for worker node-a, but the connection's certificate is for worker node-b" in (
        str(refused.value)
    )
    assert "refused worker node-a" in caplog.text and "for worker node-b" in caplog.text

    # The host's CLI certificate names no worker: no worker token goes with it either.
    with pytest.raises(NodePoolError) as refused:
        _register(mutual, "node-a", "")
    assert "no worker (a CLI's)" in str(refused.value)


def test_the_enrolment_port_takes_no_call_but_enrolling(mutual: Settings) -> None:
    ca = tls.tls_files(mutual).ca_cert.read_bytes()
    enroll = f"localhost:{mutual.effective_enroll_port}"
    conn = WorkerConnection(
        enroll, "node-a", issue_worker_token(mutual, "node-a"), tls.ChannelSecurity(ca)
    )
    try:
        with pytest.raises(NodePoolError) as refused:
            conn.register(pb.WorkerResources(cpu=1), [])
    finally:
        conn.close()
    assert "this port only enrols new hosts" in str(refused.value)
    # Users are not served there at all.
    with pytest.raises(NodePoolError) as refused:
        _login(enroll, tls.ChannelSecurity(ca))
    assert refused.value.code == "UNIMPLEMENTED"


def test_a_signed_csr_names_the_node_the_node_pool_chose() -> None:
    ca, ca_key = tls.make_ca()
    _key, csr = make_key_and_csr("what-the-host-asked-for")
    cert = sign_csr(ca, ca_key, csr, "node-7")
    parsed = x509.load_pem_x509_certificate(cert)
    assert node_of_certificate(cert) == "node-7"
    assert parsed.subject.rfc4514_string() == "CN=node-7"
    usage = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u.dotted_string for u in usage] == ["1.3.6.1.5.5.7.3.2"]  # client auth only
    # The certificate is for the CSR's key, which never left the host.
    assert parsed.public_key() == x509.load_pem_x509_csr(csr).public_key()
    with pytest.raises(tls.TLSError, match="does not parse"):
        sign_csr(ca, ca_key, b"not a csr", "node-7")


def test_renewal_is_due_after_a_rotation_or_near_the_end() -> None:
    old_ca, old_key = tls.make_ca("old")
    new_ca, _new_key = tls.make_ca("new")
    cert, _key = make_client_cert(old_ca, old_key, "node-1")
    assert renewal_reason(cert, old_ca, tls.fingerprint(old_ca)) == ""
    assert renewal_reason(cert, old_ca, "") == ""  # plaintext: nothing announced
    assert "another CA" in renewal_reason(cert, old_ca, tls.fingerprint(new_ca))
    assert "previous CA" in renewal_reason(cert, new_ca + old_ca, tls.fingerprint(new_ca))
    assert renewal_reason(None, new_ca + old_ca, tls.fingerprint(new_ca)) == ""
    late = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=350)
    assert "expires" in renewal_reason(cert, old_ca, tls.fingerprint(old_ca), now=late)


def test_tls_issue_writes_a_certificate_for_a_host_set_up_by_hand(
    mutual: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("by-hand")
    cert, key, ca = issue_to(mutual, "manual-1", out)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    by_hand = mutual.replace(tls_ca_file=str(ca), tls_cert_file=str(cert), tls_key_file=str(key))
    _register(by_hand, "manual-1", "manual-1")


def test_the_doctor_reports_mutual_tls_its_keys_and_an_unfinished_rotation(
    mutual: Settings,
) -> None:
    finding = run_doctor(mutual, only=("security.tls",)).result("security.tls").finding
    assert finding.status is Status.OK, finding.summary
    assert finding.summary.startswith("mutual TLS (client certificates required)")
    _cert, key = issue_local(mutual, "node-a")
    key.chmod(0o644)
    loose = run_doctor(mutual, only=("security.tls",)).result("security.tls").finding
    assert loose.status is Status.FAIL and str(key) in loose.summary

    now = dt.datetime.now(dt.timezone.utc)
    info = tls.CertificateInfo(now + dt.timedelta(days=200), frozenset({"localhost"}), "sha256:x")
    in_grace = Rotation(1, now.timestamp() - 60, now.timestamp() + 3600, "sha256:old")
    over = Rotation(1, now.timestamp() - 7200, now.timestamp() - 3600, "sha256:old")
    assert tls_verdict(True, False, info, [], now, True, in_grace).status is Status.OK
    ended = tls_verdict(True, False, info, [], now, True, over)
    assert ended.status is Status.WARN and "rotate --finish" in ended.fix
