"""Judging a token-signing secret without ever showing it: fingerprints, weakness, and the
SECRET_KEY a config file sets. Pure functions."""

from __future__ import annotations

import hashlib
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: TokenSigner refuses anything shorter, so the node pool would not even start.
MIN_SECRET_BYTES = 16
#: Values that tutorials, templates and the guide's style of examples put in configs.
WELL_KNOWN_SECRETS = frozenset(
    {
        "secret",
        "secret-key",
        "secret_key",
        "secretkey",
        "your-secret-key",
        "your_secret_key",
        "your-secret-key-here",
        "change-me",
        "change_me",
        "changeme",
        "please-change-me",
        "default",
        "hivemind",
        "hivemind-secret",
        "hivemind_secret",
        "password",
        "your_password",
        "supersecret",
        "super-secret-key",
        "mysecret",
        "dev",
        "development",
        "test",
        "admin",
    }
)


def fingerprint(secret: bytes) -> str:
    """First 8 hex digits of its SHA-256: enough to tell two secrets apart, useless to forge."""
    return hashlib.sha256(secret).hexdigest()[:8]


def weakness(secret: bytes) -> str | None:
    """Why ``secret`` must not sign tokens, or None."""
    text = secret.decode(errors="replace").strip()
    if not text:
        return "it is empty"
    if text.lower() in WELL_KNOWN_SECRETS:
        return "it is a well-known default value"
    if len(secret) < MIN_SECRET_BYTES:
        return f"it is {len(secret)} bytes, under the {MIN_SECRET_BYTES} the node pool requires"
    if len(set(text)) < 4:
        return "it repeats one or two characters"
    return None


def config_setting(text: str, name: str) -> str | None:
    """The value a ``hivemind.toml`` gives setting ``name`` (names are case-insensitive),
    None when it sets none or is not valid TOML (the config check says so; here it sets
    nothing we can compare)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    for key, value in data.items():
        if key.lower() == name.lower() and isinstance(value, str):
            return value
    return None
