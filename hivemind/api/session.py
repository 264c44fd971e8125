"""`hivemind.connect()`: a session with the node pool, for submitting Python calls as tasks.

A session is thread-safe and a context manager. Functions go to workers by their import path
(``module:function``, which a worker must ``--allow``); arguments and results are JSON.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from hivemind import pickled
from hivemind.api.errors import NotShippable
from hivemind.api.futures import Collector, HiveMindFuture, api_error
from hivemind.api.values import encode_args, function_path
from hivemind.client import Client, function_spec
from hivemind.config import Settings, load_settings
from hivemind.errors import NodePoolError
from hivemind.proto import hivemind_pb2 as pb

#: Calls one submission request carries in ``map`` unless ``chunksize`` says otherwise.
MAP_BATCH = 1000
#: Submission batches ``map`` keeps in flight: what bounds its memory.
MAP_BATCHES_AHEAD = 2


class Session:
    """``pickle``: send functions without an import path (lambdas, closures) and their
    arguments by value with cloudpickle, to workers that ``--allow hivemind.pickled``."""

    def __init__(self, client: Client, max_data_size: int, pickle: bool = False) -> None:
        self.client = client
        self.max_data_size = max_data_size
        self.pickle = pickle
        self.collector = Collector(client)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.collector.close()
        self.client.close()

    def spec(
        self,
        function: Callable[..., Any] | str,
        args: Sequence[Any] = (),
        *,
        labels: Sequence[str] = (),
        timeout: float = 0,
        retries: int = -1,
        priority: int = 0,
        cpu: int = 0,
        memory_mb: int = 0,
        gpu: int = 0,
        name: str = "",
    ) -> pb.TaskSpec:
        """The task for ``function(*args)``; refused here (NotShippable, ValueTooLarge,
        TypeError) when a worker could not take it."""
        try:
            path = function_path(function)
        except NotShippable:
            if not self.pickle or isinstance(function, str):
                raise
            path, args = pickled.FUNCTION, [pickled.encode_call(function, args)]
            name = name or getattr(function, "__qualname__", "pickled call")
        return function_spec(
            path,
            args_json=encode_args(args, self.max_data_size),
            name=name,
            timeout=timeout,
            retries=retries,
            priority=priority,
            cpu=cpu,
            memory_mb=memory_mb,
            gpu=gpu,
            labels=labels,
        )

    def submit_specs(self, specs: Sequence[pb.TaskSpec]) -> list[HiveMindFuture]:
        try:
            ids = self.client.submit(specs)
        except NodePoolError as exc:
            raise api_error(exc) from None
        futures = [HiveMindFuture(task_id, self.client, self.collector) for task_id in ids]
        self.collector.watch(futures)
        return futures

    def submit(
        self, function: Callable[..., Any] | str, *args: Any, **options: Any
    ) -> HiveMindFuture:
        """Run ``function(*args)`` on the cluster. Options: labels, timeout, retries,
        priority, cpu, memory_mb, gpu, name."""
        [future] = self.submit_specs([self.spec(function, args, **options)])
        return future

    def map(
        self,
        function: Callable[..., Any] | str,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = MAP_BATCH,
        **options: Any,
    ) -> Iterator[Any]:
        """Results of ``function`` over the iterables, in order, like the builtin ``map``.
        Submits ``chunksize`` calls per request and keeps only MAP_BATCHES_AHEAD requests'
        futures at a time, so memory does not grow with the input. ``timeout``: seconds to
        wait for each result; ``task_timeout``: the tasks' own limit (``timeout`` of submit)."""
        if chunksize < 1:
            raise ValueError("chunksize must be at least 1")
        if "task_timeout" in options:
            options["timeout"] = options.pop("task_timeout")
        calls = zip(*iterables, strict=False)
        ahead: deque[HiveMindFuture] = deque()

        def refill() -> bool:
            batch = list(itertools.islice(calls, chunksize))
            if batch:
                ahead.extend(self.submit_specs([self.spec(function, a, **options) for a in batch]))
            return bool(batch)

        more = True
        while more and len(ahead) < chunksize * MAP_BATCHES_AHEAD:
            more = refill()
        try:
            while ahead:
                future = ahead.popleft()
                yield future.result(timeout)
                if more and len(ahead) < chunksize * (MAP_BATCHES_AHEAD - 1):
                    more = refill()
        finally:
            for future in ahead:  # the caller stopped early, or a call failed
                future.cancel()


def connect(
    address: str = "", token: str = "", settings: Settings | None = None, pickle: bool = False
) -> Session:
    """A session with the node pool at ``address`` (default: this host's settings, as the
    CLI uses), authenticated by ``token`` (default: the CLI's stored login); TLS as the
    settings say (TLS_CA_FILE and, for mutual TLS, TLS_CERT_FILE). ``pickle``: see
    :class:`Session` (a trust decision: off by default)."""
    from hivemind.credentials import load_token
    from hivemind.tls import client_security

    settings = settings or load_settings()
    address = address or settings.client_address
    token = token or load_token(address)
    client = Client(address, token, security=client_security(settings))
    return Session(client, settings.max_task_data_size, pickle)
