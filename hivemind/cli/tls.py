"""`hivemind tls`: the node pool's certificates: status, CA rotation, certificates by hand."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import typer
from rich.markup import escape

from hivemind.cli.common import command, console, settings

tls_app = typer.Typer(
    help="The node pool's CA and certificates: status, rotation, issuing.", no_args_is_help=True
)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


@tls_app.command("status")
@command
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The CAs this node pool trusts, its certificate, and a rotation's grace period."""
    from hivemind.tls_rotation import tls_status

    found = tls_status(settings())
    if as_json:
        print(json.dumps(dataclasses.asdict(found), default=str, indent=2))
        return
    for ca in found.cas:
        console.print(
            f"{ca.role} CA: {escape(ca.subject)} {ca.fingerprint} (until {ca.not_after})",
            soft_wrap=True,
            highlight=False,
        )
    console.print(
        f"server certificate until {found.server_not_after} for "
        f"{escape(', '.join(found.server_names))}",
        soft_wrap=True,
        highlight=False,
    )
    rotation = found.rotation
    if rotation.in_grace():
        console.print(
            f"rotated {_when(rotation.rotated_at)}; the previous CA is trusted until "
            f"{_when(rotation.grace_until)} (`hivemind tls rotate --finish` ends it sooner)",
            highlight=False,
        )
    elif rotation.previous_fingerprint:
        console.print(
            "the grace period is over: the previous CA is no longer trusted; "
            "`hivemind tls rotate --finish` tidies ca.crt",
            highlight=False,
        )


@tls_app.command("rotate")
@command
def rotate(
    grace: float = typer.Option(
        7.0, "--grace", metavar="DAYS", help="Days the old CA stays trusted."
    ),
    finish: bool = typer.Option(
        False, "--finish", help="End the grace period now: stop trusting the old CA."
    ),
) -> None:
    """Make a new CA and server certificate; workers renew onto it while they run."""
    from hivemind import tls_rotation

    if finish:
        old = tls_rotation.finish(settings())
        console.print(f"the previous CA ({old}) is no longer trusted", highlight=False)
        return
    report = tls_rotation.rotate(settings(), grace)
    console.print(
        f"new CA {report.new_fingerprint} (was {report.old_fingerprint}); the node pool "
        "uses it for new connections now",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"the old CA stays trusted until {_when(report.grace_until)}: running workers renew "
        "their certificates at their next heartbeat; hosts without a worker (a CLI elsewhere) "
        "need the new ca.crt before then",
        soft_wrap=True,
        highlight=False,
    )


@tls_app.command("issue")
@command
def issue(
    node_id: str = typer.Argument(
        "", metavar="[NODE_ID]", help="The worker it is for (none: a client naming no worker)."
    ),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Where to write the files."),
) -> None:
    """Issue a client certificate (mutual TLS) for a host set up by hand."""
    from hivemind.client_certs import issue_to

    for path in issue_to(settings(), node_id, out):
        console.print(escape(str(path)), soft_wrap=True, highlight=False)
    console.print(
        "on that host: TLS_CA_FILE, TLS_CERT_FILE and TLS_KEY_FILE name these files",
        highlight=False,
    )
