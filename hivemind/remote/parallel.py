"""Run one function on many hosts at once, and report every host, whatever the others did."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from hivemind.errors import HivemindError

H = TypeVar("H")
T = TypeVar("T")

DEFAULT_PARALLEL = 16


@dataclass(frozen=True)
class HostResult(Generic[T]):
    host: str
    value: T | None
    #: The message of what went wrong on this host; None when it succeeded.
    error: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.error is None


def for_each_host(
    hosts: Sequence[H],
    fn: Callable[[H], T],
    *,
    label: Callable[[H], str] = str,
    max_parallel: int = DEFAULT_PARALLEL,
) -> list[HostResult[T]]:
    """``fn(host)`` for every host in a thread pool; one result per host, in input order.

    An exception on one host becomes that host's ``error`` (expected failures by their
    message, anything else with its type), so one dead host never hides the others.
    """

    def one(host: H) -> HostResult[T]:
        started = time.monotonic()
        try:
            value = fn(host)
        except HivemindError as exc:
            return HostResult(label(host), None, str(exc), time.monotonic() - started)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            return HostResult(label(host), None, error, time.monotonic() - started)
        return HostResult(label(host), value, None, time.monotonic() - started)

    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(hosts)))) as pool:
        return list(pool.map(one, hosts))
