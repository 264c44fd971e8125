"""Passwords, tokens and users.db."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest
import sqlite_utils

from hivemind import tuning
from hivemind.auth import AuthError, TokenSigner, load_secret
from hivemind.config import load_settings
from hivemind.passwords import hash_password, verify_password
from hivemind.userdb import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TokenGenerations,
    UserError,
    UserStore,
    migrate,
    schema_version,
    worker_token_generation,
)
from tests.helpers import wait_until


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


def test_migration_gives_an_existing_db_token_generations(tmp_path: Path) -> None:
    # A users.db of schema 1, as HiveMind wrote it before token generations.
    db = tmp_path / "users.db"
    conn = sqlite3.connect(db)
    MIGRATIONS[0](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO users VALUES ('alice', ?, 'user', 5, 1.0, 0)", (hash_password("password1"),)
    )
    conn.commit()
    conn.close()
    assert migrate(db) == (1, SCHEMA_VERSION)
    store = UserStore(db)
    assert store.get("alice").token_generation == 0 and store.get("alice").credits == 5
    assert store.authenticate("alice", "password1") is not None
    assert store.set_password("alice", "password2").token_generation == 1
    assert store.worker_token_generation("w1") == 0
    assert store.revoke_worker_tokens("w1") == 1 and store.revoke_worker_tokens("w1") == 2
    assert store.worker_token_generation("w1") == 2
    store.close()
    assert worker_token_generation(db, "w1") == 2
    assert worker_token_generation(tmp_path / "missing.db", "w1") == 0
    assert not (tmp_path / "missing.db").exists()  # reading never creates it


def test_worker_generations_are_read_as_one_table_once_per_recheck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thousands of workers beat about once per recheck period: one read serves them all.
    monkeypatch.setattr(tuning, "WORKER_TOKEN_RECHECK", 0.5)
    store = UserStore(tmp_path / "users.db")
    for node_id in ("w1", "w2"):
        store.revoke_worker_tokens(node_id)
    generations = TokenGenerations(store.path)
    assert generations.current("worker", "w1")[0] == 1
    store.revoke_worker_tokens("w2")  # by another connection, as `hivemind worker-token` does
    second, second_until = generations.current("worker", "w2")
    assert second == 1  # read with w1's, before the revoke
    assert second_until <= time.time() + 0.5
    assert generations.current("worker", "w3")[0] == 0  # never issued: nothing revoked
    assert wait_until(lambda: generations.current("worker", "w2")[0] == 2, timeout=3)
    store.revoke_worker_tokens("w1")
    generations.forget("worker", "w1")  # a revoke through this node pool shows at once
    assert generations.current("worker", "w1")[0] == 2
    generations.close()
    store.close()


def test_a_signer_with_generations_refuses_older_tokens(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.db")
    store.create_user("alice", "password1")
    generations = TokenGenerations(store.path)
    signer = TokenSigner(b"s" * 32, generations)
    old, _ = signer.issue("alice", "user", "user", ttl=3600)
    identity = signer.verify(old)
    # Trusted no longer than the generation it was checked against.
    assert identity.expires_at <= time.time() + tuning.USER_TOKEN_RECHECK
    store.set_password("alice", "password2")
    generations.forget("user", "alice")
    with pytest.raises(AuthError, match="revoked by a password change"):
        signer.verify(old)
    new, _ = signer.issue("alice", "user", "user", ttl=3600, generation=1)
    assert signer.verify(new).subject == "alice"
    store.revoke_worker_tokens("w1")
    worker, _ = signer.issue("w1", "worker", "worker", ttl=3600)
    with pytest.raises(AuthError, match="tokens of worker 'w1' were revoked"):
        signer.verify(worker)
    service, _ = signer.issue("master", "service", "service", ttl=60)
    assert signer.verify(service).kind == "service"  # no generation to check
    generations.close()
    store.close()


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.2:51234", "127.0.0.2"),
        ("ipv6:[::1]:51234", "::1"),
        ("ipv6:%5B::1%5D:51234", "::1"),
        ("unix:/tmp/x.sock", "unix"),
        ("", "unknown"),
    ],
)
def test_peer_addresses(peer: str, address: str) -> None:
    from hivemind.nodepool.users_service import peer_address

    assert peer_address(peer) == address
