"""Running commands and moving files on this host or over SSH, through one interface.

with open_runner("root@10.0.0.5:22") as runner:      # or open_runner(None): this host
    result = runner.run(["redis-cli", "ping"], timeout=5)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemind.errors import CommandTimeout, RemoteError
from hivemind.remote.local import LOCAL_HOST, LocalRunner
from hivemind.remote.options import SSHOptions
from hivemind.remote.parallel import HostResult, for_each_host
from hivemind.remote.runner import DEFAULT_CONNECT_TIMEOUT, CommandResult, Runner

if TYPE_CHECKING:
    from hivemind.remote.inventory import Inventory, InventoryHost, load_inventory
    from hivemind.remote.ssh import SSHRunner, SSHTarget, parse_target

#: Names whose modules import paramiko, loaded on first use: a local-only command (the
#: doctor on this host) should not pay for importing an SSH stack.
_LAZY = {
    "Inventory": "hivemind.remote.inventory",
    "InventoryHost": "hivemind.remote.inventory",
    "load_inventory": "hivemind.remote.inventory",
    "SSHRunner": "hivemind.remote.ssh",
    "SSHTarget": "hivemind.remote.ssh",
    "parse_target": "hivemind.remote.ssh",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LOCAL_HOST",
    "CommandResult",
    "CommandTimeout",
    "HostResult",
    "Inventory",
    "InventoryHost",
    "LocalRunner",
    "RemoteError",
    "Runner",
    "SSHOptions",
    "SSHRunner",
    "SSHTarget",
    "for_each_host",
    "load_inventory",
    "open_runner",
    "parse_target",
]


def open_runner(
    host: str | SSHTarget | None,
    *,
    key_file: Path | str | None = None,
    known_hosts: Path | str | None = None,
    insecure_host_key: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Runner:
    """A :class:`LocalRunner` for ``None`` (this host), else an :class:`SSHRunner`."""
    if host is None:
        return LocalRunner()
    from hivemind.remote.ssh import SSHRunner

    return SSHRunner(
        host,
        key_file=key_file,
        known_hosts=known_hosts,
        insecure_host_key=insecure_host_key,
        connect_timeout=connect_timeout,
    )
