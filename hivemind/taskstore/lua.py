"""Running the task scripts: EVALSHA straight on a pooled redis-py connection.

redis-py's ``Script`` reaches the socket through its whole command layer (options, response
callbacks, metrics hooks) on every call. A task's round trip runs two scripts, each after
the node pool has sat idle for a few milliseconds, and on the 2-core bench VM a script call
made that cold took about 150 µs longer through that layer than on this short path.
Connections, their retries and their error handling are still redis-py's own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.connection import AbstractConnection
from redis.exceptions import NoScriptError


class LuaScript:
    def __init__(self, client: redis.Redis, body: str) -> None:
        self.client = client
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()

    def __call__(self, args: Sequence[object] = ()) -> Any:
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            # As redis-py does: retry what its retry policy covers, on a fresh connection.
            return connection.retry.call_with_retry(
                lambda: self._run(connection, args), lambda _error: connection.disconnect()
            )
        finally:
            pool.release(connection)

    def _run(self, connection: AbstractConnection, args: Sequence[object]) -> Any:
        connection.send_command("EVALSHA", self.sha, 0, *args)
        try:
            return connection.read_response()
        except NoScriptError:  # a restarted or flushed Redis: load it, then run it
            connection.send_command("SCRIPT", "LOAD", self.body)
            connection.read_response()
            connection.send_command("EVALSHA", self.sha, 0, *args)
            return connection.read_response()
