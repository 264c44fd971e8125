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
