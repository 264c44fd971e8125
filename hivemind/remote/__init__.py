"""Running commands and moving files on this host or over SSH, through one interface.

with open_runner("root@10.0.0.5:22") as runner:      # or open_runner(None): this host
    result = runner.run(["redis-cli", "ping"], timeout=5)
"""

from __future__ import annotations

from pathlib import Path

from hivemind.errors import CommandTimeout, RemoteError
from hivemind.remote.inventory import Inventory, InventoryHost, load_inventory
from hivemind.remote.local import LOCAL_HOST, LocalRunner
from hivemind.remote.parallel import HostResult, for_each_host
from hivemind.remote.runner import CommandResult, Runner
from hivemind.remote.ssh import SSHRunner, SSHTarget, parse_target

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
    connect_timeout: float = 10.0,
) -> Runner:
    """A :class:`LocalRunner` for ``None`` (this host), else an :class:`SSHRunner`."""
    if host is None:
        return LocalRunner()
    return SSHRunner(
        host,
        key_file=key_file,
        known_hosts=known_hosts,
        insecure_host_key=insecure_host_key,
        connect_timeout=connect_timeout,
    )
