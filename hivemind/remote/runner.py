"""The one interface every remote step is written against: run a command, move files.

:class:`LocalRunner` (this host, subprocess) and :class:`SSHRunner` (paramiko) implement it,
so a playbook step, a doctor probe or a backup does the same thing on this host and on a
host reached over SSH.
"""

from __future__ import annotations

import abc
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hivemind.errors import UsageError

#: Seconds to connect and authenticate before a host counts as unreachable.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: ``sudo`` that never prompts: a step that needs a password fails instead of hanging.
SUDO_PREFIX: tuple[str, ...] = ("sudo", "-n", "--")

Command = Sequence[str] | str


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def text(self) -> str:
        """stdout decoded (invalid bytes replaced), for probes that parse it."""
        return self.stdout.decode("utf-8", "replace")


def command_text(argv: Command) -> str:
    """``argv`` as one shell line: a string is already one, a list is quoted word by word."""
    return argv if isinstance(argv, str) else shlex.join(argv)


def compose_argv(argv: Command, *, env: Mapping[str, str] | None, sudo: bool) -> list[str]:
    """The argv that runs ``argv`` with ``env`` added, under ``sudo -n`` when asked.

    A string is a shell command (``sh -c``); a list runs as it is. The variables go through
    ``env K=V``, which survives sudo and needs no ``AcceptEnv`` on an SSH server, so both
    runners give a command the same environment.
    """
    if not argv:
        raise UsageError("an empty command cannot be run")
    words = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
    if env:
        for name in env:
            if not name or "=" in name:
                raise UsageError(f"malformed environment variable name {name!r}")
        words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
    return [*SUDO_PREFIX, *words] if sudo else words


class Runner(abc.ABC):
    """Runs commands and moves files on one host. Use it as a context manager."""

    #: A label for messages and per-host reports: ``local`` or ``user@host:port``.
    host: str

    @abc.abstractmethod
    def run(
        self,
        argv: Command,
        *,
        timeout: float,
        input: bytes | None = None,
        sudo: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` (a list, or a string for the shell) and wait at most ``timeout`` s.

        A non-zero exit is a result, not an error. Raises :class:`CommandTimeout` when the
        command outlives ``timeout`` (it is stopped), :class:`RemoteError` when the host
        cannot be used at all.
        """

    @abc.abstractmethod
    def read_file(self, path: str) -> bytes:
        """The bytes of ``path`` on the host; :class:`RemoteError` when it cannot be read."""

    @abc.abstractmethod
    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``path`` on the host whole (a temp file renamed into place) with ``mode``."""

    @abc.abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy the host's file ``remote`` to ``local`` on this machine."""

    @abc.abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy this machine's file ``local`` to ``remote`` on the host."""

    @abc.abstractmethod
    def which(self, tool: str) -> str | None:
        """The path of ``tool`` on the host's PATH, or None."""

    def close(self) -> None:  # noqa: B027 - a runner without connections has nothing to close
        """Release connections; the runner cannot be used afterwards."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host!r})"


def check_tool_name(tool: str) -> str:
    """A tool name safe to look up: one word, no path tricks or shell characters."""
    if not tool or not all(c.isalnum() or c in "-_.+" for c in tool):
        raise UsageError(f"not a tool name: {tool!r}")
    return tool
