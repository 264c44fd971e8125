"""TLS on the node pool's port: is it on where the network can reach it, and are its
certificate and keys sound? The verdict is a pure function of what was read."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from doctor.context import Context
from doctor.model import Finding
from doctor.registry import check
from hivemind import tls
from hivemind.paths import layout
from hivemind.tls_rotation import Rotation, read_rotation

TURN_ON = (
    'remove TLS = "off" from hivemind.toml (the default, auto, serves TLS on any bind but '
    "loopback) and restart the node pool"
)


def tls_verdict(
    serves_tls: bool,
    loopback_bind: bool,
    info: tls.CertificateInfo | None,
    loose_keys: list[str],
    now: dt.datetime,
    mutual: bool = False,
    rotation: Rotation | None = None,
) -> Finding:
    """``info`` is the server certificate (None: missing or unreadable); ``loose_keys`` the
    key files others may read; ``mutual``: client certificates are required; ``rotation``:
    what ``rotation.json`` says of the last CA rotation."""
    if not serves_tls:
        if loopback_bind:
            return Finding.ok("plaintext on loopback only: nothing leaves this host")
        return Finding.fail(
            "the node pool serves plaintext beyond loopback (TLS=off): tokens and passwords "
            "cross the network readable",
            TURN_ON,
        )
    if loose_keys:
        return Finding.fail(
            f"TLS key files others can read: {', '.join(loose_keys)}",
            f"chmod 600 {' '.join(loose_keys)}",
        )
    if info is None:
        return Finding.warn(
            "TLS is on but there is no readable server certificate yet",
            "start the node pool (`hivemind up`): it makes its CA and certificate",
        )
    evidence = {
        "not_after": info.not_after.isoformat(),
        "names": sorted(info.names),
        "fingerprint": info.fingerprint,
        "mutual_tls": mutual,
    }
    if rotation is not None and rotation.previous_fingerprint:
        evidence["previous_ca"] = rotation.previous_fingerprint
        if not rotation.in_grace(now.timestamp()):
            return Finding.warn(
                "the CA rotation's grace period is over: a worker that did not renew cannot "
                "connect again",
                "`hivemind tls status`; then `hivemind tls rotate --finish` to drop the old CA",
                **evidence,
            )
    left = info.not_after - now
    if left <= dt.timedelta(0):
        return Finding.fail(
            f"the node pool's certificate expired {info.not_after:%Y-%m-%d}: clients refuse it",
            "restart the node pool (`hivemind down && hivemind up`): it makes a new one",
            **evidence,
        )
    if left < dt.timedelta(days=tls.RENEW_BEFORE_DAYS):
        return Finding.warn(
            f"the node pool's certificate expires {info.not_after:%Y-%m-%d}",
            "restart the node pool before then: it renews the certificate at start",
            **evidence,
        )
    kind = "mutual TLS (client certificates required)" if mutual else "TLS"
    return Finding.ok(
        f"{kind}, certificate valid until {info.not_after:%Y-%m-%d} for "
        + ", ".join(sorted(info.names)),
        **evidence,
    )


def _loose(paths: list[Path]) -> list[str]:
    return [str(p) for p in paths if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o077]


@check(
    "security.tls",
    title="The node pool's port is encrypted where the network reaches it",
    guide="(implied by 4 節點間通訊失敗: tokens cross the network)",
)
def tls_check(ctx: Context) -> Finding:
    settings = ctx.settings
    files = tls.tls_files(settings)
    worker_keys = sorted(layout(settings.home).worker_config.glob("*.key"))
    try:
        pem = files.server_cert.read_bytes()
    except OSError:
        info = None
    else:
        info = tls.certificate_info(pem)
    return tls_verdict(
        tls.server_uses_tls(settings),
        tls.is_loopback(settings.grpc_host),
        info,
        _loose([files.ca_key, files.server_key, files.root / "client.key", *worker_keys]),
        dt.datetime.now(dt.timezone.utc),
        settings.require_client_cert,
        read_rotation(files),
    )
