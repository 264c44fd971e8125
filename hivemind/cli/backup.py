"""Backup commands: backup, backup verify, restore. The work is in the `recovery` package."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from hivemind.cli.common import (
    HOST_OPTION,
    INSECURE_HOST_KEY_OPTION,
    INVENTORY_OPTION,
    KNOWN_HOSTS_OPTION,
    REMOTE_HIVEMIND_OPTION,
    SSH_KEY_OPTION,
    command,
    console,
    fail,
    print_json,
    settings,
    ssh_options,
    ssh_targets,
)

if TYPE_CHECKING:
    from hivemind.remote import SSHOptions, SSHTarget
    from recovery.archive import Counts
    from recovery.verify import Check

backup_app = typer.Typer(
    help=(
        "Write hivemind-backup-YYYYMMDD-HHMMSS.tar.gz (users.db, Redis, data, config) of this "
        "host or, with --host, of a remote one; `backup verify FILE` proves an archive restores."
    ),
    invoke_without_command=True,
)

STAGES = {
    "redis": "reading Redis",
    "users.db": "copying users.db",
    "files": "copying files",
    "archive": "writing the archive",
    "verify": "checking checksums",
}


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TaskProgressColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=1)

        def update(stage: str, done: int, total: int) -> None:
            bar.update(task, description=STAGES.get(stage, stage), completed=done, total=total)

        yield update


def _counts_line(counts: Counts) -> str:
    return (
        f"{counts.users} users, {counts.tasks} tasks ({counts.tasks_in_redis} live, "
        f"{counts.tasks_archived} archived), {counts.workers} workers"
    )


def _safe_dirname(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", host)


@backup_app.callback()
@command
def backup(
    ctx: typer.Context,
    output: Path = typer.Option(
        None, "--output", "-o", metavar="DIR", help="Folder for the archive."
    ),
    keep: int = typer.Option(None, "--keep", metavar="N", help="Keep only the newest N archives."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report, no progress bar."),
    host: list[str] = HOST_OPTION,
    inventory: str = INVENTORY_OPTION,
    ssh_key: Path = SSH_KEY_OPTION,
    known_hosts: Path = KNOWN_HOSTS_OPTION,
    insecure_host_key: bool = INSECURE_HOST_KEY_OPTION,
    remote_hivemind: str = REMOTE_HIVEMIND_OPTION,
) -> None:
    """Write hivemind-backup-YYYYMMDD-HHMMSS.tar.gz: users.db, Redis, data and config."""
    if ctx.invoked_subcommand is not None:
        return
    s = settings()
    from hivemind.paths import layout

    folder = output or layout(s.home).backups
    if host or inventory:
        ssh = ssh_options(ssh_key, known_hosts, insecure_host_key, remote_hivemind)
        _backup_hosts(ssh_targets(host, inventory), folder, keep, as_json, ssh)
        return
    from recovery.backup import create_backup

    with _progress_bar(not as_json and sys.stdout.isatty()) as progress:
        result = create_backup(s, folder, keep, progress)
    if as_json:
        print_json(
            {
                "archive": str(result.archive),
                "sha256": result.sha256,
                "manifest": asdict(result.manifest),
                "removed": [str(p) for p in result.removed],
            }
        )
        return
    console.print(f"wrote [bold]{escape(str(result.archive))}[/]")
    console.print(_counts_line(result.manifest.counts))
    for path in result.removed:
        console.print(f"removed old backup {escape(str(path))}")


def _backup_hosts(
    targets: list[SSHTarget], folder: Path, keep: int | None, as_json: bool, ssh: SSHOptions
) -> None:
    from hivemind.remote import for_each_host
    from recovery.remote import RemoteBackupResult, backup_over_ssh

    def one(target: SSHTarget) -> RemoteBackupResult:
        dest = folder if len(targets) == 1 else folder / _safe_dirname(str(target))
        with ssh.open(target) as runner:
            return backup_over_ssh(runner, dest, remote_command=ssh.hivemind, keep=keep)

    with console.status("backing up over SSH …", spinner="dots") if not as_json else _null():
        results = for_each_host(targets, one)
    if as_json:
        print_json(
            [
                {
                    "host": r.host,
                    "error": r.error,
                    "archive": str(r.value.local.archive) if r.value else None,
                    "remote_archive": r.value.remote_archive if r.value else None,
                    "manifest": asdict(r.value.local.manifest) if r.value else None,
                }
                for r in results
            ]
        )
    else:
        for r in results:
            if r.value is not None:
                local = r.value.local
                console.print(
                    f"{escape(r.host)}: fetched [bold]{escape(str(local.archive))}[/] — "
                    f"{_counts_line(local.manifest.counts)}"
                )
            else:
                console.print(f"[red]{escape(r.host)}: {escape(r.error or '')}[/]")
    failed = [r for r in results if not r.ok]
    if failed:
        if len(targets) == 1 and not as_json:
            fail(failed[0].error or "failed")
        raise typer.Exit(1)


@contextmanager
def _null() -> Iterator[None]:
    yield


@backup_app.command("verify")
@command
def verify(
    archive: Path = typer.Argument(..., help="A hivemind-backup-*.tar.gz."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report."),
) -> None:
    """Check checksums and integrity, then restore into a scratch SQLite and Redis as a trial."""
    from recovery.verify import verify_archive

    with _progress_bar(not as_json and sys.stdout.isatty()) as progress:
        report = verify_archive(archive, progress)
    if as_json:
        print_json(
            {
                "archive": str(archive),
                "ok": report.ok,
                "manifest": asdict(report.manifest),
                "checks": [asdict(c) for c in report.checks],
            }
        )
    else:
        _render_checks(report.checks)
        verdict = "[green]restorable[/]" if report.ok else "[red]NOT restorable[/]"
        console.print(f"{escape(str(archive))}: {verdict} — {_counts_line(report.manifest.counts)}")
    if not report.ok:
        raise typer.Exit(1)


def _render_checks(checks: list[Check]) -> None:
    table = Table(show_edge=False)
    for column in ("CHECK", "RESULT", "DETAIL"):
        table.add_column(column)
    for c in checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]fail[/]", escape(c.detail))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")

    @app.command()
    @command
    def restore(
        archive: Path = typer.Argument(..., help="A hivemind-backup-*.tar.gz."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Verify and show the plan only."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON report."),
    ) -> None:
        """Verify ARCHIVE, stop the services, replace the state atomically, start them again."""
        from recovery.restore import restore_backup

        s = settings()
        if not dry_run and not yes:
            if not sys.stdin.isatty():
                fail("restore replaces this host's cluster state; pass --yes to confirm", 2)
            typer.confirm(f"Replace the cluster state in {s.home} with {archive}?", abort=True)
        with _progress_bar(not as_json and sys.stdout.isatty()) as progress:
            report = restore_backup(
                s,
                archive,
                dry_run=dry_run,
                progress=progress,
                on_event=None if as_json else (lambda line: console.print(escape(line))),
            )
        if as_json:
            print_json(
                {
                    "archive": str(archive),
                    "dry_run": report.dry_run,
                    "counts": asdict(report.counts),
                    "requeued": report.requeued,
                    "services": report.services,
                    "previous_state": str(report.previous_state or ""),
                    "doctor": report.doctor,
                    "doctor_problems": report.doctor_problems,
                    "checks": [asdict(c) for c in report.verify.checks],
                }
            )
            return
        _render_checks(report.verify.checks)
        verb = "would restore" if dry_run else "restored"
        console.print(f"{verb}: {_counts_line(report.counts)}")
        requeue = "would requeue" if dry_run else "requeued"
        ids = ", ".join(report.requeued) or "none"
        console.print(f"{requeue} (RUNNING in the backup): {ids}")
        if report.services:
            action = "would stop and restart" if dry_run else "stopped and restarted"
            console.print(f"{action}: {', '.join(report.services)}")
        if report.doctor is not None:
            summary = ", ".join(f"{n} {status}" for status, n in report.doctor.items())
            problems = f" (see {', '.join(report.doctor_problems)})" * bool(report.doctor_problems)
            console.print(f"doctor after the restart: {summary}{problems}")
        if report.previous_state:
            console.print(f"the previous state is kept in {escape(str(report.previous_state))}")
        if dry_run:
            console.print("[bold]dry run:[/] nothing was changed")
