"""WireGuard setup: `hivemind vpn init` on the node pool's host, `vpn add-peer` per worker host."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from hivemind.cli.common import command, console, settings

vpn_app = typer.Typer(
    help="WireGuard keys and configs for workers on other networks.", no_args_is_help=True
)


@vpn_app.command("init")
@command
def init(
    endpoint: str = typer.Option(
        ...,
        "--endpoint",
        metavar="HOST",
        help="The name or address worker hosts dial to reach this one.",
    ),
    network: str = typer.Option("10.77.0.0/24", "--network", metavar="CIDR", help="VPN network."),
    port: int = typer.Option(51820, "--port", metavar="PORT", help="UDP port to listen on."),
) -> None:
    """Make this host's WireGuard key and interface config (the node pool's end)."""
    from hivemind.vpn import INTERFACE, init_vpn

    path = init_vpn(settings(), endpoint, network, port)
    console.print(f"wrote {escape(str(path))} (mode 0600)", soft_wrap=True)
    console.print(
        f"install it: sudo install -m 600 {escape(str(path))} /etc/wireguard/{INTERFACE}.conf "
        f"&& sudo wg-quick up {INTERFACE}; open UDP {port}",
        soft_wrap=True,
    )


@vpn_app.command("add-peer")
@command
def add_peer(
    name: str = typer.Argument(..., metavar="NAME", help="The worker host's name."),
) -> None:
    """Give a worker host an address and keys; print the config to install on it."""
    from hivemind.vpn import INTERFACE
    from hivemind.vpn import add_peer as add

    path, text = add(settings(), name)
    sys.stdout.write(text)
    console.print(
        f"# saved to {escape(str(path))} (0600); on {escape(name)}: install it as "
        f"/etc/wireguard/{INTERFACE}.conf (mode 600) and `sudo wg-quick up {INTERFACE}`; "
        f"here: `sudo wg syncconf {INTERFACE} <(wg-quick strip {INTERFACE})`",
        soft_wrap=True,
        highlight=False,
    )
