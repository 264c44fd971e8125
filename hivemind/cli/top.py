"""`hivemind top`: a live view of the cluster, refreshed every second (`q` quits)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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
    from hivemind.top import Rates, Snapshot

STATE_STYLE = {"healthy": "green", "running": "yellow", "stopped": "red", "n/a": "dim"}


def render(snapshot: Snapshot, rates: Rates) -> Group:
    """One frame of the view."""
    from hivemind.top import sparkline

    taken = time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at))
    parts: list[object] = [Text(f"hivemind top: {snapshot.host} at {taken}", style="bold")]
    services = Table(title="services", title_justify="left", show_edge=False)
    for column in ("SERVICE", "STATE", "DETAIL"):
        services.add_column(column)
    for service in snapshot.services:
        style = STATE_STYLE.get(service.state, "")
        services.add_row(service.name, f"[{style}]{service.state}[/]", escape(service.detail))
    parts.append(services)
    if snapshot.redis_down:
        parts.append(
            Text(
                f"Redis is down: {snapshot.redis_error}. Workers, queue and tasks are unknown "
                "until it answers.",
                style="bold red",
            )
        )
        return Group(*parts)

    workers = Table(title=f"workers: {len(snapshot.workers)}", title_justify="left")
    for column in ("NODE", "STATUS", "HEARTBEAT", "LOAD", "CPU %", "RUNNING", "LABELS"):
        workers.add_column(column)
    for w in snapshot.workers:
        style = "green" if w.status == "online" else "red"
        workers.add_row(
            escape(w.node_id),
            f"[{style}]{w.status}[/]",
            f"{w.heartbeat_age:.1f}s ago",
            f"{w.load1:.2f}",
            f"{w.cpu_percent:.0f}",
            f"{w.running}/{w.capacity or '?'}",
            escape(",".join(w.labels) or "-"),
        )
    parts.append(workers)

    per_second, (rate, failed) = rates.per_second(), rates.last_minute(snapshot)
    history = per_second or [float(sum(m.values())) for m in snapshot.per_minute]
    unit = "per second, last minute" if per_second else "per minute"
    queue = ", ".join(
        f"{escape(label or 'no label')}: {n}" for label, n in snapshot.queued_by_label.items()
    )
    parts.append(
        Text.from_markup(
            f"[bold]queue[/] {snapshot.queued} queued ({queue or 'empty'}), "
            f"{snapshot.running} running\n"
            f"[bold]throughput[/] {rate:.1f} tasks/s, {failed:.0%} failed  "
            f"{sparkline(history[-60:])} ({unit})"
        )
    )
    slowest = Table(title="slowest running tasks", title_justify="left")
    for column in ("TASK", "NAME", "OWNER", "WORKER", "RUNNING FOR", "PROGRESS"):
        slowest.add_column(column)
    for t in snapshot.slowest:
        progress = f"{t.progress:.0%}" + (f" {t.message}" if t.message else "")
        slowest.add_row(
            t.task_id,
            escape(t.name),
            escape(t.owner),
            escape(t.worker),
            f"{t.running_for:.0f}s",
            escape(progress),
        )
    parts.append(slowest if snapshot.slowest else Text("no task is running", style="dim"))
    return Group(*parts)


@contextlib.contextmanager
def _keys(quit_requested: threading.Event) -> Iterator[None]:
    """Sets ``quit_requested`` on `q` (or Ctrl-D) from a terminal; nothing otherwise."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read() -> None:
        while not quit_requested.is_set():
            char = sys.stdin.read(1)
            if char in ("q", "Q", ""):
                quit_requested.set()

    threading.Thread(target=read, name="top-keys", daemon=True).start()
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def top(
    once: bool = typer.Option(False, "--once", help="Print one frame and exit (for scripts)."),
    as_json: bool = typer.Option(False, "--json", help="With --once: the snapshot as JSON."),
    interval: float = typer.Option(
        1.0, "--interval", metavar="SECONDS", help="Seconds between refreshes."
    ),
    host: list[str] = HOST_OPTION,
    inventory: str = INVENTORY_OPTION,
    ssh_key: Path = SSH_KEY_OPTION,
    known_hosts: Path = KNOWN_HOSTS_OPTION,
    insecure_host_key: bool = INSECURE_HOST_KEY_OPTION,
    remote_hivemind: str = REMOTE_HIVEMIND_OPTION,
) -> None:
    """A live view: services, workers, the queue, throughput and the slowest tasks."""
    from hivemind.top import Rates, snapshot_over, take_snapshot

    if as_json and not once:
        fail("--json needs --once", 2)
    if interval <= 0:
        fail("--interval must be positive", 2)
    targets = ssh_targets(host, inventory)
    if len(targets) > 1:
        fail("top watches one host: give one --host (or an inventory of one)", 2)
    current = settings()
    if targets:
        options = ssh_options(ssh_key, known_hosts, insecure_host_key, remote_hivemind)
        runner = options.open(targets[0])
        take: Callable[[], Snapshot] = lambda: snapshot_over(runner, options.hivemind)  # noqa: E731
    else:
        runner = None
        take = lambda: take_snapshot(current)  # noqa: E731
    try:
        rates = Rates()
        if once:
            snapshot = take()
            if as_json:
                print_json(snapshot.to_dict())
            else:
                console.print(render(snapshot, rates))
            return
        _live(take, rates, interval)
    finally:
        if runner is not None:
            runner.close()


def _live(take: Callable[[], Snapshot], rates: Rates, interval: float) -> None:
    from rich.live import Live

    quit_requested = threading.Event()
    with _keys(quit_requested), Live(console=console, auto_refresh=False, screen=False) as live:
        try:
            while not quit_requested.is_set():
                snapshot = take()
                rates.add(snapshot)
                frame = render(snapshot, rates)
                live.update(Group(frame, Text("q quits", style="dim")), refresh=True)
                quit_requested.wait(max(0.0, interval - (time.time() - snapshot.taken_at)))
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command("top")(command(top))
