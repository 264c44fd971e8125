"""`hivemind deploy`: this checkout onto hosts over SSH, each joined as a worker; and
`hivemind worker-stop` / `worker-start`, which stop and start a joined host's worker (what an
upgrade runs)."""

from __future__ import annotations

import threading
from pathlib import Path

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from hivemind.cli.common import (
    INSECURE_HOST_KEY_OPTION,
    KNOWN_HOSTS_OPTION,
    SSH_KEY_OPTION,
    command,
    console,
    fail,
    print_json,
    settings,
    ssh_options,
)
from hivemind.deploy.model import DeployEvent, DeployHost, DeploySummary, Outcome

JOINED_NODE_ID_OPTION = typer.Option(
    "",
    "--node-id",
    metavar="NODE_ID",
    show_default=False,
    help="The joined worker's id (default: the one `join` wrote a token for).",
)
_STATE_STYLE = {"started": "yellow", "done": "green", "failed": "red", "skipped": "dim"}


class _Progress:
    """One row per host, updated from the deploy's events (they come from many threads)."""

    def __init__(self, hosts: list[DeployHost]) -> None:
        self._rows = {h.label: (h.node_id, "waiting", "", "") for h in hosts}
        self._lock = threading.Lock()
        self.live: Live | None = None

    def on_event(self, event: DeployEvent) -> None:
        with self._lock:
            self._rows[event.host] = (event.node_id, event.phase.value, event.state, event.message)
            if self.live is not None:
                self.live.update(self.table())

    def table(self) -> Table:
        table = Table(show_edge=False)
        for column in ("HOST", "NODE ID", "PHASE", "STATE", "MESSAGE"):
            table.add_column(column)
        for host, (node_id, phase, state, message) in self._rows.items():
            style = _STATE_STYLE.get(state, "")
            shown = f"[{style}]{state}[/]" if style else state
            table.add_row(escape(host), escape(node_id), phase, shown, escape(message[:80]))
        return table


def _render_summary(summary: DeploySummary) -> None:
    table = Table(show_edge=False, title=f"hivemind {escape(summary.version)}")
    for column in ("HOST", "NODE ID", "RESULT", "PHASE", "VERSION", "SECONDS"):
        table.add_column(column)
    for r in summary.results:
        style = {"ok": "green", "failed": "red", "skipped": "dim"}[r.outcome.value]
        table.add_row(
            escape(r.host),
            escape(r.node_id),
            f"[{style}]{r.outcome.value}[/]",
            r.phase.value,
            escape(r.installed_version or "-"),
            f"{r.duration_s:.1f}",
        )
    console.print(table)
    for r in summary.results:
        if r.message:
            console.print(f"  {escape(r.host)}: {escape(r.message)}", soft_wrap=True)
    counts = ", ".join(f"{summary.count(o)} {o.value}" for o in Outcome)
    console.print(f"[bold]{len(summary.results)} host(s):[/] {counts}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    @command
    def deploy_command(
        inventory: Path = typer.Option(
            ..., "--inventory", metavar="FILE", help="The hosts (YAML, TOML or text)."
        ),
        group: list[str] = typer.Option(
            [], "--group", metavar="GROUP", help="Only the hosts of GROUP (repeatable)."
        ),
        serial: int = typer.Option(
            0, "--serial", metavar="N", show_default=False, help="Hosts at a time (default: all)."
        ),
        max_fail_percent: float = typer.Option(
            100.0,
            "--max-fail-percent",
            metavar="P",
            help="Start no new batch once more than P% of the hosts failed.",
        ),
        upgrade: bool = typer.Option(
            False, "--upgrade", help="Rolling upgrade: drain, reinstall and restart joined hosts."
        ),
        wheel: Path = typer.Option(
            None,
            "--wheel",
            metavar="FILE",
            help="Deploy this wheel (default: build this checkout).",
        ),
        wheelhouse: Path = typer.Option(
            None, "--wheelhouse", metavar="DIR", help="Dependency wheels the hosts install from."
        ),
        address: str = typer.Option(
            "",
            "--address",
            metavar="HOST:PORT",
            show_default=False,
            help="Where the hosts dial the node pool (default: as join-token says).",
        ),
        python: str = typer.Option(
            "python3",
            "--python",
            metavar="COMMAND",
            help="The hosts' Python (unless set per host).",
        ),
        check: list[str] = typer.Option(
            [], "--check", metavar="ID", help="A doctor check each host must pass (repeatable)."
        ),
        timeout: float = typer.Option(
            300.0, "--timeout", metavar="SECONDS", help="Seconds each remote command may take."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        ssh_key: Path = SSH_KEY_OPTION,
        known_hosts: Path = KNOWN_HOSTS_OPTION,
        insecure_host_key: bool = INSECURE_HOST_KEY_OPTION,
    ) -> None:
        """Install this checkout on the inventory's hosts over SSH (a venv in each host's
        HIVEMIND_HOME) and join each as a worker of this host's node pool; check each with
        its own doctor. Exits 1 when any host failed or was skipped."""
        from hivemind.deploy import DEFAULT_DOCTOR_CHECKS, DeployOptions, deploy
        from hivemind.deploy.model import hosts_from_inventory
        from hivemind.remote import load_inventory

        loaded = load_inventory(inventory)
        hosts = hosts_from_inventory(loaded, group, python)
        if not hosts:
            where = f" in {', '.join(group)}" if group else ""
            fail(f"no host of {inventory}{where}", 2)
        options = DeployOptions(
            ssh=ssh_options(ssh_key, known_hosts, insecure_host_key, "hivemind"),
            serial=serial,
            max_fail_percent=max_fail_percent,
            upgrade=upgrade,
            wheel=wheel,
            wheelhouse=wheelhouse,
            join_address=address,
            doctor_checks=tuple(check) or DEFAULT_DOCTOR_CHECKS,
            command_timeout=timeout,
        )
        if as_json:
            summary = deploy(settings(), hosts, options)
            print_json(summary.to_dict())
        else:
            progress = _Progress(hosts)
            with Live(progress.table(), console=console, transient=True) as live:
                progress.live = live
                summary = deploy(settings(), hosts, options, progress.on_event)
            _render_summary(summary)
        if not summary.ok:
            raise typer.Exit(1)

    @app.command("worker-start")
    @command
    def worker_start(
        node_id: str = JOINED_NODE_ID_OPTION,
        label: list[str] = typer.Option(
            [], "--label", metavar="LABEL", help="A label to advertise (repeatable)."
        ),
    ) -> None:
        """Start the worker `hivemind join` set up on this host, in the background (again,
        after `hivemind down`); return once it registered with the node pool."""
        from hivemind.deploy.worker_start import start_joined_worker

        console.print(escape(start_joined_worker(settings(), node_id, label)), soft_wrap=True)

    @app.command("worker-stop")
    @command
    def worker_stop(
        node_id: str = JOINED_NODE_ID_OPTION,
    ) -> None:
        """Stop the worker `hivemind join` set up on this host (its systemd unit, or the pid
        supervisor's), once it finished or handed back its tasks."""
        from hivemind.deploy.worker_start import stop_joined_worker

        console.print(escape(stop_joined_worker(settings(), node_id)), soft_wrap=True)
