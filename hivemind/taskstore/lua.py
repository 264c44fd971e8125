"""Running the task scripts: EVALSHA straight on a connection of their own.

A task's round trip runs two scripts, each after the node pool has sat idle for a few
milliseconds, and on the 2-core bench VM every layer of Python between the handler and the
socket costs far more cold than warm. Two layers are skipped here:

- redis-py's ``Script`` and command layer (options, response callbacks, metrics hooks):
  about 150 µs per cold call;
- redis-py's pool checkout and return (a lock, connection-count metrics on both sides, and a
  ``select`` on the socket to prove it holds no stale reply): about 200 µs per cold call.
  The scripts keep their own free list instead. A connection goes back on it in a known
  state: redis-py disconnects a connection whose send or read failed for any reason, so it
  never holds half a reply or a late one.

Connecting, the client's retry policy, health checks and parsing are still redis-py's own,
on connections made from the client pool's own class and options.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError


class NotReplicated(redis.exceptions.ConnectionError):
    """No replica confirmed a write that must outlive the primary (or the primary refused it,
    having none). A connection error, so the client's retry policy runs the script again,
    after a failover on the new primary: the durable scripts are safe to run twice."""


class ScriptConnections:
    """Redis connections kept for the task scripts, one per script call in flight."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        # deque's append and pop are atomic: no lock on the hot path.
        self._idle: deque[AbstractConnection] = deque()

    def take(self) -> AbstractConnection:
        try:
            return self._idle.pop()
        except IndexError:
            # Connects on its first command, as the pool's own connections do.
            return self._pool.connection_class(**self._pool.connection_kwargs)

    def give_back(self, connection: AbstractConnection) -> None:
        self._idle.append(connection)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().disconnect()


class LuaScript:
    """``observe``: given the seconds each call took (the node pool's metrics).

    ``durable``: ``(replicas, ms)`` for a write that must outlive the primary: after the
    script, ``WAIT replicas ms`` on the same connection (WAIT counts that connection's
    writes). Fewer in time: ``unreplicated(acked)``, then :class:`NotReplicated`, so the
    write is not acknowledged.
    """

    def __init__(
        self,
        connections: ScriptConnections,
        body: str,
        observe: Callable[[float], None] | None = None,
        durable: tuple[int, int] | None = None,
        unreplicated: Callable[[int], None] | None = None,
    ) -> None:
        self.connections = connections
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()
        self.observe = observe
        self.durable = durable
        self.unreplicated = unreplicated

    def __call__(self, args: Sequence[object] = ()) -> Any:
        connection = self.connections.take()
        began = time.perf_counter()
        try:
            # As redis-py does: retry what its retry policy covers, on a fresh connection.
            return connection.retry.call_with_retry(
                lambda: self._run(connection, args), lambda _error: connection.disconnect()
            )
        finally:
            self.connections.give_back(connection)
            if self.observe is not None:
                self.observe(time.perf_counter() - began)

    def _run(self, connection: AbstractConnection, args: Sequence[object]) -> Any:
        if not connection.is_connected:
            # connect() itself, not send_command's own: a Sentinel-managed connection asks
            # the Sentinels for the primary only in connect(), and would dial localhost.
            connection.connect()
        try:
            reply, acked = self._evalsha(connection, args)
        except NoScriptError:  # a restarted or flushed Redis: load it, then run it
            connection.send_command("SCRIPT", "LOAD", self.body)
            connection.read_response()
            reply, acked = self._evalsha(connection, args)
        if isinstance(reply, ResponseError):
            # Inside a script the error reads "Error running script …: -NOREPLICAS …".
            if self.durable is not None and "NOREPLICAS" in str(reply):
                raise NotReplicated(str(reply)) from None  # min-replicas-to-write: no replica
            raise reply
        if self.durable is not None and acked < self.durable[0]:
            if self.unreplicated is not None:
                self.unreplicated(acked)
            raise NotReplicated(f"no replica confirmed the write within {self.durable[1]} ms")
        return reply

    def _evalsha(self, connection: AbstractConnection, args: Sequence[object]) -> tuple[Any, int]:
        """The script's reply (a ResponseError returned, not raised, once the WAIT's reply is
        read too) and, for a durable script, how many replicas confirmed it."""
        connection.send_command("EVALSHA", self.sha, 0, *args)
        if self.durable is not None:
            # Sent with the script, not after its reply: one round trip per write, not two.
            connection.send_command("WAIT", *self.durable)
        try:
            reply = connection.read_response()
        except ResponseError as exc:
            reply = exc
        acked = int(connection.read_response()) if self.durable is not None else 0
        if isinstance(reply, NoScriptError):
            raise reply
        return reply, acked
