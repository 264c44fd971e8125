"""The sqlite.* checks: header/mode/integrity parsers on captured output, and verdicts on real
users.db files put into each state (wrong mode, corrupt, old schema, no admin …)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import sqlite_utils

from doctor.context import Context
from doctor.engine import run_doctor
from doctor.fixes import apply_fixes, plan_fixes
from doctor.model import Status
from doctor.probes import sqlite_file as probe
from hivemind import userdb
from hivemind.config import Settings
from hivemind.paths import layout
from hivemind.userdb import UserStore

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"
SQLITE_CHECKS = ["sqlite.file", "sqlite.integrity", "sqlite.users"]


def users_db(settings: Settings) -> Path:
    return layout(settings.home).users_db


def make_db(settings: Settings, *users: tuple[str, str]) -> Path:
    """users.db as the node pool creates it, with (name, role) users."""
    store = UserStore(users_db(settings))
    try:
        for name, role in users:
            store.create_user(name, "password1", role=role)
    finally:
        store.close()
    return users_db(settings)


def statuses(settings: Settings) -> dict[str, Status]:
    report = run_doctor(settings, only=["sqlite"])
    return {result.id: result.status for result in report.results}


def finding(settings: Settings, check_id: str):  # type: ignore[no-untyped-def]
    return run_doctor(settings, only=[check_id]).result(check_id).finding


def corrupt_an_index_page(path: Path) -> None:
    """Scribble over the second half of a leaf page of a tasks index, as a bad disk would."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (page,) = conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'idx_tasks_owner_created_at' "
        "AND pagetype = 'leaf' LIMIT 1"
    ).fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    start = (page - 1) * page_size
    for i in range(start + page_size // 2, start + page_size - 8):
        data[i] = (data[i] + 7) % 256
    path.write_bytes(bytes(data))


def archive_some_tasks(path: Path, count: int) -> None:
    store = UserStore(path)
    try:
        store.archive_tasks(
            [
                ({"id": f"{i:016x}", "owner": "alice", "status": "SUCCEEDED"}, [])
                for i in range(count)
            ]
        )
    finally:
        store.close()


# -- parsers on captured output ----------------------------------------------------------------
def test_header_of_a_captured_users_db() -> None:
    header = probe.parse_header((FIXTURES / "sqlite_users_db_header.bin").read_bytes())
    assert header is not None
    assert header.user_version == userdb.SCHEMA_VERSION
    assert header.wal and header.page_size == 4096 and header.page_count > 0


def test_header_rejects_what_is_not_sqlite() -> None:
    real = (FIXTURES / "sqlite_users_db_header.bin").read_bytes()
    assert probe.parse_header(real[:50]) is None  # truncated
    assert probe.parse_header(b"PK\x03\x04" + real[4:]) is None  # a zip
    assert probe.parse_header(b"") is None


def test_integrity_replies_captured_from_sqlite() -> None:
    ok = json.loads((FIXTURES / "sqlite_integrity_ok.json").read_text())
    corrupt = json.loads((FIXTURES / "sqlite_integrity_corrupt.json").read_text())
    assert probe.integrity_problems(ok) == []
    problems = probe.integrity_problems(corrupt)
    assert "Extends off end of page" in problems[0]
    assert any("missing from index" in p for p in problems)


def test_mode_arithmetic() -> None:
    assert probe.safe_mode(0o100666) == 0o660
    assert probe.safe_mode(0o100664) == 0o660
    assert probe.safe_mode(0o100640) == 0o640
    assert probe.safe_mode(0o100444) == 0o640
    assert probe.describe_mode(0o100664) == "0664 (-rw-rw-r--)"
    assert probe.writable_by(0o100640, 1000, 1000, 1000, [])
    assert not probe.writable_by(0o100640, 1000, 1000, 1001, [1000])
    assert probe.writable_by(0o100660, 1000, 1000, 1001, [1000])
    assert probe.writable_by(0o100400, 1000, 1000, 0, [])


# -- verdicts on real files --------------------------------------------------------------------
def test_a_fresh_users_db_with_an_admin_is_healthy(settings: Settings) -> None:
    make_db(settings, ("alice", "admin"), ("bob", "user"))
    assert statuses(settings) == {check: Status.OK for check in SQLITE_CHECKS}
    users = finding(settings, "sqlite.users")
    assert users.evidence == {"users": 2, "admins": 1, "enabled_admins": 1}
    # No WAL files were left behind for a later node pool (running as another user) to trip on.
    assert sorted(p.name for p in users_db(settings).parent.glob("users.db*")) == ["users.db"]


def test_reads_what_a_running_node_pool_has_only_in_its_wal(settings: Settings) -> None:
    make_db(settings, ("alice", "admin"))
    writer = UserStore(users_db(settings))  # holds the database open, as the node pool does
    try:
        writer.create_user("bob", "password1")
        assert Path(f"{users_db(settings)}-wal").exists()
        assert finding(settings, "sqlite.users").evidence["users"] == 2
        assert finding(settings, "sqlite.integrity").status is Status.OK
    finally:
        writer.close()


def test_world_writable_db_warns_and_chmod_fix_rechecks_clean(settings: Settings) -> None:
    path = make_db(settings, ("alice", "admin"))
    os.chmod(path, 0o666)
    content = hashlib.sha256(path.read_bytes()).hexdigest()
    report = run_doctor(settings, only=["sqlite.file"])
    result = report.result("sqlite.file")
    assert result.status is Status.WARN
    assert "every user on this host" in result.finding.summary
    assert result.finding.evidence["mode"] == "0666 (-rw-rw-rw-)"
    assert result.finding.fix == f"chmod 0660 {path}"

    context = Context(settings)
    actions = plan_fixes(report, context)
    assert [a.command for a in actions] == [f"chmod 0660 {path}"]
    run = apply_fixes(report, actions, context)

    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert hashlib.sha256(path.read_bytes()).hexdigest() == content  # only the bits changed
    assert run.after["sqlite.file"].status is Status.OK


def test_missing_db_fails_where_a_node_pool_ran_and_is_skipped_elsewhere(
    settings: Settings,
) -> None:
    home = layout(settings.home)
    result = finding(settings, "sqlite.file")
    assert result.status is Status.SKIP  # a worker-only host has no users.db
    home.nodepool_log.write_text("node pool started\n")
    result = finding(settings, "sqlite.file")
    assert result.status is Status.FAIL and "missing" in result.summary
    # The doctor opened nothing read-write: it did not create the file it looked for.
    assert statuses(settings)["sqlite.integrity"] is Status.SKIP
    assert not home.users_db.exists()


def test_a_file_that_is_not_sqlite_fails(settings: Settings) -> None:
    path = users_db(settings)
    path.write_text("<html>not a database</html>\n" * 10)
    os.chmod(path, 0o666)
    report = run_doctor(settings, only=["sqlite.file"])
    result = report.result("sqlite.file").finding
    assert result.status is Status.FAIL
    assert "not an SQLite 3 database" in result.summary
    # A chmod would not make it a database: --fix leaves it for a human.
    assert plan_fixes(report, Context(settings)) == []


def test_a_corrupted_db_fails_integrity(settings: Settings) -> None:
    path = make_db(settings, ("alice", "admin"))
    archive_some_tasks(path, 300)
    corrupt_an_index_page(path)
    before = path.read_bytes()
    result = finding(settings, "sqlite.integrity")
    assert result.status is Status.FAIL
    assert "integrity_check found" in result.summary
    assert any("missing from index" in p for p in result.evidence["problems"])
    assert path.read_bytes() == before  # the doctor wrote nothing
    # The header is intact, so the file check alone would not have caught it.
    assert finding(settings, "sqlite.file").status is Status.OK


def test_a_dropped_table_fails(settings: Settings) -> None:
    path = make_db(settings, ("alice", "admin"))
    sqlite_utils.Database(path)["credit_transfers"].drop()
    result = finding(settings, "sqlite.integrity")
    assert result.status is Status.FAIL
    assert result.evidence["missing"] == ["table credit_transfers is missing"]


def test_pending_migration_warns_until_migrated(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_db(settings, ("alice", "admin"))

    def add_quota_column(db: sqlite_utils.Database) -> None:
        db.table("users").add_column("quota", int)

    # This HiveMind is one schema ahead of the file, as after an upgrade.
    monkeypatch.setattr(userdb, "MIGRATIONS", [*userdb.MIGRATIONS, add_quota_column])
    monkeypatch.setattr(userdb, "SCHEMA_VERSION", len(userdb.MIGRATIONS))
    result = finding(settings, "sqlite.integrity")
    assert result.status is Status.WARN
    assert result.fix == "hivemind db migrate"
    assert "1 migration(s) pending" in result.summary

    userdb.migrate(path)
    assert finding(settings, "sqlite.integrity").status is Status.OK


def test_a_db_from_a_newer_hivemind_fails(settings: Settings) -> None:
    path = make_db(settings, ("alice", "admin"))
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {userdb.SCHEMA_VERSION + 1}")
    conn.close()
    result = finding(settings, "sqlite.integrity")
    assert result.status is Status.FAIL and "newer than this HiveMind" in result.summary


def test_no_users_or_no_enabled_admin_warns(settings: Settings) -> None:
    make_db(settings)
    result = finding(settings, "sqlite.users")
    assert result.status is Status.WARN and "no users" in result.summary
    assert result.fix == "hivemind user add NAME --role admin"

    store = UserStore(users_db(settings))
    store.create_user("root", "password1", role="admin")
    store.create_user("bob", "password1")
    store.set_disabled("root")
    store.close()
    result = finding(settings, "sqlite.users")
    assert result.status is Status.WARN
    assert "all 1 admin(s) are disabled" in result.summary
