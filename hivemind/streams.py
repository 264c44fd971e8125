"""Requests and replies over one long-lived gRPC stream, with a call of its own as fallback.

A message on an open bidirectional stream costs both ends about 60 % of what a unary call
does, and the server half the CPU (``bench/floor.py``). Both ends keep a call's meaning:
each request gets exactly one reply, in order, and an error ends the stream (the next
request opens another). A server without such a stream (UNIMPLEMENTED) or without room for
another (RESOURCE_EXHAUSTED) has not read the request: it goes as a call instead, and so do
the requests of the next ``retry_after`` seconds.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import grpc

from hivemind.errors import NodePoolError

Request = TypeVar("Request")
Reply = TypeVar("Reply")

#: Opens the stream: (requests, deadline in seconds) -> replies.
Opener = Callable[[Iterator[Request], float], Iterator[Reply]]
#: Makes one call: (request, timeout in seconds) -> reply.
Caller = Callable[[Request, float], Reply]

_REFUSED = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class _Stream(Generic[Request, Reply]):
    """One open call: each request put in gets exactly one reply out, in order."""

    def __init__(self, opener: Opener[Request, Reply], lifetime: float) -> None:
        self._requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self.ends_at = time.monotonic() + lifetime
        self._replies = opener(iter(self._requests.get, None), lifetime)

    def exchange(self, request: Request) -> Reply:
        self._requests.put(request)
        try:
            return next(self._replies)
        except StopIteration:
            raise NodePoolError("the node pool closed the stream", "UNAVAILABLE") from None

    def ended(self) -> bool:
        """The call is over: the server restarted, or the connection broke, while idle."""
        return bool(self._replies.done())  # type: ignore[attr-defined]

    def close(self) -> None:
        self._requests.put(None)  # ends gRPC's thread that sends the requests
        self._replies.cancel()  # type: ignore[attr-defined]


class StreamedCalls(Generic[Request, Reply]):
    """Sends each request over the stream when it can, else as a call.

    ``lifetime`` is each stream's deadline; a request that could outlast what is left of it
    goes over a fresh stream, and one that could outlast a whole lifetime goes as a call.
    The first ``after_calls`` requests go as calls: a one-off user opens no stream. One
    request at a time uses the stream; a request made meanwhile goes as a call.
    """

    def __init__(
        self,
        opener: Opener[Request, Reply],
        lifetime: float,
        retry_after: float,
        after_calls: int = 0,
    ) -> None:
        self._opener = opener
        self._lifetime = lifetime
        self._retry_after = retry_after
        self._calls_left = after_calls
        self._stream: _Stream[Request, Reply] | None = None
        self._lock = threading.Lock()
        self._calls_until = 0.0

    def send(self, request: Request, timeout: float, call: Caller[Request, Reply]) -> Reply:
        """The reply to ``request``. Raises ``grpc.RpcError`` from the stream, and whatever
        ``call`` raises."""
        if self._calls_left > 0:
            self._calls_left -= 1
        elif (
            timeout < self._lifetime
            and time.monotonic() >= self._calls_until
            and self._lock.acquire(blocking=False)
        ):
            try:
                reply = self._over_stream(request, timeout)
            finally:
                self._lock.release()
            if reply is not None:
                return reply
        return call(request, timeout)

    def close(self) -> None:
        """End the stream; a request waiting on it gets an error (it may be mid-reply)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _over_stream(self, request: Request, timeout: float) -> Reply | None:
        stream = self._stream
        # A request must not go to a stream that is over, or that its deadline would cut.
        if stream is not None and (stream.ended() or time.monotonic() + timeout > stream.ends_at):
            stream.close()
            stream = None
        if stream is None:
            stream = self._stream = _Stream(self._opener, self._lifetime)
        try:
            return stream.exchange(request)
        except grpc.RpcError as exc:
            self._drop(stream)
            if exc.code() in _REFUSED:  # not read: it goes as a call
                self._calls_until = time.monotonic() + self._retry_after
                return None
            raise
        except NodePoolError:
            self._drop(stream)
            raise

    def _drop(self, stream: _Stream[Request, Reply]) -> None:
        stream.close()
        if self._stream is stream:
            self._stream = None
