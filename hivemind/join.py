"""One-command join: a single string lets a new host become a worker of a TLS node pool.

``hivemind join-token`` (on the node pool's host) prints ``hmj1.<payload>.<mac>``: the node
pool's address, the SHA-256 fingerprint of its CA, a one-time secret, an expiry, and the labels
and node id to give the worker; the MAC is keyed by the node pool's signing secret, so a token
whose payload was changed is refused. The secret's grant waits in Redis (``join:<sha256>``),
expiring with the token, and the one enrolment it allows takes it (GETDEL).

``hivemind join TOKEN`` (on the new host) reads the node pool's certificate chain without
trusting it, keeps the CA only if its fingerprint is the pinned one, then enrols over TLS
verified by that CA, and only after the node pool has said yes writes ``worker/config/``
(the CA, the worker token) and ``hivemind.toml``. A reused, expired or tampered token changes
nothing on the host.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hivemind import redis_client
from hivemind.auth import b64_unpadded, b64_unpadded_decode
from hivemind.config import CONFIG_FILE_NAME, Settings
from hivemind.errors import HivemindError
from hivemind.paths import layout, write_private
from hivemind.supervisor import ServiceSpec

TOKEN_PREFIX = "hmj1"
#: Seconds a join token is good for unless ``--ttl`` says otherwise.
DEFAULT_TTL = 3600.0
#: Seconds the joined worker has to register before `join` gives up on it.
JOIN_START_TIMEOUT = 30.0
#: Seconds to wait for the node pool's TLS handshake when fetching its CA.
HANDSHAKE_TIMEOUT = 10.0


class JoinError(HivemindError):
    """A join token that cannot be used; nothing was changed."""


@dataclass(frozen=True)
class JoinToken:
    address: str
    ca_fingerprint: str
    secret: str
    expires_at: float
    labels: tuple[str, ...] = ()
    node_id: str = ""
    #: Where to enrol when it is not ``address``: with mutual TLS, the port that takes a
    #: connection without a client certificate.
    enroll_address: str = ""

    def payload(self) -> dict[str, Any]:
        payload = {
            "a": self.address,
            "f": self.ca_fingerprint,
            "s": self.secret,
            "e": round(self.expires_at, 3),
            "l": list(self.labels),
            "n": self.node_id,
        }
        if self.enroll_address:
            payload["p"] = self.enroll_address
        return payload

    @property
    def dial_address(self) -> str:
        return self.enroll_address or self.address

    def encode(self, signing_secret: bytes) -> str:
        body = b64_unpadded(json.dumps(self.payload(), separators=(",", ":")).encode())
        return f"{TOKEN_PREFIX}.{body}.{_mac(signing_secret, body)}"

    @property
    def secret_digest(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.expires_at


def _mac(signing_secret: bytes, body: str) -> str:
    return b64_unpadded(hmac.new(signing_secret, f"join:{body}".encode(), hashlib.sha256).digest())


def parse_token(text: str) -> JoinToken:
    """The token's contents (unchecked MAC: only the node pool can check it)."""
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise JoinError("this is not a join token (it starts with 'hmj1.' and has 3 parts)")
    try:
        data = json.loads(b64_unpadded_decode(parts[1]))
        token = JoinToken(
            address=str(data["a"]),
            ca_fingerprint=str(data["f"]),
            secret=str(data["s"]),
            expires_at=float(data["e"]),
            labels=tuple(str(x) for x in data.get("l", [])),
            node_id=str(data.get("n", "")),
            enroll_address=str(data.get("p", "")),
        )
    except (ValueError, KeyError, TypeError):
        raise JoinError("the join token is damaged (its contents do not parse)") from None
    if not token.ca_fingerprint.startswith("sha256:") or not token.secret:
        raise JoinError("the join token is damaged (no CA fingerprint or secret)")
    return token


def verify_token(text: str, signing_secret: bytes) -> JoinToken:
    """The token, if its MAC is the node pool's (the node pool's side)."""
    token = parse_token(text)
    body, mac = text.strip().split(".")[1:]
    if not hmac.compare_digest(_mac(signing_secret, body), mac):
        raise JoinError("the join token was altered (its signature does not match)")
    return token


@dataclass(frozen=True)
class Grant:
    """What an unused token allows, as stored under ``join:<sha256>``."""

    labels: tuple[str, ...] = ()
    node_id: str = ""

    def to_json(self) -> str:
        return json.dumps({"labels": list(self.labels), "node_id": self.node_id})

    @classmethod
    def from_json(cls, text: str) -> Grant:
        data = json.loads(text)
        return cls(tuple(data.get("labels", [])), str(data.get("node_id", "")))


def new_token(
    address: str,
    ca_fingerprint: str,
    ttl: float = DEFAULT_TTL,
    labels: tuple[str, ...] = (),
    node_id: str = "",
    enroll_address: str = "",
) -> JoinToken:
    if not ttl > 0:
        raise JoinError(f"--ttl must be a positive number of seconds, not {ttl:g}")
    return JoinToken(
        address,
        ca_fingerprint,
        secrets.token_urlsafe(32),
        time.time() + ttl,
        labels,
        node_id,
        enroll_address,
    )


# -- the new host's side ---------------------------------------------------------------------


def fetch_pinned_ca(address: str, fingerprint: str, timeout: float = HANDSHAKE_TIMEOUT) -> bytes:
    """The CA certificate (PEM) the node pool at ``address`` sends in its chain, if its
    fingerprint is ``fingerprint``. The handshake trusts nothing: the pin is the trust."""
    from hivemind.tls import fingerprint as fingerprint_of

    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host.strip("[]")) as tls_socket,
        ):
            # The chain as sent, unverified (public in Python 3.13, there since 3.10).
            chain = tls_socket._sslobj.get_unverified_chain() or []  # type: ignore[union-attr]
            pems = [cert.public_bytes().encode() for cert in chain]
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise JoinError(
            f"cannot reach the node pool at {address} over TLS: {exc}; is it running, with "
            "TLS on, and is the port open?"
        ) from None
    for pem in pems:
        if fingerprint_of(pem) == fingerprint:
            return pem
    raise JoinError(
        f"the node pool at {address} does not present the CA this token pins "
        f"({fingerprint[:23]}…): the token is for another node pool, or was altered"
    )


@dataclass(frozen=True)
class Joined:
    node_id: str
    labels: tuple[str, ...]
    address: str
    written: list[Path] = field(default_factory=list)


def _config_lines(address: str, ca_file: Path) -> str:
    return (
        "# Written by `hivemind join`: where this host's worker finds its node pool.\n"
        # JSON strings are TOML basic strings: quotes and backslashes are escaped alike.
        f"NODEPOOL_ADDRESS = {json.dumps(address)}\n"
        f"TLS_CA_FILE = {json.dumps(str(ca_file))}\n"
    )


def join_host(settings: Settings, token_text: str, node_id: str = "") -> Joined:
    """Enrol this host (its HIVEMIND_HOME) with the node pool the token names, then write
    its worker config. Raises JoinError, changing nothing, for a token the node pool refuses."""
    from hivemind.client import Client
    from hivemind.client_certs import make_key_and_csr, worker_cert_paths, write_key_pair
    from hivemind.errors import NodePoolError
    from hivemind.proto import hivemind_pb2 as pb
    from hivemind.tls import ChannelSecurity
    from hivemind.tls import fingerprint as pinned_fingerprint

    token = parse_token(token_text)
    if token.expired():
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(token.expires_at))
        raise JoinError(
            f"the join token expired at {at}; ask for a new one (`hivemind join-token` on the "
            "node pool's host)"
        )
    home = layout(settings.home)
    config_file = home.root / CONFIG_FILE_NAME
    if config_file.exists():
        raise JoinError(
            f"{config_file} exists: this home is set up already; join with another "
            "HIVEMIND_HOME, or remove it first"
        )
    ca_pem = fetch_pinned_ca(token.dial_address, token.ca_fingerprint)
    # The key is made here and stays here: the node pool signs its request.
    key_pem, csr_pem = make_key_and_csr(node_id or socket.gethostname())
    with Client(token.dial_address, security=ChannelSecurity(ca_pem), timeout=30) as client:
        try:
            reply = client.call(
                client.workers_stub.Enroll,
                pb.EnrollRequest(
                    join_token=token_text.strip(),
                    node_id=node_id,
                    hostname=socket.gethostname(),
                    csr=csr_pem,
                ),
            )
        except NodePoolError as exc:
            raise JoinError(f"the node pool refused the join token: {exc}") from None
    # The bundle came over the channel verified by the pinned CA; it must start with that CA.
    bundle = ca_pem
    if reply.ca_bundle and pinned_fingerprint(reply.ca_bundle) == token.ca_fingerprint:
        bundle = reply.ca_bundle
    home.ensure()
    ca_file = home.worker_config / "ca.crt"
    ca_file.write_bytes(bundle)
    written = [ca_file]
    if reply.certificate:
        cert_file, key_file = worker_cert_paths(settings, reply.node_id)
        write_key_pair(cert_file, key_file, reply.certificate, key_pem)
        written += [cert_file, key_file]
    labels_file = _labels_file(settings, reply.node_id)
    labels_file.write_text(json.dumps({"labels": list(reply.labels)}) + "\n")
    written.append(labels_file)
    token_file = home.worker_token_file(reply.node_id)
    write_private(token_file, reply.worker_token + "\n")
    write_private(config_file, _config_lines(token.address, ca_file))
    return Joined(
        reply.node_id, tuple(reply.labels), token.address, [*written, token_file, config_file]
    )


def _labels_file(settings: Settings, node_id: str) -> Path:
    return layout(settings.home).worker_config / f"{node_id}.json"


def joined_labels(settings: Settings, node_id: str) -> tuple[str, ...]:
    """The labels the join gave worker ``node_id`` (none when it wrote none down)."""
    try:
        data = json.loads(_labels_file(settings, node_id).read_text())
        return tuple(str(label) for label in data["labels"])
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def joined_worker_spec(settings: Settings, joined: Joined) -> ServiceSpec:
    """How to start the worker of a joined host in the background (the pid supervisor)."""
    from hivemind.stack import child_environment, worker_spec_paths

    joined_settings = settings.replace(
        nodepool_address=joined.address,
        tls_ca_file=str(layout(settings.home).worker_config / "ca.crt"),
    )
    labels = [arg for label in joined.labels for arg in ("--label", label)]
    home = layout(settings.home)
    pidfile, console = worker_spec_paths(home, joined.node_id)
    registered = f"registered as {joined.node_id} with"

    def healthy() -> bool:
        # The worker says so in its log once the node pool took its registration.
        for path in (home.worker_log, console):
            try:
                if registered in path.read_text(errors="replace"):
                    return True
            except OSError:
                continue
        return False

    return ServiceSpec(
        name=f"worker {joined.node_id}",
        argv=[sys.executable, "-m", "hivemind", "worker", "--node-id", joined.node_id, *labels],
        log=console,
        pidfile=pidfile,
        health=healthy,
        env=child_environment(joined_settings),
    )


def start_joined(settings: Settings, joined: Joined) -> str:
    """Start the worker of a joined host: a systemd unit where systemd runs (it keeps the
    worker up across reboots and crashes), else the pid supervisor. How it runs, to read."""
    from hivemind.supervisor import start_service
    from recovery.systemd import (
        start_joined_worker,
        systemd_manages_services,
        write_joined_worker_units,
    )

    if systemd_manages_services():
        write_joined_worker_units(
            Path("/"), joined.node_id, joined.labels, layout(settings.home).root, getpass.getuser()
        )
        return start_joined_worker(joined.node_id, JOIN_START_TIMEOUT)
    started = start_service(joined_worker_spec(settings, joined), timeout=JOIN_START_TIMEOUT)
    how = "runs" if started.started else "was running already"
    return f"worker {joined.node_id} {how} (pid {started.pid}), log: {started.log}"


def join_and_start(
    settings: Settings, token_text: str, node_id: str = "", start: bool = True
) -> tuple[Joined, str]:
    """:func:`join_host`, then :func:`start_joined` (unless ``start`` is False): (what was
    joined, how the worker was started or "")."""
    joined = join_host(settings, token_text, node_id)
    return joined, start_joined(settings, joined) if start else ""


# -- the node pool's side --------------------------------------------------------------------


def join_address(settings: Settings, address: str = "") -> str:
    """Where a new host dials the node pool: ``address``, else the bind address, else this
    host's name (a wildcard bind)."""
    if address:
        return address
    host = settings.grpc_host
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"{host}:{settings.grpc_port}"


def issue_join_token(
    settings: Settings,
    ttl: float = DEFAULT_TTL,
    labels: tuple[str, ...] = (),
    node_id: str = "",
    address: str = "",
) -> str:
    """A join token for the node pool of this host, its grant filed in Redis."""
    import redis

    from hivemind import keys
    from hivemind.auth import load_secret
    from hivemind.tls import fingerprint, server_uses_tls, tls_files

    if not server_uses_tls(settings):
        raise JoinError(
            "a join needs TLS, and this node pool serves plaintext (GRPC_HOST is loopback or "
            'TLS = "off"): bind it to an address workers reach, with TLS on'
        )
    ca = tls_files(settings).ca_cert
    if not ca.is_file():
        raise JoinError(f"no CA at {ca} yet: start the node pool once (`hivemind up`)")
    dial = join_address(settings, address)
    # With mutual TLS a new host has no certificate: it enrols on the enrolment port.
    enroll = (
        f"{dial.rpartition(':')[0]}:{settings.effective_enroll_port}"
        if settings.require_client_cert
        else ""
    )
    token = new_token(dial, fingerprint(ca.read_bytes()), ttl, labels, node_id, enroll)
    client = redis_client.connect(settings)
    try:
        client.set(
            keys.join_key(token.secret_digest), Grant(labels, node_id).to_json(), px=int(ttl * 1000)
        )
    except redis.RedisError as exc:
        raise JoinError(f"cannot file the join token in Redis: {exc}") from None
    finally:
        client.close()
    return token.encode(load_secret(settings))


def redeem(client: Any, signing_secret: bytes, token_text: str, node_id: str = "") -> Grant:
    """Take the grant of a valid, unused, unexpired token: once (GETDEL). ``node_id`` is the
    id the new host asks for; a token issued for another id is refused before it is used."""
    from hivemind import keys

    token = verify_token(token_text, signing_secret)
    if token.node_id and node_id and node_id != token.node_id:
        raise JoinError(f"this join token is for worker {token.node_id}, not {node_id}")
    if token.expired():
        raise JoinError("the join token expired; ask for a new one")
    stored = client.getdel(keys.join_key(token.secret_digest))
    if stored is None:
        raise JoinError("the join token was used already (a token joins one host, once)")
    return Grant.from_json(stored)
