"""Cluster membership: join-token on the node pool's host, join on a new one."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from hivemind.cli.common import command, console, settings


def register(app: typer.Typer) -> None:
    @app.command("join-token")
    @command
    def join_token(
        label: list[str] = typer.Option(
            [],
            "--label",
            metavar="LABEL",
            show_default=False,
            help="A label the joined worker advertises (repeatable).",
        ),
        node_id: str = typer.Option(
            "",
            "--node-id",
            metavar="NODE_ID",
            show_default=False,
            help="The joined worker's id (default: the new host's name).",
        ),
        ttl: float = typer.Option(3600.0, "--ttl", metavar="SECONDS", help="How long it works."),
        address: str = typer.Option(
            "",
            "--address",
            metavar="HOST:PORT",
            show_default=False,
            help="Where the new host dials the node pool (default: this host's name).",
        ),
    ) -> None:
        """Print a one-time token with which `hivemind join` makes a new host a worker."""
        from hivemind.join import issue_join_token

        token = issue_join_token(settings(), ttl, tuple(label), node_id, address)
        sys.stdout.write(token + "\n")

    @app.command("join")
    @command
    def join(
        token: str = typer.Argument(..., metavar="TOKEN", help="What `join-token` printed."),
        node_id: str = typer.Option(
            "",
            "--node-id",
            metavar="NODE_ID",
            show_default=False,
            help="This worker's id (default: the token's, else this host's name).",
        ),
        start: bool = typer.Option(True, "--start/--no-start", help="Start the worker now."),
    ) -> None:
        """Join this host to the node pool of TOKEN: pin its CA, enrol, write worker/config/
        and hivemind.toml, and start the worker: a systemd unit where systemd runs (as root),
        else the pid supervisor (a single-use token; nothing is written when the node pool
        refuses it)."""
        from hivemind.join import join_and_start

        joined, started = join_and_start(settings(), token, node_id, start)
        console.print(
            f"joined [bold]{escape(joined.address)}[/] as worker [bold]{escape(joined.node_id)}[/]"
            + (f" (labels {escape(', '.join(joined.labels))})" if joined.labels else "")
        )
        for path in joined.written:
            console.print(f"  wrote {escape(str(path))}", soft_wrap=True)
        if started:
            console.print(escape(started), soft_wrap=True)
        else:
            console.print(f"start it with: hivemind worker --node-id {escape(joined.node_id)}")
