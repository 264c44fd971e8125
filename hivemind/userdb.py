"""``node_pool/users.db``: users, credits, token generations and the archive of finished tasks.

SQLite through sqlite-utils, in WAL mode. The schema is versioned with ``PRAGMA
user_version`` and moved forward by :func:`migrate` (``hivemind db migrate``), which does the
job of the guide's ``database_migration.py``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.db import NotFoundError

from hivemind import tuning
from hivemind.errors import HivemindError
from hivemind.passwords import hash_password, verify_password

ROLES = ("admin", "user")
_USER_COLUMNS = (
    "username",
    "password_hash",
    "role",
    "credits",
    "created_at",
    "disabled",
    "token_generation",
)
USERNAME_MAX = 64


class UserError(HivemindError):
    """A user operation was refused: unknown user, duplicate, bad role, no credits …"""


@dataclass(frozen=True)
class UserRecord:
    username: str
    role: str
    credits: int
    created_at: float
    disabled: bool
    #: Tokens issued before the last password change carry an older one and are refused.
    token_generation: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UserRecord:
        return cls(
            username=row["username"],
            role=row["role"],
            credits=int(row["credits"]),
            created_at=float(row["created_at"]),
            disabled=bool(row["disabled"]),
            token_generation=int(row.get("token_generation") or 0),
        )


def _v1(db: sqlite_utils.Database) -> None:
    db["users"].create(
        {
            "username": str,
            "password_hash": str,
            "role": str,
            "credits": int,
            "created_at": float,
            "disabled": int,
        },
        pk="username",
    )
    db["tasks"].create(
        {
            "id": str,
            "owner": str,
            "name": str,
            "kind": str,
            "status": str,
            "attempt": int,
            "worker": str,
            "error_message": str,
            "created_at": float,
            "start_time": float,
            "finished_at": float,
            "record": str,  # the whole Redis hash, as JSON
            "history": str,  # JSON list of attempt events
            "archived_at": float,
        },
        pk="id",
    )
    db["tasks"].create_index(["owner", "created_at"])
    db["tasks"].create_index(["status", "finished_at"])
    db["credit_transfers"].create(
        {"id": int, "from_user": str, "to_user": str, "amount": int, "at": float}, pk="id"
    )


def _v2(db: sqlite_utils.Database) -> None:
    """Token generations: a password change, or revoking a worker's tokens, moves one on."""
    db["users"].add_column("token_generation", int, not_null_default=0)
    db["worker_tokens"].create(
        {"node_id": str, "generation": int, "revoked_at": float}, pk="node_id"
    )


#: Migrations in order; index + 1 is the schema version each one produces.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def schema_version(path: Path) -> int:
    conn = _connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def migrate(path: Path) -> tuple[int, int]:
    """Bring ``path`` to :data:`SCHEMA_VERSION`; returns (version before, version after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    conn = _connect(path)
    try:
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        before = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if before > SCHEMA_VERSION:
            raise UserError(
                f"{path} has schema version {before}, newer than this HiveMind "
                f"({SCHEMA_VERSION}); upgrade HiveMind instead of migrating"
            )
        for version in range(before, SCHEMA_VERSION):
            with db.atomic():
                MIGRATIONS[version](db)
                conn.execute(f"PRAGMA user_version = {version + 1}")
    finally:
        conn.close()
    if created:
        # Users' password hashes live here: owner read/write, group read (the guide's 664
        # is for a shared service group; we keep the world out).
        os.chmod(path, 0o640)
    return before, SCHEMA_VERSION


class UserStore:
    """Thread-safe access to users.db for one process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        migrate(path)
        self._conn = _connect(path)
        self._db = sqlite_utils.Database(self._conn)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _atomic(self) -> Iterator[sqlite_utils.Database]:
        with self._lock, self._db.atomic():
            yield self._db

    # -- users -------------------------------------------------------------------------------
    def create_user(
        self, username: str, password: str, role: str = "user", credits: int = 0
    ) -> UserRecord:
        _check_username(username)
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if len(password) < 8:
            raise UserError("a password needs at least 8 characters")
        if credits < 0:
            raise UserError("credits cannot be negative")
        row = {
            "username": username,
            "password_hash": hash_password(password),
            "role": role,
            "credits": credits,
            "created_at": time.time(),
            "disabled": 0,
            "token_generation": 0,
        }
        with self._atomic() as db:
            if self._find(db, username) is not None:
                raise UserError(f"user {username!r} already exists")
            db["users"].insert(row)
        return UserRecord.from_row(row)

    def get(self, username: str) -> UserRecord:
        with self._lock:
            row = self._find(self._db, username)
        if row is None:
            raise UserError(f"no user {username!r}")
        return UserRecord.from_row(row)

    def authenticate(self, username: str, password: str) -> UserRecord | None:
        """The user if the password is right and the account is enabled, else None."""
        with self._lock:
            row = self._find(self._db, username)
        if row is None:
            # Spend the same time as a real check, so timing does not reveal usernames.
            verify_password(password, _dummy_hash())
            return None
        if not verify_password(password, row["password_hash"]) or row["disabled"]:
            return None
        return UserRecord.from_row(row)

    def list_users(self) -> list[UserRecord]:
        with self._lock:
            rows = list(self._db["users"].rows_where(order_by="username"))
        return [UserRecord.from_row(r) for r in rows]

    def count(self) -> int:
        with self._lock:
            return self._db["users"].count

    def set_disabled(self, username: str, disabled: bool = True) -> UserRecord:
        with self._atomic() as db:
            self._require(db, username)
            db["users"].update(username, {"disabled": int(disabled)})
        return self.get(username)

    def set_password(self, username: str, password: str) -> UserRecord:
        """Set the password and revoke every token issued to the user so far."""
        if len(password) < 8:
            raise UserError("a password needs at least 8 characters")
        hashed = hash_password(password)
        with self._atomic() as db:
            self._require(db, username)
            db.conn.execute(
                "UPDATE users SET password_hash = ?, token_generation = token_generation + 1 "
                "WHERE username = ?",
                (hashed, username),
            )
        return self.get(username)

    # -- worker tokens -----------------------------------------------------------------------
    def worker_token_generation(self, node_id: str) -> int:
        """The generation a new token for ``node_id`` gets (older ones are revoked)."""
        with self._lock:
            row = self._db.conn.execute(
                "SELECT generation FROM worker_tokens WHERE node_id = ?", (node_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    def revoke_worker_tokens(self, node_id: str) -> int:
        """Revoke every token issued to ``node_id`` so far; returns the new generation."""
        if not node_id or len(node_id) > 128:
            raise UserError("a node id needs 1 to 128 characters")
        with self._atomic() as db:
            db.conn.execute(
                "INSERT INTO worker_tokens (node_id, generation, revoked_at) VALUES (?, 1, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET generation = generation + 1, "
                "revoked_at = excluded.revoked_at",
                (node_id, time.time()),
            )
        return self.worker_token_generation(node_id)

    def add_credits(self, username: str, amount: int) -> UserRecord:
        with self._atomic() as db:
            row = self._require(db, username)
            if row["credits"] + amount < 0:
                raise UserError(f"{username} has {row['credits']} credits, not {-amount}")
            db["users"].update(username, {"credits": row["credits"] + amount})
        return self.get(username)

    def transfer(self, from_user: str, to_user: str, amount: int) -> UserRecord:
        if amount <= 0:
            raise UserError("a transfer must move a positive number of credits")
        if from_user == to_user:
            raise UserError("cannot transfer credits to yourself")
        with self._atomic() as db:
            sender = self._require(db, from_user)
            receiver = self._require(db, to_user)
            if sender["credits"] < amount:
                raise UserError(f"you have {sender['credits']} credits, not {amount}")
            db["users"].update(from_user, {"credits": sender["credits"] - amount})
            db["users"].update(to_user, {"credits": receiver["credits"] + amount})
            db["credit_transfers"].insert(
                {"from_user": from_user, "to_user": to_user, "amount": amount, "at": time.time()}
            )
        return self.get(from_user)

    # -- the task archive --------------------------------------------------------------------
    def archive_tasks(self, tasks: list[tuple[dict[str, str], list[str]]]) -> None:
        """Upsert finished tasks in one transaction: (record, history events as JSON text)."""
        now = time.time()
        rows = [
            {
                "id": record["id"],
                "owner": record.get("owner", ""),
                "name": record.get("name", ""),
                "kind": record.get("kind", ""),
                "status": record.get("status", ""),
                "attempt": int(record.get("attempt") or 0),
                "worker": record.get("worker", ""),
                "error_message": record.get("error_message", ""),
                "created_at": float(record.get("created_at") or 0),
                "start_time": float(record.get("start_time") or 0),
                "finished_at": float(record.get("finished_at") or 0),
                "record": json.dumps(record, sort_keys=True),
                "history": "[" + ",".join(history) + "]",
                "archived_at": now,
            }
            for record, history in tasks
        ]
        if rows:
            columns = list(rows[0])
            sql = (
                f"INSERT OR REPLACE INTO tasks ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})"
            )
            with self._atomic() as db:
                db.conn.executemany(sql, [tuple(row[c] for c in columns) for row in rows])

    def archived_task(self, task_id: str) -> tuple[dict[str, str], list[dict[str, Any]]] | None:
        with self._lock:
            try:
                row = self._db["tasks"].get(task_id)
            except NotFoundError:
                return None
        return json.loads(row["record"]), json.loads(row["history"])

    def archived_ids_with_prefix(self, prefix: str, owner: str | None, limit: int) -> list[str]:
        """Ids of archived tasks (of ``owner``, or anyone's) that start with ``prefix``."""
        # A range on the primary key, not LIKE: the index serves it, and '_' is no wildcard.
        # Ids are ASCII letters, digits, '_' and '-', all below DEL.
        clauses, params = ["id >= ? and id < ?"], [prefix, prefix + "\x7f"]
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        with self._lock:
            rows = self._db["tasks"].rows_where(
                " and ".join(clauses), params, select="id", limit=limit
            )
            return [row["id"] for row in rows]

    def archived_tasks(
        self, owner: str | None, status: str | None, limit: int
    ) -> list[dict[str, str]]:
        clauses, params = [], []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if status:
            clauses.append("status = ?")
            params.append(status)
        with self._lock:
            rows = self._db["tasks"].rows_where(
                " and ".join(clauses) or None,
                params,
                order_by="created_at desc",
                limit=limit,
            )
            return [json.loads(r["record"]) for r in rows]

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _find(db: sqlite_utils.Database, username: str) -> dict[str, Any] | None:
        # Plain SQL: this runs on every authenticated call, and Table.get() introspects the
        # schema each time.
        cursor = db.conn.execute(
            f"SELECT {', '.join(_USER_COLUMNS)} FROM users WHERE username = ?", (username,)
        )
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip(_USER_COLUMNS, row, strict=True))

    def _require(self, db: sqlite_utils.Database, username: str) -> dict[str, Any]:
        row = self._find(db, username)
        if row is None:
            raise UserError(f"no user {username!r}")
        return row


class TokenGenerations:
    """The current token generation of users and workers, as a node pool's signer checks it.

    Read from users.db on a connection of its own (read-only, so it never creates the file)
    and trusted for ``USER_TOKEN_RECHECK`` / ``WORKER_TOKEN_RECHECK`` seconds: a change made by
    another process (`hivemind user passwd`, `hivemind worker-token --revoke`) shows within
    that time; one made through this process shows at once after :meth:`forget`.

    Users are read one at a time. Workers are read as one table, once per recheck period:
    thousands of workers, each beating about once per period, would otherwise make one query
    per heartbeat.
    """

    _USER_QUERY = "SELECT token_generation FROM users WHERE username = ?"
    _WORKERS_QUERY = "SELECT node_id, generation FROM worker_tokens"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._users: dict[str, tuple[float, int]] = {}  # username -> (monotonic read, gen)
        self._workers: dict[str, int] = {}
        self._workers_read = -math.inf  # monotonic time of the last read of the table

    def current(self, kind: str, subject: str) -> tuple[int, float]:
        """``subject``'s generation, and the wall-clock time until which it is trusted."""
        now = time.monotonic()
        if kind == "worker":
            recheck = tuning.WORKER_TOKEN_RECHECK
            if now - self._workers_read >= recheck:
                self._read_workers(now)
            read_at, generation = self._workers_read, self._workers.get(subject, 0)
        else:
            recheck = tuning.USER_TOKEN_RECHECK
            seen = self._users.get(subject)
            if seen is None or now - seen[0] >= recheck:
                seen = (now, self._read_user(subject))
                if len(self._users) >= tuning.VERIFIED_TOKENS_MAX:
                    self._users.clear()
                self._users[subject] = seen
            read_at, generation = seen
        return generation, time.time() + recheck - (now - read_at)

    def forget(self, kind: str, subject: str) -> None:
        if kind == "worker":
            self._workers_read = -math.inf
        else:
            self._users.pop(subject, None)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _query(self, sql: str, args: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = _connect_readonly(self.path)
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError:
                return []  # no users.db, or one from before generations: nothing was revoked

    def _read_user(self, username: str) -> int:
        rows = self._query(self._USER_QUERY, (username,))
        return int(rows[0][0] or 0) if rows else 0

    def _read_workers(self, now: float) -> None:
        rows = self._query(self._WORKERS_QUERY)
        self._workers = {str(node_id): int(gen or 0) for node_id, gen in rows}
        self._workers_read = now


def worker_token_generation(path: Path, node_id: str) -> int:
    """The generation a new token for ``node_id`` gets, from ``path`` without creating it."""
    reader = TokenGenerations(path)
    try:
        return reader.current("worker", node_id)[0]
    finally:
        reader.close()


def _connect_readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        timeout=30,
        check_same_thread=False,
        isolation_level=None,
    )
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def _check_username(username: str) -> None:
    if not username or len(username) > USERNAME_MAX:
        raise UserError(f"a username needs 1 to {USERNAME_MAX} characters")
    if not all(c.isalnum() or c in "-_." for c in username):
        raise UserError(f"username {username!r} may hold only letters, digits, '-', '_' and '.'")


@functools.cache
def _dummy_hash() -> str:
    return hash_password("not-a-real-password")
