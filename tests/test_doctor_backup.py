"""backup.recent: the marker parser on a captured marker, and the verdict on a real backups
folder. The `.verified` marker is the contract with `hivemind backup verify`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from doctor.engine import run_doctor
from doctor.model import Finding, Status
from doctor.probes.backup_marker import BackupFile, newest, parse_marker
from hivemind.config import Settings
from hivemind.paths import layout
from recovery.verify import write_marker

FIXTURES = Path(__file__).parent / "fixtures" / "doctor"


def backup_finding(settings: Settings) -> Finding:
    return run_doctor(settings, only=["backup.recent"]).result("backup.recent").finding


def write_backup(settings: Settings, name: str, age_s: float = 60.0) -> Path:
    path = layout(settings.home).backups / name
    path.write_bytes(b"\x1f\x8b fake tar.gz")
    moment = time.time() - age_s
    os.utime(path, (moment, moment))
    return path


def mark_verified(archive: Path, at: float | None = None, ok: bool = True) -> None:
    marker = {"verified_at": at if at is not None else time.time(), "ok": ok}
    Path(f"{archive}.verified").write_text(json.dumps(marker))


def test_marker_parser_reads_the_captured_marker() -> None:
    found = parse_marker((FIXTURES / "backup_marker.json").read_text())
    assert found is not None and found.ok
    assert found.verified_at == 1795829400.0
    assert parse_marker('{"verified_at": 1795829400}') is not None
    assert parse_marker('{"verified_at": "2026-11-28T01:30:00"}') is None  # no zone
    assert parse_marker('{"ok": true}') is None
    assert parse_marker("garbage") is None
    bad = parse_marker('{"verified_at": 1, "ok": false}')
    assert bad is not None and not bad.ok


def test_newest_is_by_write_time() -> None:
    old, new = BackupFile("hivemind-backup-2.tar.gz", 10, 1), BackupFile("b", 20, 1)
    assert newest([old, new]) == new
    assert newest([]) is None


def test_no_backup_warns(settings: Settings) -> None:
    result = backup_finding(settings)
    assert result.status is Status.WARN and result.fix == "hivemind backup"


def test_a_recent_verified_backup_is_ok(settings: Settings) -> None:
    write_backup(settings, "hivemind-backup-20261120.tar.gz", age_s=9 * 24 * 3600)
    archive = write_backup(settings, "hivemind-backup-20261128.tar.gz", age_s=3600)
    mark_verified(archive)
    result = backup_finding(settings)
    assert result.status is Status.OK, result.summary
    assert result.evidence["newest"] == archive.name and result.evidence["backups"] == 2


def test_an_unverified_backup_warns_with_the_verify_command(settings: Settings) -> None:
    archive = write_backup(settings, "hivemind-backup-20261128.tar.gz")
    result = backup_finding(settings)
    assert result.status is Status.WARN
    assert result.summary == "the newest backup was never verified"
    assert result.fix == f"hivemind backup verify {archive}"


def test_an_old_backup_warns_even_if_verified(settings: Settings) -> None:
    archive = write_backup(settings, "hivemind-backup-20261101.tar.gz", age_s=30 * 3600)
    mark_verified(archive)
    result = backup_finding(settings)
    assert result.status is Status.WARN and "30 h old" in result.summary


def test_a_failed_or_outdated_verification_warns(settings: Settings) -> None:
    archive = write_backup(settings, "hivemind-backup-20261128.tar.gz", age_s=600)
    mark_verified(archive, ok=False)
    assert "found it bad" in backup_finding(settings).summary
    mark_verified(archive, at=time.time() - 3600)  # verified before it was last written
    assert "changed after it was verified" in backup_finding(settings).summary


def test_an_archive_verified_the_second_it_was_written_is_ok(settings: Settings) -> None:
    # The marker `hivemind backup verify` writes, right after the archive: its time must not
    # read as earlier than the archive's mtime (a time cut to the second did, most runs).
    archive = write_backup(settings, "hivemind-backup-20261128-013000.tar.gz", age_s=0.0)
    os.utime(archive, (time.time() - 0.001, time.time() - 0.001))
    write_marker(archive, ok=True)
    found = backup_finding(settings)
    assert found.status is Status.OK, found.summary
