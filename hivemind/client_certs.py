"""Client certificates for mutual TLS (REQUIRE_CLIENT_CERT): who a connection is.

A worker's certificate is issued by the node pool's CA for one node id: its common name is the
id and its subject alternative name the URI ``hivemind-node:<id>``. The node pool reads that
name from each connection and refuses a worker token for another node (a stolen token is of
no use without its host's key, and a host's key cannot act as another host). The CLI and
master on the node pool's host present ``node_pool/tls/client.crt``, which names no node.

The key never leaves the host that uses it: a joining or renewing worker sends a certificate
signing request (CSR) and receives the certificate; the node pool sets the name itself and
ignores what the CSR asks for.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from hivemind.config import Settings
from hivemind.paths import layout, write_private
from hivemind.tls import (
    RENEW_BEFORE_DAYS,
    TLSError,
    TLSFiles,
    _key_pem,
    _now,
    ensure_server_files,
    fingerprint,
    issue_certificate,
    new_key,
    tls_files,
)

#: The URI scheme of the subject alternative name that binds a certificate to a node id.
NODE_URI_SCHEME = "hivemind-node:"
#: Days a client certificate is valid; a worker renews it in its last RENEW_BEFORE_DAYS.
CLIENT_DAYS = 365
#: Common name of the node pool host's own client certificate (its CLI and master).
LOCAL_CLIENT_NAME = "hivemind-local-client"
#: How many distinct peer certificates the node pool remembers the node id of.
PEER_CACHE_MAX = 4096


def make_key_and_csr(node_id: str) -> tuple[bytes, bytes]:
    """A new private key and a CSR for it: (key PEM, CSR PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def _node_sans(node_id: str) -> list[Any]:
    from cryptography import x509

    return [x509.UniformResourceIdentifier(f"{NODE_URI_SCHEME}{node_id}")]


def sign_csr(ca_cert_pem: bytes, ca_key_pem: bytes, csr_pem: bytes, node_id: str) -> bytes:
    """The client certificate of worker ``node_id`` for the key in ``csr_pem`` (its PEM)."""
    from cryptography import x509

    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise TLSError("the certificate signing request does not parse") from None
    if not csr.is_signature_valid:
        raise TLSError("the certificate signing request is not signed by its own key")
    return issue_certificate(
        ca_cert_pem, ca_key_pem, csr.public_key(), node_id, _node_sans(node_id), True, CLIENT_DAYS
    )


def make_client_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, node_id: str = ""
) -> tuple[bytes, bytes]:
    """A client certificate and its new key, made where the CA is: for worker ``node_id``, or
    (no id) the node pool host's own client. (certificate PEM, key PEM)."""
    key = new_key()
    sans = _node_sans(node_id) if node_id else []
    if not sans:
        from cryptography import x509

        sans = [x509.DNSName(LOCAL_CLIENT_NAME)]
    cert = issue_certificate(
        ca_cert_pem,
        ca_key_pem,
        key.public_key(),
        node_id or LOCAL_CLIENT_NAME,
        sans,
        True,
        CLIENT_DAYS,
    )
    return cert, _key_pem(key)


def node_of_certificate(cert_pem: bytes) -> str:
    """The node id a client certificate is for, "" when it names none (or does not parse)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ""
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(NODE_URI_SCHEME):
            return uri.removeprefix(NODE_URI_SCHEME)
    return ""


class PeerNodes:
    """The node id of each connection's client certificate, parsed once per certificate."""

    def __init__(self) -> None:
        self._nodes: dict[bytes, str] = {}

    def of(self, context: Any) -> str | None:
        """The node id the peer's certificate names ("" for none); None without a
        certificate (a connection to the enrolment port)."""
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            return None
        pem = pems[0]
        node = self._nodes.get(pem)
        if node is None:
            if len(self._nodes) >= PEER_CACHE_MAX:
                self._nodes.clear()
            node = self._nodes[pem] = node_of_certificate(pem)
        return node


def renewal_reason(
    cert_pem: bytes | None, ca_pem: bytes, announced: str, now: dt.datetime | None = None
) -> str:
    """Why a worker should ask for a new certificate and trust ("" when it need not):
    ``announced`` is the fingerprint of the CA the node pool signs with now, ``ca_pem`` what
    the worker trusts (the current CA first), ``cert_pem`` the certificate it presents."""
    from cryptography import x509

    if not announced:
        return ""
    try:
        trusted_first = fingerprint(ca_pem)
    except ValueError:
        return "its CA file does not parse"
    if trusted_first != announced:
        return "the node pool signs with another CA now"
    if cert_pem is None:
        return ""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return "its certificate does not parse"
    if cert.issuer != ca.subject:
        return "its certificate is from the previous CA"
    if cert.not_valid_after_utc - (now or _now()) < dt.timedelta(days=RENEW_BEFORE_DAYS):
        return f"its certificate expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return ""


def write_key_pair(cert_path: Path, key_path: Path, cert_pem: bytes, key_pem: bytes) -> None:
    """Both files 0600, the key first: a reader that sees the new certificate sees its key."""
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem)


def worker_cert_paths(settings: Settings, node_id: str) -> tuple[Path, Path]:
    """Where worker ``node_id`` keeps its certificate and key on its host."""
    config = layout(settings.home).worker_config
    return config / f"{node_id}.crt", config / f"{node_id}.key"


def local_client_paths(settings: Settings) -> tuple[Path, Path]:
    root = tls_files(settings).root
    return root / "client.crt", root / "client.key"


def issue_local(settings: Settings, node_id: str = "", force: bool = False) -> tuple[Path, Path]:
    """On the node pool's host: the client certificate of a local worker (``node_id``) or of
    the host's CLI and master, made from the CA unless one from the current CA is there."""
    files = tls_files(settings)
    cert_path, key_path = (
        worker_cert_paths(settings, node_id) if node_id else local_client_paths(settings)
    )
    ca_pem, ca_key = files.read_ca()
    kept = not force and cert_path.is_file() and key_path.is_file()
    if kept and not renewal_reason(cert_path.read_bytes(), ca_pem, fingerprint(ca_pem)):
        return cert_path, key_path
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = make_client_cert(ca_pem, ca_key, node_id)
    write_key_pair(cert_path, key_path, cert, key)
    return cert_path, key_path


def issue_to(settings: Settings, node_id: str, out_dir: Path) -> list[Path]:
    """``hivemind tls issue``: a certificate and key for worker ``node_id`` (or, with no id,
    a client that names no worker), and the CA bundle, written into ``out_dir`` for a host
    set up by hand. The files written."""
    files = tls_files(settings)
    ca_pem, ca_key = files.read_ca()
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stem = node_id or LOCAL_CLIENT_NAME
    cert, key = make_client_cert(ca_pem, ca_key, node_id)  # signed by the bundle's first CA
    cert_path, key_path = out_dir / f"{stem}.crt", out_dir / f"{stem}.key"
    write_key_pair(cert_path, key_path, cert, key)
    ca_path = out_dir / "ca.crt"
    ca_path.write_bytes(ca_pem)
    return [cert_path, key_path, ca_path]


def ensure_node_pool_files(settings: Settings) -> tuple[TLSFiles, str]:
    """:func:`hivemind.tls.ensure_server_files`, and with mutual TLS the client certificate
    of this host's CLI and master: (files, what was done)."""
    files, made = ensure_server_files(settings)
    if settings.require_client_cert:
        issue_local(settings)
    return files, made
