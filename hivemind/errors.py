"""The exceptions HiveMind raises on purpose. Each carries a message fit for a user."""

from __future__ import annotations


class HivemindError(Exception):
    """Base of every expected failure; the CLI prints its message and exits non-zero."""

    exit_code = 1


class ConfigError(HivemindError):
    """A setting is unknown, malformed or contradictory."""

    exit_code = 2


class UsageError(HivemindError):
    """The command line asked for something that cannot be done as asked."""

    exit_code = 2


class BundleError(HivemindError):
    """A task bundle is malformed or hostile (path traversal, links, zip bombs, oversize)."""


class NodePoolError(HivemindError):
    """The node pool refused a request or could not be reached."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class StackError(HivemindError):
    """The local stack (`hivemind up`) could not be started or stopped."""


class RemoteError(HivemindError):
    """A remote host could not be reached or used; the message names the host and why."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


class CommandTimeout(RemoteError):
    """A command ran longer than its timeout and was stopped."""

    def __init__(
        self, host: str, command: str, timeout: float, stdout: bytes = b"", stderr: bytes = b""
    ) -> None:
        super().__init__(host, f"`{command}` did not finish within {timeout:g} s and was stopped")
        self.command = command
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
