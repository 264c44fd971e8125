"""`hivemind doctor`: renders what the :mod:`doctor` library finds."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

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
    from doctor.fixes import Action
    from doctor.history import Healthy
    from doctor.model import Report

doctor_app = typer.Typer(
    help="Run every check of the troubleshooting guide; say what is wrong and how to fix it.",
    invoke_without_command=True,
)

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim", "error": "magenta"}
#: ``--timeout``: None is the doctor's DEFAULT_CHECK_TIMEOUT, read when the command runs, so
#: every command pays for importing the doctor only when it runs it.
TIMEOUT_HELP = "Seconds each check may take (default: 5)."


class OutputFormat(str, enum.Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


def _names(values: list[str] | None) -> list[str]:
    """Ids or categories from repeated and/or comma-separated options."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def _check_timeout(timeout: float | None) -> float:
    """``--timeout`` as given, else the doctor's per-check default."""
    from doctor import DEFAULT_CHECK_TIMEOUT

    return DEFAULT_CHECK_TIMEOUT if timeout is None else timeout


def render_report(report: Report) -> None:
    from doctor.model import Status
    from doctor.report import SYMBOLS, by_category, evidence_text, summary_line

    table = Table(title=f"hivemind doctor: {escape(report.host)}", show_lines=False, expand=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("finding", overflow="fold")
    for category, results in by_category(report.results).items():
        table.add_section()
        table.add_row("", f"[bold]{category}[/]", "")
        for result in results:
            style = STATUS_STYLE[result.status.value]
            finding = escape(result.finding.summary)
            if result.status in (Status.WARN, Status.FAIL, Status.ERROR):
                finding += f"\n[dim]evidence: {escape(evidence_text(result))}[/]"
                if result.finding.fix:
                    finding += f"\n[bold]fix:[/] {escape(result.finding.fix)}"
            table.add_row(
                f"[{style}]{SYMBOLS[result.status]} {result.status.value}[/]", result.id, finding
            )
    console.print(table)
    console.print(summary_line(report), highlight=False)


@doctor_app.callback()
@command
def doctor(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    output: OutputFormat = typer.Option(
        OutputFormat.table,
        "--format",
        metavar="table|json|markdown",
        help="How to print the findings.",
    ),
    only: list[str] = typer.Option(
        None, "--only", metavar="ID", help="A check id or category to run (repeatable)."
    ),
    skip: list[str] = typer.Option(
        None, "--skip", metavar="ID", help="A check id or category to leave out (repeatable)."
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    timeout: float | None = typer.Option(None, "--timeout", metavar="SECONDS", help=TIMEOUT_HELP),
    fix: bool = typer.Option(False, "--fix", help="Apply the safe auto-fixes, then re-check."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before each fix."),
    since_healthy: bool = typer.Option(
        False,
        "--since-healthy",
        help="Show only the checks that are worse than in the last run where nothing failed.",
    ),
    host: list[str] = HOST_OPTION,
    inventory: str = INVENTORY_OPTION,
    ssh_key: Path = SSH_KEY_OPTION,
    known_hosts: Path = KNOWN_HOSTS_OPTION,
    insecure_host_key: bool = INSECURE_HOST_KEY_OPTION,
    remote_hivemind: str = REMOTE_HIVEMIND_OPTION,
) -> None:
    """Run the checks (all of them unless --only/--skip say otherwise)."""
    if ctx.invoked_subcommand is not None:
        return
    from doctor import run_doctor

    timeout = _check_timeout(timeout)
    if timeout <= 0:
        fail("--timeout must be positive", 2)
    fmt = OutputFormat.json if as_json else output
    if host or inventory:
        if fix or since_healthy:
            fail("--fix and --since-healthy run on this host only; run them on the host", 2)
        _remote(
            host,
            inventory,
            fmt,
            strict,
            timeout,
            only,
            skip,
            ssh_key,
            known_hosts,
            insecure_host_key,
            remote_hivemind,
        )
        return
    from doctor.history import load_healthy, record_if_healthy

    current = settings()
    healthy = load_healthy(current.home) if since_healthy else None
    report = run_doctor(current, _names(only), _names(skip), timeout=timeout)
    if since_healthy:
        _render_since_healthy(report, healthy, fmt)
    elif fmt is OutputFormat.json:
        print_json(report.to_dict())
    elif fmt is OutputFormat.markdown:
        from doctor.report import to_markdown

        sys.stdout.write(to_markdown(report))
    else:
        render_report(report)
    if fix:
        report = _fix(report, timeout, yes)
    record_if_healthy(report, current.home)
    raise typer.Exit(1 if report.failed(strict=strict) else 0)


def _render_since_healthy(report: Report, healthy: Healthy | None, fmt: OutputFormat) -> None:
    from doctor.history import changes_since
    from doctor.report import summary_line

    changes = changes_since(healthy, report) if healthy is not None else []
    if fmt is OutputFormat.json:
        document = report.to_dict()
        document["since_healthy"] = {
            "recorded": healthy is not None,
            "changes": [change.to_dict() for change in changes],
        }
        print_json(document)
        return
    if healthy is None:
        console.print(
            "no healthy run is recorded yet: a doctor run with no fail and no error records "
            "one (this run's findings follow)",
            highlight=False,
        )
        render_report(report)
        return
    if not changes:
        console.print("no check is worse than in its last healthy run", highlight=False)
    else:
        table = Table(title=f"worse since the last healthy run: {len(changes)} check(s)")
        table.add_column("check", no_wrap=True)
        table.add_column("then → now", no_wrap=True)
        table.add_column("finding and changed evidence", overflow="fold")
        for change in changes:
            lines = [escape(change.summary)]
            lines += [
                f"[dim]{escape(key)}: {escape(json.dumps(then))} → {escape(json.dumps(now))}[/]"
                for key, (then, now) in change.evidence.items()
            ]
            style = STATUS_STYLE[change.after.value]
            table.add_row(
                change.id,
                f"{change.before.value} → [{style}]{change.after.value}[/]"
                f"\n[dim]healthy at {escape(change.healthy_at)}[/]",
                "\n".join(lines),
            )
        console.print(table)
    console.print(summary_line(report), highlight=False)


def _remote(
    hosts: list[str] | None,
    inventory: str | None,
    fmt: OutputFormat,
    strict: bool,
    timeout: float,
    only: list[str] | None,
    skip: list[str] | None,
    ssh_key: Path | None,
    known_hosts: Path | None,
    insecure_host_key: bool,
    remote_hivemind: str,
) -> None:
    from doctor.remote import RemoteOptions, run_remote
    from doctor.report import summary_line, to_markdown

    targets = ssh_targets(hosts, inventory)
    options = RemoteOptions(
        timeout=timeout,
        only=_names(only),
        skip=_names(skip),
        ssh=ssh_options(ssh_key, known_hosts, insecure_host_key, remote_hivemind),
    )
    reports = run_remote(targets, settings(), options)
    if fmt is OutputFormat.json:
        print_json({"schema": 1, "reports": [r.to_dict() for r in reports]})
    elif fmt is OutputFormat.markdown:
        sys.stdout.write("\n".join(to_markdown(r) for r in reports))
    else:
        for report in reports:
            render_report(report)
        console.print(f"[bold]{len(reports)} host(s)[/]")
        for report in reports:
            mark = "[red]✘[/]" if report.failed(strict=strict) else "[green]✔[/]"
            console.print(f"  {mark} {escape(summary_line(report))}", highlight=False)
    raise typer.Exit(1 if any(r.failed(strict=strict) for r in reports) else 0)


def _fix(report: Report, timeout: float, yes: bool) -> Report:
    from doctor import Context
    from doctor.fixes import apply_fixes, plan_fixes

    context = Context(settings(), timeout=timeout)
    actions = plan_fixes(report, context)
    if not actions:
        console.print("--fix: nothing to fix automatically")
        return report
    console.print(f"[bold]--fix[/]: {len(actions)} action(s)")
    for action in actions:
        console.print(f"  • {escape(action.description)}\n    [dim]$ {escape(action.command)}[/]")

    def confirm(action: Action) -> bool:
        return yes or typer.confirm(f"apply: {action.description}?", default=True)

    if not yes and not sys.stdin.isatty():
        fail("--fix needs --yes when there is no terminal to ask on", 2)
    run = apply_fixes(report, actions, context, confirm)
    for outcome in run.outcomes:
        mark = "[green]done[/]" if outcome.applied else "[red]not done[/]"
        console.print(f"  {mark} {escape(outcome.message)}")
    console.print("[bold]re-check[/]")
    for check_id, after in run.after.items():
        before = run.before.get(check_id)
        was = before.status.value if before else "-"
        now = after.status.value
        console.print(
            f"  {check_id}: {was} → [{STATUS_STYLE[now]}]{now}[/]  {escape(after.finding.summary)}"
        )
    from dataclasses import replace

    merged = [run.after.get(r.id, r) for r in report.results]
    return replace(report, results=merged)


@doctor_app.command("list")
@command
def list_checks(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print every check's id, title and guide section."""
    from doctor import all_checks

    specs = all_checks()
    if as_json:
        rows = [
            {
                "id": s.id,
                "category": s.category,
                "title": s.title,
                "guide": s.guide,
                "fixable": s.fixable,
            }
            for s in specs
        ]
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    table = Table(title=f"{len(specs)} doctor checks")
    table.add_column("id", no_wrap=True)
    table.add_column("title")
    table.add_column("guide section")
    table.add_column("auto-fix")
    for spec in specs:
        fixable = "yes" if spec.fixable else ""
        table.add_row(spec.id, escape(spec.title), escape(spec.guide), fixable)
    console.print(table)


@doctor_app.command("serve")
@command
def serve_metrics(
    bind: str = typer.Option(
        "127.0.0.1", "--bind", metavar="ADDRESS", help="Address to listen on (0.0.0.0: all)."
    ),
    port: int | None = typer.Option(
        None, "--port", metavar="PORT", help="Port to listen on (default: DOCTOR_METRICS_PORT)."
    ),
    interval: float = typer.Option(
        30.0, "--interval", metavar="SECONDS", help="Seconds between rounds of checks."
    ),
    only: list[str] = typer.Option(None, "--only", metavar="ID", help="A check id or category."),
    skip: list[str] = typer.Option(None, "--skip", metavar="ID", help="A check id or category."),
    timeout: float | None = typer.Option(None, "--timeout", metavar="SECONDS", help=TIMEOUT_HELP),
) -> None:
    """Export every check as a Prometheus gauge (hivemind_check_status) on /metrics."""
    import signal
    import threading

    from doctor import all_checks
    from doctor.exporter import serve
    from doctor.registry import select

    timeout = _check_timeout(timeout)
    if timeout <= 0 or interval <= 0:
        fail("--timeout and --interval must be positive", 2)
    current = settings()
    specs = select(all_checks(), _names(only), _names(skip))
    bind_port = current.doctor_metrics_port if port is None else port
    try:
        exporter = serve(current, specs, bind, bind_port, interval=interval, timeout=timeout)
    except OSError as exc:
        fail(f"cannot serve on {bind}:{bind_port}: {exc.strerror or exc}")
    bound_host, bound_port = exporter.address
    console.print(
        f"serving {len(specs)} checks on http://{bound_host}:{bound_port}/metrics "
        f"(a round every {interval:g}s and on each scrape); Ctrl-C stops",
        highlight=False,
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        exporter.close()


@doctor_app.command("explain")
@command
def explain_task(
    task_id: str,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Why TASK_ID is not running, or why it failed: its attempts, the cause, its log."""
    from doctor.explain import explain, history_rows

    explanation = explain(settings(), task_id)
    if as_json:
        print_json(explanation.to_dict())
        return
    record = explanation.record
    console.print(
        f"[bold]{escape(task_id)}[/] {escape(record.get('name', ''))}: "
        f"[bold]{escape(explanation.status)}[/] (owner {escape(record.get('owner', '?'))}, "
        f"attempt {escape(record.get('attempt', '0'))}, from {explanation.source})"
    )
    rows = history_rows(explanation)
    if rows:
        table = Table(title="history")
        for column in ("at", "attempt", "event", "worker", "detail"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(row[c]) for c in ("at", "attempt", "event", "worker", "detail")))
        console.print(table)
    console.print("[bold]why[/]")
    for number, cause in enumerate(explanation.causes, 1):
        console.print(f"  {number}. {escape(cause)}", highlight=False)
    if explanation.log_tail:
        console.print(f"[bold]last {len(explanation.log_tail)} log line(s)[/]")
        for line in explanation.log_tail:
            console.print(f"  [dim]{escape(line)}[/]", highlight=False)
    else:
        console.print("[dim]no log lines[/]")


@doctor_app.command("bundle")
@command
def support_bundle(
    output: str = typer.Option(
        ".", "-o", "--output", metavar="PATH", help="The file, or a folder to put it in."
    ),
    timeout: float | None = typer.Option(None, "--timeout", metavar="SECONDS", help=TIMEOUT_HELP),
) -> None:
    """Write a tar.gz for a support request: findings, redacted config, logs, Redis INFO."""
    from pathlib import Path

    from doctor import run_doctor
    from doctor.bundle import make_bundle
    from hivemind.cli.common import OPTIONS

    current = settings()
    report = run_doctor(current, timeout=_check_timeout(timeout))
    bundle = make_bundle(current, report, Path(output), config=OPTIONS.config)
    console.print(f"wrote {bundle.path} ({len(bundle.members)} files)")
    if bundle.redacted:
        console.print("redacted:")
        for what, count in sorted(bundle.redacted.items()):
            console.print(f"  {escape(what)} ({count}×)", highlight=False)
    else:
        console.print("redacted: nothing secret was found in the collected files")
