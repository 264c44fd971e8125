"""The Python API: ``connect``, futures, an Executor, ``wait``/``as_completed``, ``@task``.

``hivemind.connect``, ``hivemind.Executor``, ``hivemind.wait`` and ``hivemind.as_completed``
are these, loaded on first use. The decorator is ``hivemind.api.task`` (``hivemind.task`` is
the module a task's own code calls for progress and checkpoints). See docs/python-api.md.
"""

from __future__ import annotations

from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION

from hivemind.api.decorator import TaskFunction, task
from hivemind.api.errors import (
    AuthenticationExpired,
    HiveMindAPIError,
    NodePoolUnavailable,
    NotShippable,
    TaskFailed,
    TaskLost,
    TaskTimedOut,
    ValueTooLarge,
)
from hivemind.api.executor import Executor
from hivemind.api.futures import HiveMindFuture, as_completed, as_completed_async, wait
from hivemind.api.session import Session, connect

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AuthenticationExpired",
    "Executor",
    "HiveMindAPIError",
    "HiveMindFuture",
    "NodePoolUnavailable",
    "NotShippable",
    "Session",
    "TaskFailed",
    "TaskFunction",
    "TaskLost",
    "TaskTimedOut",
    "ValueTooLarge",
    "as_completed",
    "as_completed_async",
    "connect",
    "task",
    "wait",
]
