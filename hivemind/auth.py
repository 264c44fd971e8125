"""Passwords, signed tokens and the signing secret.

Passwords are hashed with scrypt (hashlib, no extra dependency). Tokens are
``base64url(json claims).base64url(HMAC-SHA256)``: small, stateless and verifiable by any
process that holds the secret. Claims: ``sub`` (username or node id), ``kind`` (``user`` or
``worker``), ``role``, ``exp`` (unix seconds).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.paths import layout

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
WORKER_TOKEN_TTL = 10 * 365 * 24 * 3600.0


class AuthError(HivemindError):
    """A token is missing, malformed, forged or expired."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(candidate.hex(), digest)


@dataclass(frozen=True)
class Identity:
    """Who is calling: a user (with a role) or a worker (with its node id)."""

    subject: str
    kind: str  # "user" | "worker"
    role: str  # "admin" | "user" | "worker"
    expires_at: float

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and self.role == "admin"

    @property
    def is_worker(self) -> bool:
        return self.kind == "worker"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise AuthError("the token-signing secret is shorter than 16 bytes")
        self._secret = secret

    def issue(self, subject: str, kind: str, role: str, ttl: float) -> tuple[str, float]:
        expires_at = time.time() + ttl
        claims = {"sub": subject, "kind": kind, "role": role, "exp": int(expires_at)}
        body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._sign(body)}", float(int(expires_at))

    def verify(self, token: str, now: float | None = None) -> Identity:
        body, _, signature = token.partition(".")
        if not body or not signature:
            raise AuthError("malformed token")
        if not hmac.compare_digest(self._sign(body), signature):
            raise AuthError("invalid token signature")
        try:
            claims = json.loads(_unb64(body))
            identity = Identity(
                subject=str(claims["sub"]),
                kind=str(claims["kind"]),
                role=str(claims["role"]),
                expires_at=float(claims["exp"]),
            )
        except (ValueError, KeyError, TypeError):
            raise AuthError("malformed token") from None
        if identity.expires_at < (time.time() if now is None else now):
            raise AuthError("token expired; log in again")
        return identity

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())


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
    return TokenSigner(load_secret(settings))


def issue_worker_token(settings: Settings, node_id: str) -> str:
    """A token that lets a worker act as ``node_id`` and nothing else."""
    token, _ = signer_for(settings).issue(node_id, "worker", "worker", WORKER_TOKEN_TTL)
    return token
