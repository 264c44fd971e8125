"""Passwords, tokens and users.db."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest

from hivemind.auth import AuthError, TokenSigner, hash_password, load_secret, verify_password
from hivemind.config import load_settings
from hivemind.userdb import SCHEMA_VERSION, UserError, UserStore, migrate, schema_version


def test_password_hash_is_scrypt_and_never_the_password() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("wrong horse", stored)


def test_tokens_are_signed_and_expire() -> None:
    signer = TokenSigner(b"s" * 32)
    token, _ = signer.issue("alice", "user", "user", ttl=60)
    assert signer.verify(token).subject == "alice"
    with pytest.raises(AuthError, match="signature"):
        TokenSigner(b"t" * 32).verify(token)
    body, sig = token.split(".")
    with pytest.raises(AuthError):
        signer.verify(body[:-2] + "AA." + sig)
    expired, _ = signer.issue("alice", "user", "user", ttl=-1)
    with pytest.raises(AuthError, match="expired"):
        signer.verify(expired)


def test_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = load_settings(environ={}, home=tmp_path)
    first = load_secret(settings)
    path = tmp_path / "node_pool" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(settings) == first
    assert load_secret(settings.replace(secret_key="x" * 32)) == b"x" * 32


def test_users_db_has_the_guides_table(tmp_path: Path) -> None:
    db = tmp_path / "users.db"
    store = UserStore(db)
    store.create_user("alice", "password1", "admin", credits=10)
    store.create_user("bob", "password2")
    with pytest.raises(UserError, match="already exists"):
        store.create_user("bob", "password2")
    assert store.authenticate("alice", "password1") is not None
    assert store.authenticate("alice", "nope") is None
    store.set_disabled("bob")
    assert store.authenticate("bob", "password2") is None
    assert store.transfer("alice", "bob", 4).credits == 6
    with pytest.raises(UserError, match="you have 6 credits"):
        store.transfer("alice", "bob", 7)
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 2
    columns = {r[1] for r in conn.execute("PRAGMA table_info(users)")}
    assert {"username", "password_hash", "role", "credits", "created_at", "disabled"} <= columns
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    hashes = [r[0] for r in conn.execute("SELECT password_hash FROM users")]
    assert all("password" not in h for h in hashes)


def test_migrate_is_idempotent_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "users.db"
    assert migrate(db) == (0, SCHEMA_VERSION)
    assert migrate(db) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert schema_version(db) == SCHEMA_VERSION
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(UserError, match="newer than this HiveMind"):
        migrate(db)


def test_archive_survives_in_sqlite(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.db")
    record = {
        "id": "a" * 16,
        "owner": "alice",
        "status": "SUCCEEDED",
        "attempt": "2",
        "created_at": str(time.time()),
    }
    store.archive_tasks([(record, ['{"event": "leased", "attempt": 1}'])])
    got, history = store.archived_task("a" * 16)  # type: ignore[misc]
    assert got["status"] == "SUCCEEDED" and history[0]["event"] == "leased"
    assert [r["id"] for r in store.archived_tasks("alice", "SUCCEEDED", 10)] == ["a" * 16]
    assert store.archived_tasks("bob", None, 10) == []
