"""`hivemind doctor drill`: renders what :mod:`doctor.drill` proves."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from hivemind.cli.common import command, console, fail, print_json
from hivemind.cli.doctor import doctor_app

if TYPE_CHECKING:
    from doctor.drill import DrillReport, FaultResult

OUTCOME_STYLE = {"detected": "green", "missed": "red", "error": "magenta", "not run": "dim"}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "[green]yes[/]" if value else "[red]no[/]"


def render(report: DrillReport) -> None:
    table = Table(
        title=f"hivemind doctor drill: {len(report.results)} fault(s) "
        "(`hivemind doctor drill --list` describes them)"
    )
    for column in ("FAULT", "OUTCOME", "CAUGHT BY", "DETECT", "REPAIR", "REPAIRED", "CLEAN"):
        table.add_column(column, overflow="fold")
    for r in report.results:
        style = OUTCOME_STYLE.get(r.outcome, "")
        caught = ", ".join(r.detected_by) or escape(r.reason) or "-"
        repair = {"fix": "--fix", "recover": "recover", "none": "none (undone)"}[r.repair]
        repaired = _yes_no(r.repaired)
        if r.repair_s is not None:
            repaired += f" {r.repair_s:.1f}s"
        clean = _yes_no(r.clean)
        if r.still_worse:
            clean += f" ({escape(', '.join(r.still_worse))})"
        table.add_row(
            r.name,
            f"[{style}]{r.outcome}[/]",
            caught,
            _seconds(r.detect_s),
            repair,
            repaired,
            clean,
        )
    console.print(table)
    counts = report.to_dict()["summary"]
    line = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    console.print(f"{line} in {report.took_s:.0f}s", highlight=False)


def _progress(result: FaultResult) -> None:
    console.print(f"  {result.name}: {result.outcome}", style="dim", highlight=False)


@doctor_app.command("drill")
@command
def drill(
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    fault: list[str] = typer.Option(
        None, "--fault", metavar="NAME", help="A fault to inject (repeatable; default: all)."
    ),
    list_faults: bool = typer.Option(False, "--list", help="List the faults and exit."),
    keep: bool = typer.Option(False, "--keep", help="Leave the scratch stack's files."),
) -> None:
    """Inject each known fault into a scratch stack of its own; show which check caught it,
    how fast, and whether it was repaired. Exit 1 when any fault is missed."""
    from doctor.drill import FAULTS, run_drill, select_faults

    if list_faults:
        for f in FAULTS:
            console.print(
                f"{f.name}: {escape(f.description)} [dim](caught by {', '.join(f.expects)}; "
                f"repair: {f.repair})[/]"
            )
        return
    try:
        chosen = select_faults(fault or ())
    except ValueError as exc:
        fail(str(exc), 2)
    # SIGTERM unwinds like Ctrl-C, so that the scratch stack is stopped and unmounted.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = run_drill(chosen, progress=(lambda _r: None) if as_json else _progress, keep=keep)
    except KeyboardInterrupt:
        fail("interrupted; the scratch stack was stopped", 130)
    if as_json:
        print_json(report.to_dict())
    else:
        render(report)
    raise typer.Exit(1 if report.missed else 0)
