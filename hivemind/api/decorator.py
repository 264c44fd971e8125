"""``@task(labels=..., timeout=..., retries=...)``: a function with task defaults, called
locally as ever, and with ``.submit`` and ``.map`` to run it on the cluster."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hivemind.api.futures import HiveMindFuture
from hivemind.api.session import Session, connect

_default: list[Session] = []
_default_lock = threading.Lock()


def default_session() -> Session:
    """The session ``.submit`` and ``.map`` use without one: connected on first use."""
    with _default_lock:
        if not _default:
            _default.append(connect())
        return _default[0]


class TaskFunction:
    def __init__(self, function: Callable[..., Any], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, function)
        self.function = function
        self.options = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def submit(self, *args: Any, session: Session | None = None) -> HiveMindFuture:
        return (session or default_session()).submit(self.function, *args, **self.options)

    def map(
        self, *iterables: Iterable[Any], session: Session | None = None, **kw: Any
    ) -> Iterator[Any]:
        options = dict(self.options)
        if "timeout" in options:  # the tasks' limit; map's own timeout waits for results
            options["task_timeout"] = options.pop("timeout")
        return (session or default_session()).map(self.function, *iterables, **options, **kw)


def task(function: Callable[..., Any] | None = None, **options: Any) -> Any:
    """``@task`` or ``@task(labels=["gpu"], timeout=60, retries=2)``."""
    if function is not None:
        return TaskFunction(function, {})
    return lambda fn: TaskFunction(fn, options)
