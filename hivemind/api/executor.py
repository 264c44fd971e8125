"""`hivemind.Executor`: the cluster as a :class:`concurrent.futures.Executor`, for
``executor.map``, ``loop.run_in_executor`` and any code that takes an Executor."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hivemind.api.futures import HiveMindFuture
from hivemind.api.session import MAP_BATCH, Session, connect


class Executor(cf.Executor):
    """Runs calls as tasks. ``session``: one to share (else it connects as
    :func:`hivemind.connect` does and closes it at shutdown); ``options``: task defaults
    (labels, timeout, retries, priority, cpu, memory_mb, gpu)."""

    def __init__(self, session: Session | None = None, **options: Any) -> None:
        self._owns_session = session is None
        self.session = session or connect()
        self.options = options
        self._shut = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> HiveMindFuture:
        if self._shut:
            raise RuntimeError("cannot submit after shutdown")
        if kwargs:
            raise TypeError(
                "keyword arguments do not cross to a worker (arguments are a JSON list): pass "
                "them positionally"
            )
        return self.session.submit(fn, *args, **self.options)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = MAP_BATCH,
    ) -> Iterator[Any]:
        """Like the builtin ``map``, with bounded memory; ``chunksize`` calls per request."""
        return self.session.map(
            fn, *iterables, timeout=timeout, chunksize=chunksize, **self.options
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            for future in self.session.collector.pending():
                future.cancel()
        self._shut = True
        if self._owns_session:
            self.session.close()
