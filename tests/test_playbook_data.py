"""The data actions through `hivemind backup` / `backup verify` / `restore` (their command line
only): a backup is taken and verified, then skipped while recent; rebuild-db migrates a sound
users.db and restores a corrupt one from the newest verified backup."""

from __future__ import annotations

from pathlib import Path

from hivemind.config import Settings
from hivemind.paths import layout
from hivemind.userdb import UserStore, migrate
from recovery import RunOptions, StepStatus, parse_playbook, run_playbook
from recovery.actions.data import integrity_problem, verified_archives


def one_step(action: str) -> str:
    return f"name: t\ndescription: d\nsteps:\n  - name: step\n    {action}\n"


def test_backup_then_rebuild_db_from_the_newest_verified_backup(settings: Settings) -> None:
    home = layout(settings.home)
    migrate(home.users_db)
    store = UserStore(home.users_db)
    try:
        store.create_user("alice", "correct horse battery", "user", 5)
    finally:
        store.close()

    backup = parse_playbook(one_step("backup: {unless_newer_than: 3600}"), "backup.yaml")
    first = run_playbook(backup, settings, RunOptions())
    assert first.steps[0].status is StepStatus.CHANGED, first.steps[0]
    (archive,) = verified_archives(home.backups)
    assert Path(f"{archive}.verified").exists()
    again = run_playbook(backup, settings, RunOptions())
    assert again.steps[0].status is StepStatus.OK
    assert "recent enough" in again.steps[0].message

    rebuild = parse_playbook(one_step("rebuild_db:"), "rebuild.yaml")
    sound = run_playbook(rebuild, settings, RunOptions())
    assert sound.steps[0].status is StepStatus.OK and "up to date" in sound.steps[0].message

    home.users_db.write_bytes(b"this is not a database" * 100)
    for extra in ("-wal", "-shm"):
        Path(f"{home.users_db}{extra}").unlink(missing_ok=True)
    assert integrity_problem(home.users_db)
    plan = run_playbook(rebuild, settings, RunOptions(dry_run=True))
    assert plan.steps[0].status is StepStatus.PLANNED
    assert f"would restore {archive.name}" in plan.steps[0].message
    assert integrity_problem(home.users_db)  # the plan changed nothing

    done = run_playbook(rebuild, settings, RunOptions())
    assert done.steps[0].status is StepStatus.CHANGED, done.steps[0]
    assert integrity_problem(home.users_db) is None
    store = UserStore(home.users_db)
    try:
        assert [u.username for u in store.list_users()] == ["alice"]
    finally:
        store.close()
