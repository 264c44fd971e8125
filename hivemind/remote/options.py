"""How to reach other hosts over SSH: the one options type of every command that does.

The doctor (`hivemind doctor --host`), the playbook engine (`hivemind playbook run --host`,
`hivemind recover --host`) and `hivemind backup --host` all take the same SSH settings; they
carry them as one :class:`SSHOptions` and open their runners with :meth:`SSHOptions.open`.
This module imports no SSH stack: paramiko is loaded only when a connection is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hivemind.remote.runner import DEFAULT_CONNECT_TIMEOUT, Runner

if TYPE_CHECKING:
    from hivemind.remote.ssh import SSHTarget

#: How `hivemind` is run on the other hosts, unless told otherwise.
DEFAULT_REMOTE_HIVEMIND = "hivemind"


@dataclass(frozen=True)
class SSHOptions:
    """The SSH settings of a command that reaches other hosts (the host itself is not one)."""

    #: Private key to authenticate with; None: the SSH agent and ``~/.ssh``.
    key_file: Path | None = None
    #: known_hosts to check host keys against; None: ``~/.ssh/known_hosts``.
    known_hosts: Path | None = None
    #: Accept a host key known_hosts does not have (never one that differs from it).
    insecure_host_key: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: How `hivemind` is run on the hosts (a shell command prefix).
    hivemind: str = DEFAULT_REMOTE_HIVEMIND

    def open(self, target: SSHTarget | str | None) -> Runner:
        """A runner for ``target`` with these settings (None: this host, no SSH)."""
        from hivemind.remote import open_runner

        return open_runner(
            target,
            key_file=self.key_file,
            known_hosts=self.known_hosts,
            insecure_host_key=self.insecure_host_key,
            connect_timeout=self.connect_timeout,
        )
