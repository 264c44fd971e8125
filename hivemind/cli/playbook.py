"""`hivemind playbook …`, `hivemind recover` and `hivemind service install`: render what the
:mod:`recovery` library plans and does."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
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
    from hivemind.remote import Runner, SSHTarget
    from recovery.model import HostRun
    from recovery.triage import RecoverReport

playbook_app = typer.Typer(
    help="Declarative recovery playbooks, run here or over SSH.", no_args_is_help=True
)
service_app = typer.Typer(help="System services (systemd units).", no_args_is_help=True)

STATUS_STYLE = {
    "changed": "yellow",
    "ok": "green",
    "skipped": "dim",
    "failed": "red",
    "not-run": "dim",
    "planned": "cyan",
}


def _variables(pairs: list[str] | None) -> dict[str, str]:
    values = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--var takes NAME=VALUE, got {pair!r}", 2)
        values[name] = value
    return values


# -- playbook list / show ---------------------------------------------------------------------
@playbook_app.command("list")
@command
def list_playbooks() -> None:
    """The shipped playbooks."""
    from recovery import load_playbook, shipped

    table = Table(show_edge=False)
    for column in ("PLAYBOOK", "STEPS", "OPT-IN", "WHAT IT DOES"):
        table.add_column(column, overflow="fold")
    for name in shipped():
        playbook = load_playbook(name)
        first = playbook.description.split(". ")[0].rstrip(".") + "."
        table.add_row(name, str(len(playbook.steps)), "yes" if playbook.opt_in else "", first)
    console.print(table)


@playbook_app.command("show")
@command
def show(name: str) -> None:
    """A playbook's description, variables and steps (NAME, or a YAML file)."""
    from recovery import load_playbook

    playbook = load_playbook(name)
    console.print(f"[bold]{playbook.name}[/] ({escape(playbook.file)})")
    console.print(escape(playbook.description))
    flags = [f for f, on in (("opt-in", playbook.opt_in), ("shell", playbook.allow_shell)) if on]
    console.print(
        f"hosts: {', '.join(playbook.hosts)}" + (f"; {', '.join(flags)}" if flags else "")
    )
    for var, default in playbook.variables.items():
        shown = "(required)" if default is None else repr(default)
        console.print(f"var {var} = {escape(shown)}")
    table = Table(show_edge=False)
    for column in ("#", "STEP", "ACTION", "WHEN", "THEN"):
        table.add_column(column, overflow="fold")
    for number, step in enumerate(playbook.steps, 1):
        params = json.dumps(step.params, ensure_ascii=False) if step.params else ""
        extra = []
        if step.postcondition:
            extra.append(f"check {', '.join(step.postcondition)}")
        if step.retries:
            extra.append(f"retries {step.retries}×{step.delay:g}s")
        table.add_row(
            str(number),
            escape(step.name),
            escape(f"{step.action} {params}".strip()),
            escape(step.precondition()),
            escape("; ".join(extra)),
        )
    console.print(table)


# -- playbook run -----------------------------------------------------------------------------
def render_run(run: HostRun) -> None:
    title = f"{escape(run.playbook)} on {escape(run.host)}" + (" (dry run)" if run.dry_run else "")
    if run.error:
        console.print(f"[bold]{title}[/]: [red]failed[/]: {escape(run.error)}")
        return
    table = Table(title=title, show_edge=False)
    for column in ("STATUS", "STEP", "RESULT", "PRECONDITION", "TOOK"):
        table.add_column(column, overflow="fold")
    for step in run.steps:
        style = STATUS_STYLE.get(step.status.value, "white")
        table.add_row(
            f"[{style}]{step.status.value}[/]",
            escape(step.step),
            escape(step.message),
            escape(step.precondition),
            f"{step.duration_s:.1f}s",
        )
    console.print(table)
    if run.dry_run:
        planned = sum(1 for s in run.steps if s.status.value == "planned")
        console.print(f"dry run: {planned} step(s) would change something; nothing was changed")
    elif not run.changed and not run.failed:
        console.print("nothing changed: this host was already as the playbook wants it")


def _summary(runs: list[HostRun]) -> None:
    if len(runs) < 2:
        return
    console.print(f"[bold]{len(runs)} host(s)[/]")
    for run in runs:
        mark = "[red]✘[/]" if run.failed else "[green]✔[/]"
        detail = run.error or f"{len(run.changed)} change(s)"
        console.print(f"  {mark} {escape(run.host)}: {escape(detail)}", highlight=False)


@playbook_app.command("run")
@command
def run(
    name: str = typer.Argument(..., help="A shipped playbook, or a YAML file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    host: list[str] = HOST_OPTION,
    inventory: str = INVENTORY_OPTION,
    serial: int | None = typer.Option(
        None, "--serial", metavar="N", help="Hosts at a time (default: all at once)."
    ),
    max_fail_percent: float = typer.Option(
        100.0,
        "--max-fail-percent",
        metavar="PERCENT",
        help="Stop starting hosts once more than this % failed.",
    ),
    var: list[str] = typer.Option(
        None, "--var", metavar="NAME=VALUE", help="A playbook variable (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ssh_key: Path = SSH_KEY_OPTION,
    known_hosts: Path = KNOWN_HOSTS_OPTION,
    insecure_host_key: bool = INSECURE_HOST_KEY_OPTION,
    remote_hivemind: str = REMOTE_HIVEMIND_OPTION,
) -> None:
    """Run a playbook here, or on --host/--inventory hosts over SSH."""
    from recovery import HostRun, RunOptions, load_playbook, run_playbook
    from recovery.engine import resolve_variables
    from recovery.hosts import in_batches, run_playbook_over, with_runner

    playbook = load_playbook(name)
    values = _variables(var)
    resolve_variables(playbook, values)  # a missing --var is a usage error before any host
    targets = ssh_targets(host, inventory, playbook.hosts)
    emit = (lambda _line: None) if as_json else (lambda line: console.print(escape(line)))
    if not targets:
        runs = [run_playbook(playbook, settings(), RunOptions(dry_run, values, emit))]
    else:
        ssh = ssh_options(ssh_key, known_hosts, insecure_host_key, remote_hivemind)

        def one(target: SSHTarget | None) -> HostRun:
            return with_runner(
                target,
                ssh,
                lambda r: run_playbook_over(r, playbook, values, dry_run, ssh.hivemind),
            )

        runs = in_batches(
            targets,
            one,
            failed=lambda r: r.failed,
            broken=lambda h, why: HostRun(h, playbook.name, error=why, dry_run=dry_run),
            serial=serial or 0,
            max_fail_percent=max_fail_percent,
        )
    if as_json:
        print_json({"playbook": playbook.name, "runs": [r.to_dict() for r in runs]})
    else:
        for result in runs:
            render_run(result)
        _summary(runs)
    raise typer.Exit(1 if any(r.failed for r in runs) else 0)


@playbook_app.command("exec", hidden=True)
@command
def exec_playbook(
    dry_run: bool = typer.Option(False, "--dry-run"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run the playbook given as JSON on stdin on this host (what --host runs remotely)."""
    from recovery import RunOptions, parse_playbook, run_playbook

    try:
        payload = json.loads(sys.stdin.read())
        source, file, values = payload["source"], payload["file"], dict(payload.get("vars") or {})
    except (ValueError, KeyError, TypeError) as exc:
        fail(f"playbook exec expects JSON with source, file and vars on stdin: {exc}", 2)
    playbook = parse_playbook(source, file)
    result = run_playbook(playbook, settings(), RunOptions(dry_run, values))
    if as_json:
        print_json(result.to_dict())
    else:
        render_run(result)
    raise typer.Exit(1 if result.failed else 0)


# -- recover ----------------------------------------------------------------------------------
def render_recover(report: RecoverReport) -> None:
    host = escape(report.host)
    if report.error:
        console.print(f"[bold]{host}[/]: [red]failed[/]: {escape(report.error)}")
        return
    counts = ", ".join(f"{v} {k}" for k, v in report.before.items() if v)
    console.print(f"[bold]{host}[/] doctor before: {counts}")
    for row in report.failing_before:
        console.print(f"  [red]fail[/] {row['id']}: {escape(row['summary'])}", highlight=False)
    if report.nothing_to_do:
        if report.healthy:
            console.print("[green]healthy[/]: no finding calls for a playbook; nothing to do")
        else:
            console.print("[red]no playbook handles these findings[/]; see `hivemind doctor`")
        return
    for choice in report.chosen:
        console.print(
            f"playbook [bold]{choice.playbook}[/] because {escape('; '.join(choice.because))}"
        )
    for run in report.runs:
        render_run(run)
    if report.dry_run:
        console.print("[bold]dry run[/]: the plan above; nothing was changed")
        return
    counts = ", ".join(f"{v} {k}" for k, v in (report.after or {}).items() if v)
    console.print(f"doctor after: {counts}")
    for row in report.failing_after:
        console.print(f"  [red]fail[/] {row['id']}: {escape(row['summary'])}", highlight=False)
    changes = report.changes()
    console.print(f"changed ({len(changes)}):" if changes else "changed: nothing")
    for line in changes:
        console.print(f"  • {escape(line)}", highlight=False)
    if report.healthy:
        console.print(
            f"[green]healthy[/] after {report.time_to_healthy_s:.1f}s (time to healthy)",
            highlight=False,
        )
    else:
        console.print(f"[red]not healthy[/] after {report.duration_s:.1f}s")


def recover(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    playbook: list[str] = typer.Option(
        None,
        "--playbook",
        metavar="NAME",
        help="Run this playbook instead of what the doctor calls for (repeatable).",
    ),
    host: list[str] = HOST_OPTION,
    inventory: str = INVENTORY_OPTION,
    serial: int | None = typer.Option(
        None, "--serial", metavar="N", help="Hosts at a time (default: all at once)."
    ),
    max_fail_percent: float = typer.Option(
        100.0,
        "--max-fail-percent",
        metavar="PERCENT",
        help="Stop starting hosts once more than this % failed.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ssh_key: Path = SSH_KEY_OPTION,
    known_hosts: Path = KNOWN_HOSTS_OPTION,
    insecure_host_key: bool = INSECURE_HOST_KEY_OPTION,
    remote_hivemind: str = REMOTE_HIVEMIND_OPTION,
) -> None:
    """Doctor, then the playbooks its findings call for, then doctor again: back to healthy."""
    from recovery import load_playbook
    from recovery import recover as recover_here
    from recovery.hosts import in_batches, remote_json, with_runner
    from recovery.triage import RecoverReport

    for name in playbook or []:
        load_playbook(name)  # a typo is a usage error before anything runs
    targets = ssh_targets(host, inventory)
    emit = (lambda _line: None) if as_json else (lambda line: console.print(escape(line)))
    if not targets:
        reports = [recover_here(settings(), dry_run=dry_run, playbooks=playbook or (), emit=emit)]
    else:
        ssh = ssh_options(ssh_key, known_hosts, insecure_host_key, remote_hivemind)
        words = ["recover", "--json", *(["--dry-run"] if dry_run else [])]
        words += [w for name in playbook or [] for w in ("--playbook", name)]
        command_line = f"{ssh.hivemind} {' '.join(words)}"

        def one(target: SSHTarget | None) -> RecoverReport:
            def over(runner: Runner) -> RecoverReport:
                reply = remote_json(runner, command_line, None, 1800.0)
                report = RecoverReport.from_dict(reply)
                report.host = runner.host
                return report

            return with_runner(target, ssh, over)

        reports = in_batches(
            targets,
            one,
            failed=lambda r: r.failed,
            broken=RecoverReport.broken,
            serial=serial or 0,
            max_fail_percent=max_fail_percent,
        )
    if as_json:
        document: Any = reports[0].to_dict() if not targets else [r.to_dict() for r in reports]
        print_json(document)
    else:
        for report in reports:
            render_recover(report)
    raise typer.Exit(1 if any(r.failed for r in reports) else 0)


# -- service install --------------------------------------------------------------------------
@service_app.command("install")
@command
def service_install(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the units; write nothing."),
    root: str = typer.Option(
        "/", "--root", metavar="DIR", help="Install under this root (for images/tests)."
    ),
    user: str = typer.Option("hivemind", "--user", metavar="USER", help="The service user."),
    ha: bool = typer.Option(
        False, "--ha", help="Also this host's Redis data node and Sentinel (HA layout)."
    ),
    ha_primary: str | None = typer.Option(
        None, "--ha-primary", metavar="HOST:PORT", help="The first primary's data node (--ha)."
    ),
    ha_role: str | None = typer.Option(
        None,
        "--ha-role",
        metavar="ROLE",
        help="primary: this host is HOST:PORT; replica (default): it replicates it.",
    ),
    redis_port: int | None = typer.Option(
        None, "--redis-port", metavar="PORT", help="This data node's port (default 6379)."
    ),
    sentinel_port: int | None = typer.Option(
        None, "--sentinel-port", metavar="PORT", help="This Sentinel's port (default 26379)."
    ),
    sentinel_bind: str | None = typer.Option(
        None,
        "--sentinel-bind",
        metavar="ADDR",
        help="Addresses the Sentinel listens on (default 0.0.0.0).",
    ),
) -> None:
    """Write the systemd units hivemind-nodepool, hivemind-master and hivemind-worker@ID
    (with --ha also hivemind-redis and hivemind-sentinel, and their configs)."""
    from hivemind.paths import layout
    from recovery.systemd import ENV_FILE, HaHost, install_ha, install_units

    given = {
        "--ha-primary": ha_primary,
        "--ha-role": ha_role,
        "--redis-port": redis_port,
        "--sentinel-port": sentinel_port,
        "--sentinel-bind": sentinel_bind,
    }
    ha_host = None
    if ha:
        if ha_primary is None:
            fail("--ha needs --ha-primary HOST:PORT (the first primary's data node)", 2)
        ha_host = HaHost.parse(ha_primary, ha_role, redis_port, sentinel_port, sentinel_bind)
    elif any(value is not None for value in given.values()):
        flags = [flag for flag, value in given.items() if value is not None]
        fail(f"{', '.join(flags)} {'needs' if len(flags) == 1 else 'need'} --ha", 2)
    current = settings()
    home = layout(current.home).root
    units = install_units(Path(root), user, home, dry_run=dry_run, ha_host=ha_host)
    for unit in units:
        verb = ("would write" if dry_run else "wrote") if unit.changed else "unchanged"
        console.print(f"{verb} {unit.path}", highlight=False)
        if dry_run and unit.changed:
            console.print(escape(unit.text), highlight=False)
    done_ha = install_ha(current, ha_host, user, dry_run=dry_run) if ha_host else None
    for conf in done_ha.confs if done_ha else []:
        # Kept, not rewritten: Redis and Sentinel own these files once they run.
        verb = ("would write" if dry_run else "wrote") if conf.written else "kept"
        console.print(f"{verb} {conf.path}", highlight=False)
        if dry_run and conf.written:
            console.print(escape(conf.shown), highlight=False)
    if not dry_run and Path(root) == Path("/") and any(u.changed for u in units):
        from hivemind.remote import LocalRunner

        done = LocalRunner().run(["systemctl", "daemon-reload"], timeout=30, sudo=True)
        if not done.ok:
            fail(f"systemctl daemon-reload: {done.stderr.decode(errors='replace').strip()}")
    if done_ha:
        for note in done_ha.notes:
            console.print(f"note: {escape(note)}", highlight=False)
        console.print(f"put in {ENV_FILE} on every host (your hosts for h1…, a, b):")
        for line in done_ha.env_lines:
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        enable = f"enable them: {escape(done_ha.enable_command)}"
        console.print(enable, highlight=False, soft_wrap=True)
    elif not dry_run:
        console.print(
            "enable them: sudo systemctl enable --now hivemind-nodepool hivemind-worker@$(hostname)"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(playbook_app, name="playbook")
    app.add_typer(service_app, name="service")
    app.command("recover")(command(recover))
