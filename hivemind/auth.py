"""Passwords, signed tokens and the signing secret.

Passwords are hashed with scrypt (hashlib, no extra dependency). Tokens are
``base64url(json claims).base64url(HMAC-SHA256)``: small, stateless and verifiable by any
process that holds the secret. Claims: ``sub`` (username or node id), ``kind`` (``user``,
``worker`` or ``service``), ``role``, ``exp`` (unix seconds) and ``gen``: the token generation
of the user or worker when it was issued. A password change moves a user's generation on, and
`hivemind worker-token NODE --revoke` a worker's; a signer given :class:`Generations` refuses
tokens of an older generation (tokens from before generations count as generation 0).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.paths import layout
from hivemind.userdb import TokenGenerations, worker_token_generation

#: gRPC metadata with which the master tells the node pool its own client's address; it is
#: honoured only next to the master's service token (FORWARDER), else the peer's counts.
FORWARDED_FOR_METADATA = "x-hivemind-forwarded-for"
FORWARDER_METADATA = "x-hivemind-forwarder"

#: Why a token of an older generation is refused, by the token's kind.
REVOKED = {
    "user": "this token was revoked by a password change; log in again",
    "worker": "the tokens of worker {subject!r} were revoked; issue it a new one "
    "(`hivemind worker-token {subject}` on the node pool's host)",
}


class AuthError(HivemindError):
    """A token is missing, malformed, forged or expired."""


@dataclass(frozen=True)
class Identity:
    """Who is calling: a user (with a role), a worker (with its node id) or the master.

    ``expires_at`` is when the identity must be verified again: the token's expiry, or sooner
    when the signer checks revocations (then it is when its knowledge of them gets stale), so
    that a cache of verified tokens sees a revocation in time.
    """

    subject: str
    kind: str  # "user" | "worker" | "service"
    role: str  # "admin" | "user" | "worker" | "service"
    expires_at: float

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and self.role == "admin"

    @property
    def is_worker(self) -> bool:
        return self.kind == "worker"


def b64_unpadded(data: bytes) -> str:
    """URL-safe base64 without ``=`` padding, as signed tokens (ours and JWTs) spell it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_unpadded_decode(text: str) -> bytes:
    """The bytes of :func:`b64_unpadded` text; ``binascii.Error`` when it is not base64."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Generations(Protocol):
    """Where a signer learns the current token generation of a user or a worker."""

    def current(self, kind: str, subject: str) -> tuple[int, float]:
        """(generation, unix time until which that answer may be trusted)."""
        ...

    def forget(self, kind: str, subject: str) -> None:
        """Read it afresh next time (it just changed)."""
        ...


class TokenSigner:
    def __init__(self, secret: bytes, generations: Generations | None = None) -> None:
        if len(secret) < 16:
            raise AuthError("the token-signing secret is shorter than 16 bytes")
        self._secret = secret
        self.generations = generations

    def issue(
        self, subject: str, kind: str, role: str, ttl: float, generation: int = 0
    ) -> tuple[str, float]:
        expires_at = time.time() + ttl
        claims = {
            "sub": subject,
            "kind": kind,
            "role": role,
            "exp": int(expires_at),
            "gen": int(generation),
        }
        body = b64_unpadded(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._sign(body)}", float(int(expires_at))

    def verify(self, token: str, now: float | None = None) -> Identity:
        body, _, signature = token.partition(".")
        if not body or not signature:
            raise AuthError("malformed token")
        if not hmac.compare_digest(self._sign(body), signature):
            raise AuthError("invalid token signature")
        try:
            claims = json.loads(b64_unpadded_decode(body))
            identity = Identity(
                subject=str(claims["sub"]),
                kind=str(claims["kind"]),
                role=str(claims["role"]),
                expires_at=float(claims["exp"]),
            )
            generation = int(claims.get("gen", 0))
        except (ValueError, KeyError, TypeError):
            raise AuthError("malformed token") from None
        if identity.expires_at < (time.time() if now is None else now):
            raise AuthError("token expired; log in again")
        if self.generations is not None and identity.kind in REVOKED:
            current, fresh_until = self.generations.current(identity.kind, identity.subject)
            if generation < current:
                raise AuthError(REVOKED[identity.kind].format(subject=identity.subject))
            identity = replace(identity, expires_at=min(identity.expires_at, fresh_until))
        return identity

    def _sign(self, body: str) -> str:
        return b64_unpadded(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())


def load_secret(settings: Settings, create: bool = True) -> bytes:
    """SECRET_KEY from the settings, else ``node_pool/secret.key`` (generated once, mode 0600)."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path: Path = layout(settings.home).secret_key_file
    if path.exists():
        return path.read_bytes().strip()
    if not create:
        raise AuthError(f"no SECRET_KEY is set and {path} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    # O_EXCL: two processes racing to create it must not end up with different secrets.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret + b"\n")
    return secret


def signer_for(settings: Settings) -> TokenSigner:
    """The signer of this host's secret; it refuses revoked tokens (see ``users.db``)."""
    return TokenSigner(load_secret(settings), TokenGenerations(layout(settings.home).users_db))


def issue_worker_token(
    settings: Settings, node_id: str, ttl: float | None = None, generation: int | None = None
) -> str:
    """A token that lets a worker act as ``node_id`` and nothing else, for ``ttl`` seconds
    (WORKER_TOKEN_TTL by default), of the worker's current generation in ``users.db`` (so
    that it outlives the tokens revoked before it) unless ``generation`` is given."""
    ttl = settings.worker_token_ttl if ttl is None else ttl
    if not ttl > 0:
        raise AuthError(f"a worker token's lifetime must be positive, not {ttl:g} s")
    if generation is None:
        generation = worker_token_generation(layout(settings.home).users_db, node_id)
    token, _ = signer_for(settings).issue(node_id, "worker", "worker", ttl, generation)
    return token
