"""Data actions: migrate users.db, rebuild it, take a backup, restore one.

Backup and restore are `hivemind backup` / `hivemind restore` run on the host through the
runner: this module depends only on their command line, and a verified archive is one with a
``<archive>.verified`` marker next to it (written by `hivemind backup verify`).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from hivemind.config import ENV_PREFIX, SECRET_SETTINGS
from hivemind.errors import HivemindError
from hivemind.stack import child_environment
from hivemind.userdb import SCHEMA_VERSION, migrate
from recovery.actions import Outcome, Param, StepContext, action
from recovery.model import ActionFailed

ARCHIVE_GLOB = "hivemind-backup-*.tar.gz"
VERIFIED_SUFFIX = ".verified"
NEWEST_VERIFIED = "newest-verified"


def schema_version(path: Path) -> int | None:
    """users.db's schema version, read-only; None when it does not exist."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ActionFailed(f"cannot read {path}: {exc}") from None


def integrity_problem(path: Path) -> str | None:
    """Why users.db cannot be trusted (missing, unreadable, corrupt), or None when it can."""
    if not path.exists():
        return f"{path} does not exist"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            conn.execute("SELECT count(*) FROM users").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"{path}: {exc}"
    verdict = "; ".join(str(row[0]) for row in rows)
    return None if verdict == "ok" else f"{path}: quick_check says {verdict[:200]}"


def _migrate(ctx: StepContext) -> Outcome:
    path = ctx.home.users_db
    before = schema_version(path)
    state = {"schema": before, "target": SCHEMA_VERSION}
    if before == SCHEMA_VERSION:
        return Outcome(False, f"{path.name} is up to date (schema {before})", state, state)
    if ctx.dry_run:
        return Outcome(
            True, f"would migrate {path.name}: schema {before} -> {SCHEMA_VERSION}", state
        )
    try:
        old, new = migrate(path)
    except HivemindError as exc:
        raise ActionFailed(str(exc)) from None
    return Outcome(True, f"{path.name}: schema {old} -> {new}", state, {"schema": new})


@action("migrate_db", "Create users.db or bring its schema up to date")
def migrate_db(ctx: StepContext, _params: dict[str, Any]) -> Outcome:
    return _migrate(ctx)


def verified_archives(folder: Path) -> list[Path]:
    """Archives with a verification marker, newest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(ARCHIVE_GLOB) if Path(f"{p}{VERIFIED_SUFFIX}").exists()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def hivemind_command(ctx: StepContext, *words: str) -> dict[str, Any]:
    """Run `hivemind WORDS… --json` on this host with this run's settings; its JSON reply."""
    # Secrets stay out: `env K=V` would show them in the process list; the child reads them
    # where this process did (secret.key, its inherited environment).
    secret = {ENV_PREFIX + name.upper() for name in SECRET_SETTINGS}
    env = {k: v for k, v in child_environment(ctx.settings, {}).items() if k not in secret}
    done = ctx.runner.run(
        [sys.executable, "-m", "hivemind", *words, "--json"], timeout=ctx.timeout, env=env
    )
    text = done.stdout.decode(errors="replace")
    if not done.ok:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [text[-300:]]
        raise ActionFailed(f"hivemind {' '.join(words)} exited {done.exit_code}: {why[0]}")
    try:
        reply = json.loads(text)
    except ValueError:
        return {"output": text[-500:]}
    return reply if isinstance(reply, dict) else {"reply": reply}


def _restore(ctx: StepContext, archive: Path) -> Outcome:
    before = {"archive": str(archive)}
    if ctx.dry_run:
        return Outcome(True, f"would restore {archive.name} (hivemind restore --yes)", before)
    reply = hivemind_command(ctx, "restore", str(archive), "--yes")
    return Outcome(True, f"restored {archive.name}", before, {"restore": reply})


def _choose_archive(ctx: StepContext, archive: str) -> Path:
    if archive != NEWEST_VERIFIED:
        return Path(archive)
    newest = verified_archives(ctx.home.backups)
    if not newest:
        raise ActionFailed(
            f"no verified backup in {ctx.home.backups} "
            "(take one with `hivemind backup` and `hivemind backup verify FILE`)"
        )
    return newest[0]


@action(
    "rebuild_db",
    "Migrate users.db if it is sound, else restore the newest verified backup",
)
def rebuild_db(ctx: StepContext, _params: dict[str, Any]) -> Outcome:
    problem = integrity_problem(ctx.home.users_db)
    if problem is None or not ctx.home.users_db.exists():
        return _migrate(ctx)  # a missing file is simply created
    archive = _choose_archive(ctx, NEWEST_VERIFIED)
    outcome = _restore(ctx, archive)
    outcome.before["problem"] = problem
    return outcome


@action(
    "backup",
    "Take a backup with `hivemind backup` (skipped while a recent verified one exists)",
    {
        "output": Param(str, doc="folder; default $HIVEMIND_HOME/backups"),
        "keep": Param(int),
        "unless_newer_than": Param(int, doc="seconds: skip if a verified backup is this recent"),
        "verify": Param(bool, default=True),
    },
)
def backup(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    folder = Path(params["output"]) if params.get("output") else ctx.home.backups
    newest = verified_archives(folder)
    before = {"newest_verified": newest[0].name if newest else None}
    recent = params.get("unless_newer_than")
    if recent and newest and time.time() - newest[0].stat().st_mtime < recent:
        return Outcome(False, f"a verified backup is recent enough: {newest[0].name}", before)
    if ctx.dry_run:
        return Outcome(True, f"would take a backup into {folder}", before)
    words = ["backup", "--output", str(folder)]
    if params.get("keep"):
        words += ["--keep", str(params["keep"])]
    reply = hivemind_command(ctx, *words)
    archive = _archive_in(reply)
    if params["verify"] and archive:
        hivemind_command(ctx, "backup", "verify", archive)
    return Outcome(True, f"took {Path(archive).name if archive else 'a backup'}", before, reply)


def _archive_in(reply: dict[str, Any]) -> str | None:
    for key in ("archive", "path", "file"):
        if isinstance(reply.get(key), str):
            return str(reply[key])
    return None


@action(
    "restore",
    "Restore an archive with `hivemind restore --yes` (it verifies first)",
    {"archive": Param(str, default=NEWEST_VERIFIED, doc="a file, or newest-verified")},
)
def restore(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    return _restore(ctx, _choose_archive(ctx, params["archive"]))
