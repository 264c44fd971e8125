"""A worker's own side of TLS rotation: when the node pool's heartbeat reply names a CA other
than the one the worker trusts first, or its certificate is from the previous CA or nears its
end, the worker makes a new key, asks the node pool to sign it (over the connection it has,
which the grace period keeps valid), writes the certificate and trust, and makes its next
calls over a channel that presents them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hivemind.client_certs import (
    local_client_paths,
    make_key_and_csr,
    renewal_reason,
    worker_cert_paths,
    write_key_pair,
)
from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.tls import ChannelSecurity, TLSError, client_cert_paths, fingerprint, tls_files
from hivemind.worker.connection import WorkerConnection

log = logging.getLogger(__name__)
#: Seconds between looks at the certificate's expiry while the node pool's CA stays the same.
EXPIRY_RECHECK = 3600.0


class CertificateRenewal:
    def __init__(self, settings: Settings, node_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self._checked: tuple[str, float] = ("", 0.0)

    def due(self, security: ChannelSecurity | None, announced: str) -> str:
        """Why to renew now ("" for not): cheap when nothing changed since the last look."""
        if security is None or not announced:
            return ""
        last, at = self._checked
        if last == announced and time.monotonic() - at < EXPIRY_RECHECK:
            return ""
        reason = renewal_reason(security.cert_pem, security.ca_pem, announced)
        if not reason:
            self._checked = (announced, time.monotonic())
        return reason

    def renew(self, conn: WorkerConnection, announced: str) -> ChannelSecurity:
        """Get and keep a new certificate (when the worker presents one) and trust; switch
        ``conn`` to them. Raises HivemindError (NodePoolError, TLSError) and OSError."""
        old = conn.security
        if old is None:
            raise TLSError("a plaintext connection has no certificate to renew")
        key_pem, csr = make_key_and_csr(self.node_id) if old.presents_certificate else (b"", b"")
        reply = conn.renew(csr)
        if not reply.ca_bundle or fingerprint(reply.ca_bundle) != announced:
            raise TLSError("the node pool's reply does not start with the CA it announced")
        self._keep_trust(reply.ca_bundle)
        cert_pem = old.cert_pem
        if csr:
            if not reply.certificate:
                raise TLSError("the node pool signed no certificate")
            cert_file, key_file = self._cert_paths()
            write_key_pair(cert_file, key_file, reply.certificate, key_pem)
            cert_pem = reply.certificate
        security = ChannelSecurity(
            reply.ca_bundle,
            old.server_name,
            cert_pem,
            key_pem if csr else old.key_pem,
        )
        conn.use_security(security)
        self._checked = ("", 0.0)
        return security

    def _keep_trust(self, bundle: bytes) -> None:
        """Write the bundle to TLS_CA_FILE, unless that is the node pool's own ca.crt (on the
        node pool's host, which the rotation wrote already)."""
        if not self.settings.tls_ca_file:
            return
        target = Path(self.settings.tls_ca_file)
        if target.resolve() == tls_files(self.settings).ca_cert.resolve():
            return
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(bundle)
        tmp.replace(target)

    def _cert_paths(self) -> tuple[Path, Path]:
        """The worker's own certificate files (never the host's shared client certificate)."""
        paths = client_cert_paths(self.settings, self.node_id)
        if paths is None or paths == local_client_paths(self.settings):
            return worker_cert_paths(self.settings, self.node_id)
        return paths


def renew_if_due(
    renewal: CertificateRenewal, conn: WorkerConnection, announced: str
) -> ChannelSecurity | None:
    """Renew when due; a failure is logged and tried again at the next heartbeat."""
    reason = renewal.due(conn.security, announced)
    if not reason:
        return None
    try:
        security = renewal.renew(conn, announced)
    except (HivemindError, OSError) as exc:
        log.warning("TLS: renewing failed (%s), will try again: %s", reason, exc)
        return None
    log.info("TLS: renewed (%s); the node pool's CA is %s", reason, announced)
    return security
