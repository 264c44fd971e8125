"""TLS for the node pool's gRPC port: a small private CA, the server's certificate, and the
credentials each side of a channel uses.

On its first start with TLS the node pool creates ``node_pool/tls/`` with a CA (ten years) and a
server certificate signed by it (one year, for this host's names and addresses); the key files
are 0600. Clients and workers trust that CA and nothing else: the CLI and the stack's own
processes find it in the home, a worker elsewhere is given it (``TLS_CA_FILE``). A server
certificate that nears its end, or no longer names this host, is made again at the next start.

When: TLS=on always, TLS=off never, TLS=auto (the default) when the node pool binds anything
but loopback, so that a local stack on 127.0.0.1 stays plaintext and anything reachable from
the network is encrypted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.paths import layout, write_private

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

#: Lifetimes of what the node pool makes, and how early a server certificate is renewed.
CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE_DAYS = 30
#: Names every server certificate carries, so the local stack's clients can verify it.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class TLSError(HivemindError):
    """Certificates that cannot be made or read."""


@dataclass(frozen=True)
class TLSFiles:
    """The node pool's TLS folder."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def read_ca(self) -> tuple[bytes, bytes]:
        """(the CA bundle, the current CA's key): what signs certificates."""
        try:
            return self.ca_cert.read_bytes(), self.ca_key.read_bytes()
        except OSError as exc:
            raise TLSError(
                f"cannot read the node pool's CA in {self.root} ({exc.strerror}): run this on "
                "the node pool's host, after it started once with TLS (`hivemind up`)"
            ) from None


def tls_files(settings: Settings) -> TLSFiles:
    return TLSFiles(layout(settings.home).node_pool / "tls")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_uses_tls(settings: Settings) -> bool:
    """Whether the node pool these settings describe serves TLS."""
    if settings.tls == "on":
        return True
    if settings.tls == "off":
        return False
    return not is_loopback(settings.grpc_host)


@dataclass(frozen=True)
class ChannelSecurity:
    """What a client trusts: the CA's PEM (a bundle during a rotation's grace period), and
    with mutual TLS the certificate and key it presents. ``server_name`` overrides the name
    checked in the server's certificate (for an address the certificate does not list)."""

    ca_pem: bytes
    server_name: str = ""
    cert_pem: bytes | None = None
    key_pem: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )

    def options(self) -> list[tuple[str, str]]:
        if not self.server_name:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

    @property
    def presents_certificate(self) -> bool:
        return self.cert_pem is not None


def client_cert_paths(settings: Settings, node_id: str = "") -> tuple[Path, Path] | None:
    """The certificate and key this host's client (or worker ``node_id``) presents, or None:
    TLS_CERT_FILE and TLS_KEY_FILE, else the worker's own, else the node pool host's client
    certificate (its CLI and master)."""
    if settings.tls_cert_file:
        return Path(settings.tls_cert_file), Path(settings.tls_key_file or settings.tls_cert_file)
    home = layout(settings.home)
    candidates = [home.worker_config / node_id] if node_id else []
    candidates.append(tls_files(settings).root / "client")
    for stem in candidates:
        cert, key = stem.with_suffix(".crt"), stem.with_suffix(".key")
        if cert.is_file() and key.is_file():
            return cert, key
    return None


def client_security(settings: Settings, node_id: str = "") -> ChannelSecurity | None:
    """How this host's clients (or worker ``node_id``) reach the node pool: None for
    plaintext. TLS_CA_FILE names the CA to trust (a worker host's join writes it); else, when
    the node pool of this home serves TLS, the CA it made."""
    if settings.tls == "off":
        return None
    ca_file = Path(settings.tls_ca_file) if settings.tls_ca_file else None
    if ca_file is None and (settings.tls == "on" or server_uses_tls(settings)):
        ca_file = tls_files(settings).ca_cert
        if not ca_file.is_file() and settings.tls != "on":
            return None  # the node pool has not made it yet: it is not serving TLS either
    if ca_file is None:
        return None
    try:
        ca_pem = ca_file.read_bytes()
    except OSError as exc:
        raise TLSError(
            f"cannot read the node pool's CA certificate {ca_file}: {exc.strerror}; set "
            "TLS_CA_FILE to the ca.crt of the node pool (its node_pool/tls/ca.crt)"
        ) from None
    paths = client_cert_paths(settings, node_id)
    if paths is None:
        return ChannelSecurity(ca_pem, settings.tls_server_name)
    try:
        cert_pem, key_pem = paths[0].read_bytes(), paths[1].read_bytes()
    except OSError as exc:
        raise TLSError(
            f"cannot read the client certificate {exc.filename}: {exc.strerror}; check "
            "TLS_CERT_FILE and TLS_KEY_FILE"
        ) from None
    return ChannelSecurity(ca_pem, settings.tls_server_name, cert_pem, key_pem)


# -- making certificates ---------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str = "HiveMind node pool CA", days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A new CA: (certificate PEM, private key PEM)."""
    # cryptography is loaded only where certificates are made or read: a CLI call that only
    # dials the node pool does not pay for it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_ca(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[x509.Certificate, Any]:
    """The CA's certificate and EC private key, parsed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except ValueError as exc:
        raise TLSError(f"the CA certificate or key does not parse: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TLSError("the CA key is not an EC key made by HiveMind")
    return ca_cert, ca_key


def issue_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    public_key: Any,
    common_name: str,
    sans: list[x509.GeneralName],
    client: bool,
    days: int,
    not_before: dt.datetime | None = None,
) -> bytes:
    """A leaf certificate for ``public_key`` signed by the CA: a server's (``client`` False) or
    a client's, valid ``days`` from ``not_before`` (default: five minutes ago). Its PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = load_ca(ca_cert_pem, ca_key_pem)
    start = not_before or (_now() - dt.timedelta(minutes=5))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def make_server_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    names: list[str],
    days: int = SERVER_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A server certificate for ``names`` (DNS names and IP addresses), signed by the CA:
    (certificate PEM, private key PEM). ``not_before`` back-dates it (tests make expired ones)."""
    from cryptography import x509

    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = new_key()
    cert = issue_certificate(
        ca_cert_pem, ca_key_pem, key.public_key(), names[0], sans, False, days, not_before
    )
    return cert, _key_pem(key)


def server_names(settings: Settings) -> list[str]:
    """The names the server certificate lists: this host's names, the bind address (for the
    wildcard: every address of this host's interfaces, so workers may dial any of them),
    TLS_HOSTS, and loopback."""
    names = [socket.gethostname(), socket.getfqdn()]
    if settings.grpc_host not in ("", "0.0.0.0", "::"):
        names.append(settings.grpc_host)
    else:
        names += sorted(_interface_addresses())
    names += [n.strip() for n in settings.tls_hosts.split(",") if n.strip()]
    return [n for n in dict.fromkeys([*names, *LOOPBACK_NAMES]) if n]


def _interface_addresses() -> set[str]:
    import psutil

    found = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                ip = address.address.split("%", 1)[0]  # no IPv6 zone: not a certificate name
                try:
                    parsed = ipaddress.ip_address(ip)
                except ValueError:
                    continue
                if not parsed.is_link_local:
                    found.add(str(parsed))
    return found


def _cert_names(cert: x509.Certificate) -> set[str]:
    from cryptography import x509

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in sans.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in sans.get_values_for_type(x509.IPAddress)
    }


@dataclass(frozen=True)
class CertificateInfo:
    not_after: dt.datetime
    names: frozenset[str]
    fingerprint: str


def certificate_info(cert_pem: bytes) -> CertificateInfo | None:
    """What the doctor shows of a certificate; None when it does not parse."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None
    return CertificateInfo(
        cert.not_valid_after_utc, frozenset(_cert_names(cert)), fingerprint(cert_pem)
    )


def renewal_reason(cert_pem: bytes, names: list[str], now: dt.datetime | None = None) -> str:
    """Why a server certificate must be made again ("" when it may stay)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "it does not parse"
    now = now or _now()
    if cert.not_valid_after_utc - now < dt.timedelta(days=RENEW_BEFORE_DAYS):
        return f"it expires {cert.not_valid_after_utc:%Y-%m-%d}"
    missing = sorted(set(names) - _cert_names(cert))
    if missing:
        return f"it does not name {', '.join(missing)}"
    return ""


def ensure_server_files(settings: Settings) -> tuple[TLSFiles, str]:
    """The node pool's CA and server certificate, made or renewed as needed: (files, what was
    done, "" for nothing)."""
    files = tls_files(settings)
    files.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = []
    if not (files.ca_cert.is_file() and files.ca_key.is_file()):
        ca_cert, ca_key = make_ca()
        write_private(files.ca_key, ca_key)
        files.ca_cert.write_bytes(ca_cert)
        done.append(f"made a CA ({files.ca_cert})")
    names = server_names(settings)
    reason = (
        renewal_reason(files.server_cert.read_bytes(), names)
        if files.server_cert.is_file() and files.server_key.is_file()
        else "there is none"
    )
    if reason:
        try:
            cert, key = make_server_cert(
                files.ca_cert.read_bytes(), files.ca_key.read_bytes(), names
            )
        except (OSError, ValueError) as exc:
            raise TLSError(f"cannot make the server certificate from {files.root}: {exc}") from None
        write_private(files.server_key, key)
        files.server_cert.write_bytes(cert)
        done.append(f"made the server certificate for {', '.join(names)} ({reason})")
    return files, "; ".join(done)


def fingerprint(cert_pem: bytes) -> str:
    """``sha256:<hex>`` of a certificate's DER form: what a join token pins."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return f"sha256:{digest}"


# -- saying why a TLS connection failed ------------------------------------------------------


def explain_failure(details: str, address: str, secured: bool) -> str:
    """A sentence for an UNAVAILABLE call whose cause was TLS, or "" when it was not (pure:
    it reads gRPC's error text)."""
    text = details.lower()
    if secured:
        # An expired certificate also fails verification: say the more precise thing first.
        if "expired" in text:
            return (
                f"the node pool at {address} presents an expired certificate; restart it "
                "(`hivemind down && hivemind up`) to renew it"
            )
        if "certificate_verify_failed" in text or "certificate verify failed" in text:
            return (
                f"the node pool at {address} presents a certificate that the trusted CA did "
                "not sign (TLS_CA_FILE, or this home's node_pool/tls/ca.crt): it is another "
                "cluster's, or the CA was made again; fetch its ca.crt"
            )
        if "peer name" in text or "hostname" in text or "subject alternative" in text:
            return (
                f"the node pool's certificate does not name {address.rsplit(':', 1)[0]}; add "
                "it to TLS_HOSTS on the node pool and restart it, or set TLS_SERVER_NAME"
            )
        if (
            "wrong_version_number" in text
            or "wrong version number" in text
            or ("handshake" in text and "ssl" in text)
        ):
            return (
                f"the TLS handshake with {address} failed: is the node pool serving "
                "plaintext (TLS=off, or a loopback bind)? Set TLS=off here to match"
            )
        # Closed while connecting (not mid-call, as a restart does): the handshake failed.
        if "failed to connect" in text and ("socket closed" in text or "connection reset" in text):
            return (
                f"the node pool at {address} closed the connection in the TLS handshake: it "
                "requires a client certificate (REQUIRE_CLIENT_CERT) and this client presented "
                "none, or one its CA did not issue or that expired; a worker host gets one "
                "with `hivemind join`, any other with `hivemind tls issue` on the node pool's "
                "host (then TLS_CERT_FILE and TLS_KEY_FILE)"
            )
        return ""
    if any(hint in text for hint in ("socket closed", "connection reset", "handshake", "eof")):
        return (
            f"the node pool at {address} closed a plaintext connection: it serves TLS (a "
            "non-loopback bind does, by default); give this host its CA with TLS_CA_FILE "
            "(the node pool's node_pool/tls/ca.crt) or `hivemind join`"
        )
    return ""
