"""``node_pool/users.db``: the file, its integrity and schema, and its users.

The database is only ever opened read-only (``mode=ro`` URI), so the doctor never creates it,
never takes a write lock and never changes it; the one fix here changes permission bits.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil
import sqlite_utils

from doctor.context import Context, Unavailable
from doctor.fixes import Action, fixer
from doctor.model import Finding, Status
from doctor.probes import sqlite_file as probe
from doctor.registry import check
from hivemind import userdb
from hivemind.supervisor import running_pid

#: Above this size integrity_check reads too long for a doctor run; quick_check skips the
#: index cross-checks and stays fast.
QUICK_CHECK_ABOVE = 64 * 1024**2
#: Problem rows an integrity check returns at most.
INTEGRITY_ROWS = 20
ADMIN_ROLE = "admin"


def open_readonly(path: Path, timeout: float) -> sqlite3.Connection:
    """A read-only connection that can neither create ``path`` nor write to it.

    Even a ``mode=ro`` reader of a WAL database creates the -wal and -shm files when they are
    missing, owned by whoever runs the doctor (root, say), which then locks the node pool out.
    They are missing only when no process has the database open, so nothing is in a WAL
    then: the file is read as ``immutable``, which creates nothing.
    """
    live_wal = Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
    uri = f"file:{quote(str(path))}?mode=ro" + ("" if live_wal else "&immutable=1")
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return conn


def related_files(db: Path) -> list[Path]:
    """The database and the WAL files beside it, which hold the same data."""
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


@dataclass(frozen=True)
class ServiceUser:
    uid: int
    gids: tuple[int, ...]
    #: Where we learnt it: the running node pool, or this process when none runs.
    source: str

    @property
    def name(self) -> str:
        return _user_name(self.uid)


def service_user(ctx: Context) -> ServiceUser:
    """The user the node pool runs as (it writes users.db), else the one running the doctor."""
    pid = running_pid(ctx.home.run / "nodepool.pid")
    if pid is not None:
        try:
            process = psutil.Process(pid)
            uids, gids = process.uids(), process.gids()
            return ServiceUser(uids.effective, (gids.effective, gids.real), f"node pool pid {pid}")
        except psutil.Error:  # gone or unreadable in between: fall back to ourselves
            pass
    return ServiceUser(os.geteuid(), (*os.getgroups(), os.getegid()), "this process")


def nodepool_traces(ctx: Context) -> list[str]:
    """Signs that a node pool lives on this host (a worker-only host has none of them)."""
    home = ctx.home
    candidates = (home.run / "nodepool.pid", home.nodepool_log, home.secret_key_file)
    return [str(path) for path in candidates if path.exists()]


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _read_header(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(probe.HEADER_SIZE)
    except OSError as exc:
        raise Unavailable(f"cannot read {path}: {exc.strerror or exc}") from exc


def _missing(ctx: Context) -> Finding:
    path = ctx.home.users_db
    traces = nodepool_traces(ctx)
    if not traces:
        return Finding.skip(f"{path} does not exist and no node pool has run on this host")
    return Finding.fail(
        f"{path} is missing, but a node pool has run here",
        "restore node_pool/users.db from the newest backup, or create an empty one with "
        "`hivemind db migrate` (all users are then lost)",
        path=str(path),
        node_pool_traces=traces,
    )


@check(
    "sqlite.file",
    title="users.db exists, is SQLite 3, and has safe owner and mode",
    guide="5 數據問題 / 數據庫連接失敗: ls -la, file node_pool/users.db",
    fixable=True,
)
def users_db_file(ctx: Context) -> Finding:
    path = ctx.home.users_db
    if not path.exists():
        return _missing(ctx)
    info = path.stat()
    header = probe.parse_header(_read_header(path))
    evidence: dict[str, object] = {
        "path": str(path),
        "size": info.st_size,
        "owner": f"{_user_name(info.st_uid)}:{_group_name(info.st_gid)}",
        "mode": probe.describe_mode(info.st_mode),
    }
    if not stat.S_ISREG(info.st_mode):
        return Finding.fail(
            f"{path} is not a regular file", f"put the real users.db back at {path}", **evidence
        )
    if header is None:
        return Finding.fail(
            f"{path} is not an SQLite 3 database (its first bytes are not the SQLite header)",
            "restore node_pool/users.db from the newest backup",
            **evidence,
        )
    evidence["journal"] = "wal" if header.wal else "rollback"
    exposed = [
        f"{p.name} {probe.describe_mode(p.stat().st_mode)}"
        for p in related_files(path)
        if probe.world_readable(p.stat().st_mode) or probe.world_writable(p.stat().st_mode)
    ]
    user = service_user(ctx)
    evidence["service_user"] = f"{user.name} ({user.source})"
    writable = probe.writable_by(info.st_mode, info.st_uid, info.st_gid, user.uid, user.gids)
    problems = []
    if exposed:
        problems.append(
            f"readable or writable by every user on this host ({', '.join(exposed)}): it "
            "holds password hashes"
        )
    if not writable:
        problems.append(f"not writable by the service user {user.name}")
    if problems:
        target = probe.safe_mode(info.st_mode)
        fix = f"chmod {target:04o} {path}"
        if not writable and user.uid != info.st_uid:
            fix += f" && chown {user.name} {path}"
        return Finding.warn(f"{path.name} is " + "; ".join(problems), fix, **evidence)
    return Finding.ok(f"{path.name} is an SQLite 3 file, mode {evidence['mode']}", **evidence)


@fixer("sqlite.file")
def tighten_mode(ctx: Context, finding: Finding) -> list[Action]:
    """chmod users.db (and its WAL files) to owner rw, group as it was, world nothing; only
    when the file is a regular file we may chmod (ours, or we are root)."""
    if finding.status is not Status.WARN:
        return []  # missing or not SQLite: permission bits are not the problem
    path = ctx.home.users_db
    actions = []
    for target in related_files(path):
        info = target.lstat()
        if not stat.S_ISREG(info.st_mode) or (os.geteuid() not in (0, info.st_uid)):
            continue
        new_mode = probe.safe_mode(info.st_mode)
        if new_mode == stat.S_IMODE(info.st_mode):
            continue

        def apply(target: Path = target, new_mode: int = new_mode) -> str:
            os.chmod(target, new_mode)  # lstat above: a regular file, not a symlink
            return f"{target} is now {probe.describe_mode(target.stat().st_mode)}"

        actions.append(
            Action(
                "sqlite.file",
                f"chmod {target.name} {stat.S_IMODE(info.st_mode):04o} -> {new_mode:04o} "
                "(permission bits only, the content is untouched)",
                f"chmod {new_mode:04o} {target}",
                apply,
                touches=("security.secrets",),
            )
        )
    return actions


@functools.cache
def expected_schema(version: int) -> dict[str, frozenset[str]]:
    """Tables and their columns after the first ``version`` migrations, built in memory."""
    db = sqlite_utils.Database(memory=True)
    for migration in userdb.MIGRATIONS[:version]:
        migration(db)
    return {table.name: frozenset(table.columns_dict) for table in db.tables}


def actual_schema(conn: sqlite3.Connection) -> dict[str, frozenset[str]]:
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {
        table: frozenset(row[1] for row in conn.execute(f"PRAGMA table_info({quote_name(table)})"))
        for table in tables
    }


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def schema_gaps(
    expected: dict[str, frozenset[str]], actual: dict[str, frozenset[str]]
) -> list[str]:
    gaps = [f"table {t} is missing" for t in sorted(expected) if t not in actual]
    for table in sorted(set(expected) & set(actual)):
        gaps += [f"column {table}.{c} is missing" for c in sorted(expected[table] - actual[table])]
    return gaps


def _usable_db(ctx: Context) -> Path:
    """users.db's path once sqlite.file would not fail on it; else Unavailable (see there)."""
    path = ctx.home.users_db
    if not path.exists():
        raise Unavailable(f"{path} does not exist (see sqlite.file)")
    return path


@check(
    "sqlite.integrity",
    title="users.db is intact, with the expected tables and schema version",
    guide="5 數據問題 / 數據庫連接失敗: sqlite3 node_pool/users.db .tables",
)
def users_db_integrity(ctx: Context) -> Finding:
    path = _usable_db(ctx)
    size = path.stat().st_size
    pragma = "quick_check" if size > QUICK_CHECK_ABOVE else "integrity_check"
    restore = "restore node_pool/users.db from the newest verified backup (`hivemind backup`)"
    evidence: dict[str, object] = {"path": str(path), "size": size, "check": pragma}
    try:
        conn = open_readonly(path, ctx.probe_timeout)
    except sqlite3.Error as exc:
        return Finding.fail(f"SQLite cannot open {path.name}: {exc}", restore, **evidence)
    try:
        problems = probe.integrity_problems(
            conn.execute(f"PRAGMA {pragma}({INTEGRITY_ROWS})").fetchall()
        )
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        actual = actual_schema(conn)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise Unavailable(f"{path.name} stayed locked by a writer: {exc}") from exc
        return Finding.fail(f"{path.name} is unreadable: {exc}", restore, **evidence)
    except sqlite3.DatabaseError as exc:
        return Finding.fail(f"{path.name} is corrupt: {exc}", restore, **evidence)
    finally:
        conn.close()
    evidence.update(schema_version=version, expected_version=userdb.SCHEMA_VERSION)
    if problems:
        return Finding.fail(
            f"{pragma} found {len(problems)} problem(s) in {path.name}",
            restore,
            problems=problems,
            **evidence,
        )
    if version > userdb.SCHEMA_VERSION:
        return Finding.fail(
            f"{path.name} has schema version {version}, newer than this HiveMind's "
            f"{userdb.SCHEMA_VERSION}: the node pool refuses it",
            "upgrade HiveMind on this host to the version that wrote it",
            **evidence,
        )
    gaps = schema_gaps(expected_schema(version), actual)
    if gaps:
        return Finding.fail(
            f"{path.name} (schema {version}) lacks what its version promises: {gaps[0]}",
            f"{restore}, or `hivemind db migrate` on an empty copy",
            missing=gaps,
            **evidence,
        )
    if version < userdb.SCHEMA_VERSION:
        pending = userdb.SCHEMA_VERSION - version
        return Finding.warn(
            f"{path.name} is at schema {version}; {pending} migration(s) pending",
            "hivemind db migrate",
            **evidence,
        )
    return Finding.ok(
        f"{pragma} ok, schema {version}, tables {', '.join(sorted(actual))}", **evidence
    )


@check(
    "sqlite.users",
    title="users.db has users, and an enabled admin",
    guide="5 數據問題 / 數據庫連接失敗: SELECT count(*) FROM users",
)
def users_present(ctx: Context) -> Finding:
    path = _usable_db(ctx)
    try:
        conn = open_readonly(path, ctx.probe_timeout)
        try:
            total, admins, enabled_admins = conn.execute(
                "SELECT count(*), "
                "coalesce(sum(role = ?), 0), "
                "coalesce(sum(role = ? AND NOT disabled), 0) FROM users",
                (ADMIN_ROLE, ADMIN_ROLE),
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        reason = f"cannot count users in {path.name}: {exc} (see sqlite.integrity)"
        raise Unavailable(reason) from exc
    evidence = {"users": total, "admins": admins, "enabled_admins": enabled_admins}
    add_admin = "hivemind user add NAME --role admin"
    if total == 0:
        return Finding.warn("there are no users: nobody can log in", add_admin, **evidence)
    if enabled_admins == 0:
        summary = "no admin" if admins == 0 else f"all {admins} admin(s) are disabled"
        return Finding.warn(
            f"{total} user(s) but {summary}: nobody can manage users or see every task",
            f"{add_admin} (or `hivemind user disable NAME --enable` for a disabled admin)",
            **evidence,
        )
    return Finding.ok(f"{total} user(s), {enabled_admins} enabled admin(s)", **evidence)
