"""CA rotation without downtime, and the server credentials that follow it live.

``hivemind tls rotate`` makes a new CA and a cross-certificate: the new CA's name and key,
signed by the old CA's key. The node pool then presents its new server certificate with the
cross-certificate and the new CA behind it, so a client that trusts only the old CA still
verifies it (server -> cross -> old CA) and one that trusts the new CA stops at the new CA.
During the grace period ``ca.crt`` is a bundle, the new CA first and then the old one, and the
node pool accepts client certificates from either. Each worker sees the new CA's fingerprint
in its heartbeat reply and renews its certificate and trust over its existing connection.
When the grace period ends, or at ``hivemind tls rotate --finish``, the old CA is dropped.

The node pool reads its certificates through a fetcher that gRPC calls before each new
handshake: a rotation takes effect for new connections at once, without a restart, and
connections already open carry on. The rotation writes every file first (each replaced
atomically) and ``rotation.json`` last, and the fetcher looks only at that file, so it never
sees half a rotation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from hivemind.config import Settings
from hivemind.paths import write_private
from hivemind.tls import (
    TLSError,
    TLSFiles,
    certificate_info,
    fingerprint,
    load_ca,
    make_ca,
    make_server_cert,
    server_names,
    tls_files,
)

log = logging.getLogger(__name__)

#: Days the old CA stays trusted after a rotation unless ``--grace`` says otherwise.
DEFAULT_GRACE_DAYS = 7.0
ROTATION_FILE = "rotation.json"
CROSS_FILE = "ca-cross.crt"
PEM_END = b"-----END CERTIFICATE-----"


def split_pems(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each with its closing line."""
    parts = bundle.split(PEM_END)
    return [p.strip() + b"\n" + PEM_END + b"\n" for p in parts if p.strip()]


@dataclass(frozen=True)
class Rotation:
    """What ``rotation.json`` says: the last rotation and its grace period."""

    generation: int = 0
    rotated_at: float = 0.0
    grace_until: float = 0.0
    previous_fingerprint: str = ""

    def in_grace(self, now: float | None = None) -> bool:
        return bool(self.previous_fingerprint) and (now or time.time()) < self.grace_until


_read: dict[Path, tuple[tuple[int, int, int], Rotation]] = {}


def read_rotation(files: TLSFiles) -> Rotation:
    """What ``rotation.json`` says; parsed again only when the file changed (heartbeats and
    handshakes look at it)."""
    path = files.root / ROTATION_FILE
    try:
        stat = path.stat()
    except OSError:
        return Rotation()
    key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # each write is a new file (os.replace)
    cached = _read.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    rotation = _parse_rotation(path)
    _read[path] = (key, rotation)
    return rotation


def _parse_rotation(path: Path) -> Rotation:
    try:
        data = json.loads(path.read_text())
        return Rotation(
            int(data["generation"]),
            float(data["rotated_at"]),
            float(data.get("grace_until", 0.0)),
            str(data.get("previous_fingerprint", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return Rotation()


def _replace(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``path`` whole or not at all (a reader sees the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if private:
        write_private(tmp, data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_rotation(files: TLSFiles, rotation: Rotation) -> None:
    body = json.dumps(rotation.__dict__, indent=2).encode()
    _replace(files.root / ROTATION_FILE, body)


def trusted_roots(files: TLSFiles, now: float | None = None) -> bytes:
    """The CAs whose client certificates the node pool accepts: the bundle in ``ca.crt``,
    without the old CA once the grace period is over."""
    bundle = files.ca_cert.read_bytes()
    if read_rotation(files).in_grace(now):
        return bundle
    return split_pems(bundle)[0]


def server_chain(files: TLSFiles, now: float | None = None) -> bytes:
    """What the node pool presents: its certificate, the cross-certificate during the grace
    period (for clients that trust only the old CA), then the current CA (a joining host
    finds the CA it pins here)."""
    current = split_pems(files.ca_cert.read_bytes())[0]
    cross = files.root / CROSS_FILE
    middle = cross.read_bytes() if read_rotation(files).in_grace(now) and cross.is_file() else b""
    return files.server_cert.read_bytes() + middle + current


def certificate_configuration(files: TLSFiles, require_client_cert: bool) -> Any:
    """The server's key, chain and (with mutual TLS) the client CAs, read now."""
    try:
        key = files.server_key.read_bytes()
        chain = server_chain(files)
        roots = trusted_roots(files) if require_client_cert else None
    except (OSError, IndexError) as exc:
        raise TLSError(f"cannot read the server certificate in {files.root}: {exc}") from None
    return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)


def server_credentials(files: TLSFiles, require_client_cert: bool) -> grpc.ServerCredentials:
    """Credentials that re-read the certificates when a rotation changed them (or its grace
    period ended), before the next handshake."""
    seen = [_state_of(files)]

    def fetch() -> Any:
        state = _state_of(files)
        if state == seen[0]:
            return None
        try:
            configuration = certificate_configuration(files, require_client_cert)
        except TLSError as exc:
            log.error("TLS: keeping the current certificates: %s", exc)
            return None
        seen[0] = state
        log.info("TLS: certificates reloaded (rotation %d)", state[0])
        return configuration

    return grpc.dynamic_ssl_server_credentials(
        certificate_configuration(files, require_client_cert),
        fetch,
        require_client_authentication=require_client_cert,
    )


def _state_of(files: TLSFiles) -> tuple[int, bool]:
    rotation = read_rotation(files)
    return rotation.generation, rotation.in_grace()


def cross_sign(new_ca_pem: bytes, old_ca_pem: bytes, old_key_pem: bytes) -> bytes:
    """The new CA (its name, key and extensions) as issued by the old CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    new = x509.load_pem_x509_certificate(new_ca_pem)
    old, old_key = load_ca(old_ca_pem, old_key_pem)
    builder = (
        x509.CertificateBuilder()
        .subject_name(new.subject)
        .issuer_name(old.subject)
        .public_key(new.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(new.not_valid_before_utc)
        .not_valid_after(min(new.not_valid_after_utc, old.not_valid_after_utc))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(old_key.public_key()), False
        )
    )
    for extension in new.extensions:
        if not isinstance(extension.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(old_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class RotationReport:
    old_fingerprint: str
    new_fingerprint: str
    grace_until: float
    reissued: list[Path]


def rotate(settings: Settings, grace_days: float = DEFAULT_GRACE_DAYS) -> RotationReport:
    """A new CA, its cross-certificate, and the server's (and this host's client's)
    certificates from it; the old CA trusted for ``grace_days`` more."""
    from hivemind.client_certs import issue_local, local_client_paths

    if not grace_days > 0:
        raise TLSError(f"--grace must be a positive number of days, not {grace_days:g}")
    files = tls_files(settings)
    try:
        bundle, old_key = files.ca_cert.read_bytes(), files.ca_key.read_bytes()
    except OSError:
        raise TLSError(
            f"no CA in {files.root}: this is not a TLS node pool's host, or it never started "
            "with TLS (`hivemind up`)"
        ) from None
    rotation = read_rotation(files)
    if rotation.in_grace():
        raise TLSError(
            "the last rotation's grace period runs until "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(rotation.grace_until))}: "
            "finish it first (`hivemind tls rotate --finish`), once every worker has renewed"
        )
    old_ca = split_pems(bundle)[0]
    new_ca, new_key = make_ca(f"HiveMind node pool CA {time.strftime('%Y-%m-%d %H:%M:%S')}")
    cross = cross_sign(new_ca, old_ca, old_key)
    server_cert, server_key = make_server_cert(new_ca, new_key, server_names(settings))
    grace_until = time.time() + grace_days * 86400
    # Every file before rotation.json: the node pool's fetcher acts on that one alone.
    _replace(files.root / CROSS_FILE, cross)
    _replace(files.ca_key, new_key, private=True)
    _replace(files.ca_cert, new_ca + old_ca)
    _replace(files.server_key, server_key, private=True)
    _replace(files.server_cert, server_cert)
    reissued = [files.server_cert]
    if local_client_paths(settings)[0].is_file():
        reissued.append(issue_local(settings, force=True)[0])
    _write_rotation(
        files, Rotation(rotation.generation + 1, time.time(), grace_until, fingerprint(old_ca))
    )
    return RotationReport(fingerprint(old_ca), fingerprint(new_ca), grace_until, reissued)


def finish(settings: Settings) -> str:
    """End the grace period now: the old CA is no longer trusted. The old CA's fingerprint."""
    files = tls_files(settings)
    rotation = read_rotation(files)
    if not rotation.previous_fingerprint:
        raise TLSError("no rotation to finish: the node pool trusts one CA")
    current = split_pems(files.ca_cert.read_bytes())[0]
    _replace(files.ca_cert, current)
    (files.root / CROSS_FILE).unlink(missing_ok=True)
    _write_rotation(files, Rotation(rotation.generation + 1, rotation.rotated_at))
    return rotation.previous_fingerprint


@dataclass(frozen=True)
class CAStatus:
    fingerprint: str
    subject: str
    not_after: str
    role: str  # "current" or "previous"


@dataclass(frozen=True)
class TLSStatus:
    root: Path
    cas: list[CAStatus]
    server_not_after: str
    server_names: list[str]
    rotation: Rotation
    client_certificate: str


def tls_status(settings: Settings) -> TLSStatus:
    """What ``hivemind tls status`` shows: the trusted CAs, the server certificate, the
    rotation's grace period."""
    from cryptography import x509

    files = tls_files(settings)
    try:
        bundle = files.ca_cert.read_bytes()
        server = certificate_info(files.server_cert.read_bytes())
    except OSError:
        raise TLSError(f"no CA in {files.root}: start the node pool with TLS first") from None
    cas = []
    for index, pem in enumerate(split_pems(bundle)):
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise TLSError(f"{files.ca_cert} holds a certificate that does not parse") from None
        cas.append(
            CAStatus(
                fingerprint(pem),
                cert.subject.rfc4514_string(),
                f"{cert.not_valid_after_utc:%Y-%m-%d}",
                "current" if index == 0 else "previous",
            )
        )
    client = files.root / "client.crt"
    return TLSStatus(
        files.root,
        cas,
        f"{server.not_after:%Y-%m-%d}" if server else "unreadable",
        sorted(server.names) if server else [],
        read_rotation(files),
        str(client) if client.is_file() else "",
    )


class SigningCA:
    """The node pool's CA as its services use it: the fingerprint heartbeats announce, the
    bundle workers trust, and the signing of their CSRs; re-read after each rotation."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._state: tuple[int, bool] | None = None
        self._fingerprint = ""

    def fingerprint(self) -> str:
        """The current CA's fingerprint ("" when the node pool has no CA, i.e. plaintext)."""
        state = _state_of(self.files)
        if state != self._state:
            try:
                self._fingerprint = fingerprint(self.files.ca_cert.read_bytes())
            except (OSError, ValueError):
                self._fingerprint = ""
            self._state = state
        return self._fingerprint

    def bundle(self) -> bytes:
        return self.files.ca_cert.read_bytes()

    def sign(self, csr_pem: bytes, node_id: str) -> bytes:
        from hivemind.client_certs import sign_csr

        ca_pem, ca_key = self.files.read_ca()
        return sign_csr(split_pems(ca_pem)[0], ca_key, csr_pem, node_id)
