"""Futures for tasks on the cluster, resolved by one collector per session.

A :class:`HiveMindFuture` is a :class:`concurrent.futures.Future`, so ``result``,
``exception``, ``add_done_callback``, ``concurrent.futures.wait`` and ``as_completed`` all work
on it. No future polls: the session's collector thread holds every pending task id and makes
one ``WaitTasks(first_completed)`` call at a time for all of them, which the node pool answers
as soon as any has ended; it resolves those futures in the order the tasks finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from hivemind import pickled
from hivemind.api.errors import (
    AuthenticationExpired,
    HiveMindAPIError,
    NodePoolUnavailable,
    TaskLost,
    TaskTimedOut,
    task_failed,
)
from hivemind.errors import NodePoolError
from hivemind.states import is_terminal

if TYPE_CHECKING:
    from hivemind.client import Client
    from hivemind.proto import hivemind_pb2 as pb

log = logging.getLogger(__name__)

#: Seconds one collector call waits on the node pool before asking again (so that futures
#: added meanwhile join the next call within this long).
COLLECT_WAIT = 0.25
#: Seconds the collector lets more tasks end before its next call, per pending future, up to
#: COLLECT_LINGER_MAX: a call costs the node pool a status read per id sent, so with many
#: pending one call should bring many outcomes (a lone future is answered without it).
COLLECT_LINGER_PER_PENDING = 0.0001
COLLECT_LINGER_MAX = 0.1
#: Most task ids in one collector call; the oldest pending go first.
COLLECT_IDS_MAX = 1000
#: Seconds the node pool may stay unreachable before pending futures fail with
#: NodePoolUnavailable (their tasks are not lost: `hivemind task show ID` finds them).
UNREACHABLE_GRACE = 60.0
#: Marks the line where a worker's error message gives the traceback.
TRACEBACK_START = "Traceback (most recent call last):"


_RESOLVED = itertools.count(1)
#: Held while a future makes its Condition or is resolved without one (HiveMindFuture._finish).
_CONDITION_MADE = threading.Lock()
_DONE_STATES = frozenset({cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED, cf._base.FINISHED})


class HiveMindFuture(cf.Future[Any]):
    """The outcome of one task: ``task_id``; ``progress`` and ``logs()`` ask the node pool."""

    def __init__(self, task_id: str, client: Client, collector: Collector) -> None:
        # What concurrent.futures.Future.__init__ sets, but the Condition (see _condition).
        self._state = cf._base.PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self._made_condition: threading.Condition | None = None
        self.task_id = task_id
        self.resolved_order = 0  # when the collector resolved it, for as_completed
        self._client = client
        self._collector = collector

    # A future of a batch is resolved by the collector and read once by its owner, usually
    # with nobody waiting on it at that moment. concurrent.futures.Future takes a Condition
    # for every step, and a Condition is ten objects for the garbage collector: for 10,000
    # tasks that cost the client more than its calls to the node pool. So the Condition is
    # made only when a thread waits on the future or adds a callback, and until then the
    # collector sets the outcome without one (see _finish).

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        condition = self._made_condition
        if condition is None:
            with _CONDITION_MADE:
                condition = self._made_condition
                if condition is None:
                    condition = self._made_condition = threading.Condition()
        return condition

    def _finish(self, value: Any = None, error: BaseException | None = None) -> None:
        """Set the outcome once: without a Condition while none was made (then no thread
        waits on this future and it has no callbacks), else the base class's way."""
        with _CONDITION_MADE:
            if self._made_condition is None:
                if self._state == cf._base.PENDING:
                    self._result, self._exception = value, error
                    self._state = cf._base.FINISHED  # last: readers check it first
                return
        try:
            if error is None:
                self.set_result(value)
            else:
                self.set_exception(error)
        except cf.InvalidStateError:
            pass  # cancelled meanwhile: that outcome stands

    def done(self) -> bool:
        return self._state in _DONE_STATES  # one attribute read: no lock needed

    def result(self, timeout: float | None = None) -> Any:
        if self._state == cf._base.FINISHED:  # final once set
            if self._exception is not None:
                raise self._exception
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == cf._base.FINISHED:
            return self._exception
        return super().exception(timeout)

    def __repr__(self) -> str:
        return f"<HiveMindFuture {self.task_id} {self._state.lower()}>"  # type: ignore[attr-defined]

    def cancel(self) -> bool:
        """Cancel the task on the cluster (a running one is stopped on its worker). False when
        it had ended already."""
        if self.done():
            return False
        try:
            task = self._client.cancel(self.task_id)
        except NodePoolError as exc:
            raise api_error(exc) from None
        if task.status != "CANCELLED" and not task.cancel_requested:
            return False  # it ended first: the collector resolves it
        self._collector.forget(self.task_id)
        return self._mark_cancelled()

    def _mark_cancelled(self) -> bool:
        if not super().cancel():
            return False
        self.set_running_or_notify_cancel()  # wakes concurrent.futures.wait and as_completed
        return True

    @property
    def progress(self) -> float:
        """The fraction the task last reported (one call to the node pool)."""
        try:
            return self._client.get(self.task_id).progress
        except NodePoolError as exc:
            raise api_error(exc) from None

    def logs(self) -> str:
        """What the task wrote to its log so far."""
        try:
            return "".join(self._client.stream_log(self.task_id))
        except NodePoolError as exc:
            raise api_error(exc) from None

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def _resolve(self, task: pb.Task) -> None:
        if self.done():
            return
        self.resolved_order = next(_RESOLVED)
        if task.status == "SUCCEEDED":
            value = json.loads(task.result_json) if task.result_json else None
            if task.spec.function == pickled.FUNCTION:
                value = pickled.decode_result(value)
            self._finish(value)
        elif task.status == "CANCELLED":
            self._mark_cancelled()
        elif task.status == "TIMEOUT":
            self._finish(error=TaskTimedOut(f"task {task.id}: {task.error_message}"))
        elif "was lost" in task.error_message and "no retries are left" in task.error_message:
            self._finish(error=TaskLost(f"task {task.id}: {task.error_message}"))
        else:
            self._finish(error=remote_error(task.error_message))


def remote_error(message: str) -> Exception:
    """The task's error as raised on the worker: ``Type: text (at file:line in fn)`` and,
    after it, the traceback."""
    summary, _, rest = message.partition("\n")
    start = rest.find(TRACEBACK_START)
    traceback = rest[start:].strip() if start >= 0 else ""
    remote_type = summary.split(":", 1)[0].strip() if ":" in summary else ""
    if not remote_type.isidentifier():
        remote_type = ""
    return task_failed(summary, remote_type, traceback)


def api_error(exc: NodePoolError) -> Exception:
    """The API's class for a node pool refusal."""
    if exc.code in ("UNAVAILABLE", "TLS"):
        return NodePoolUnavailable(str(exc))
    if exc.code == "UNAUTHENTICATED":
        return AuthenticationExpired(f"{exc}; log in again (`hivemind login`)")
    return exc


class Collector:
    """The one thread of a session that waits for all its pending tasks."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls = 0  # WaitTasks calls made: what a test counts
        self._pending: dict[str, HiveMindFuture] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def watch(self, futures: Iterable[HiveMindFuture]) -> None:
        with self._cond:
            for future in futures:
                self._pending[future.task_id] = future
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hivemind-collector", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def pending(self) -> list[HiveMindFuture]:
        with self._cond:
            return list(self._pending.values())

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._pending.pop(task_id, None)

    def close(self) -> None:
        """Stop collecting; futures still pending fail (their tasks run on)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(COLLECT_WAIT + 35)
        self._fail_all(
            HiveMindAPIError(
                "the session was closed before this task ended; the task itself runs on "
                "(`hivemind task show ID`)"
            )
        )

    def _run(self) -> None:
        unreachable_since = 0.0
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                ids = list(itertools.islice(self._pending, COLLECT_IDS_MAX))
            try:
                ended = self.client.wait(ids, COLLECT_WAIT, first_completed=True)
                self.calls += 1
                unreachable_since = 0.0
            except NodePoolError as exc:
                error = api_error(exc)
                if isinstance(error, NodePoolUnavailable):
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since < UNREACHABLE_GRACE:
                        log.warning("node pool unreachable, waiting: %s", exc)
                        time.sleep(1.0)
                        continue
                if isinstance(error, AuthenticationExpired | NodePoolUnavailable):
                    self._fail_all(error)
                else:  # one task the node pool refuses (gone, not ours): find which
                    self._check_each(ids)
                continue
            ended.sort(key=lambda task: task.finished_at)
            for task in ended:
                with self._cond:
                    future = self._pending.pop(task.id, None)
                if future is not None:
                    future._resolve(task)
            if ended and len(self._pending) > 1:
                time.sleep(min(COLLECT_LINGER_MAX, len(self._pending) * COLLECT_LINGER_PER_PENDING))

    def _check_each(self, ids: list[str]) -> None:
        """Ask for each task alone: resolve those that ended, fail those refused."""
        for task_id in ids:
            try:
                task = self.client.get(task_id)
            except NodePoolError as exc:
                with self._cond:
                    future = self._pending.pop(task_id, None)
                if future is not None and not future.done():
                    future.set_exception(api_error(exc))
                continue
            if is_terminal(task.status):
                with self._cond:
                    future = self._pending.pop(task_id, None)
                if future is not None:
                    future._resolve(task)

    def _fail_all(self, error: Exception) -> None:
        with self._cond:
            futures, self._pending = list(self._pending.values()), {}
        for future in futures:
            if not future.done():
                future.set_exception(error)


def wait(
    futures: Iterable[cf.Future[Any]],
    timeout: float | None = None,
    return_when: str = cf.ALL_COMPLETED,
) -> cf._base.DoneAndNotDoneFutures[Any]:  # type: ignore[name-defined]
    """:func:`concurrent.futures.wait` for HiveMind futures (their collector does the
    waiting: one node pool call for all of them, not one per future)."""
    return cf.wait(futures, timeout, return_when)


def as_completed(
    futures: Iterable[cf.Future[Any]], timeout: float | None = None
) -> Iterator[cf.Future[Any]]:
    """Each future once, as its task ends: those done already first, in the order they
    resolved (:func:`concurrent.futures.as_completed` gives those in no order)."""
    given = list(dict.fromkeys(futures))
    done = sorted((f for f in given if f.done()), key=_resolved_order)
    yield from done
    already = set(done)
    rest = [f for f in given if f not in already]
    if rest:
        yield from cf.as_completed(rest, timeout)


def _resolved_order(future: cf.Future[Any]) -> int:
    return getattr(future, "resolved_order", 0)


async def as_completed_async(futures: Iterable[cf.Future[Any]]) -> AsyncIterator[cf.Future[Any]]:
    """``async for future in as_completed_async(futures)``: each future once, as it ends."""
    wrapped = {asyncio.wrap_future(f): f for f in futures}
    pending: set[asyncio.Future[Any]] = set(wrapped)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for item in done:
            yield wrapped[item]
