"""The exceptions the Python API raises, one class per thing that can go wrong.

Every one is a :class:`hivemind.errors.HivemindError`. A task's own exception comes back as
:class:`TaskFailed`; when the remote type is a builtin exception the error is also an
instance of it (``except ValueError`` catches a remote ``ValueError``), and
``remote_traceback`` holds the worker's traceback as text.
"""

from __future__ import annotations

import builtins

from hivemind.errors import HivemindError


class HiveMindAPIError(HivemindError):
    """Base of the Python API's errors."""


class NodePoolUnavailable(HiveMindAPIError):
    """The node pool cannot be reached (down, wrong address, TLS refused)."""


class AuthenticationExpired(HiveMindAPIError):
    """The token was refused: log in again (`hivemind login`) or pass a fresh one."""


class NotShippable(HiveMindAPIError):
    """A function that workers cannot import by name (a lambda, a closure, ``__main__``)."""


class ValueTooLarge(HiveMindAPIError):
    """Arguments or a result over MAX_TASK_DATA_SIZE; refused before anything was sent."""


class TaskTimedOut(HiveMindAPIError):
    """The task ran past its timeout on the worker."""


class TaskLost(HiveMindAPIError):
    """The task's worker was lost on every attempt its retries allowed."""


class TaskFailed(HiveMindAPIError):
    """The task's function raised. ``remote_type`` is the exception's class name."""

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = str(self.args[0]) if self.args else ""
        return f"{text}\n\nremote {self.remote_traceback}" if self.remote_traceback else text


_WITH_BUILTIN: dict[str, type[TaskFailed]] = {}


def task_failed(message: str, remote_type: str, remote_traceback: str) -> TaskFailed:
    """A TaskFailed that is also the builtin exception ``remote_type`` names, when it is one
    whose instances a subclass can share (ValueError, KeyError, ...)."""
    kind = _WITH_BUILTIN.get(remote_type)
    base = getattr(builtins, remote_type, None)
    if kind is None and isinstance(base, type) and issubclass(base, Exception):
        try:
            kind = type(f"Remote{remote_type}", (TaskFailed, base), {})
        except TypeError:  # a layout a subclass cannot share (OSError and kin)
            kind = TaskFailed
        _WITH_BUILTIN[remote_type] = kind
    return (kind or TaskFailed)(message, remote_type, remote_traceback)
