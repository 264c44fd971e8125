"""What a check reads the system through: settings, the home layout, the host and shared probes.

Probes that several checks need (Redis INFO, the worker list, the stack's pid files) are read
once per run and shared; a probe that cannot see its source raises :class:`Unavailable`, which
the engine turns into ``skip`` with the reason, never ``ok``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from hivemind import redis_client
from hivemind.config import Settings, redact_url
from hivemind.errors import RemoteError
from hivemind.paths import HomeLayout, layout
from hivemind.remote import LocalRunner, Runner

#: The exit status a shell gives for a command it cannot find.
COMMAND_NOT_FOUND = 127
#: Seconds each check may take unless told otherwise (`hivemind doctor --timeout`): the one
#: name of the doctor's per-check timeout. A run waits this long for all its checks at once,
#: probes give up a little sooner (:attr:`Context.probe_timeout`), a remote run connects
#: within it, and a playbook step that reads the doctor gives it no longer than this.
#: (Here rather than in :mod:`doctor.model`, which imports this module for its types.)
DEFAULT_CHECK_TIMEOUT = 5.0

T = TypeVar("T")


class Unavailable(Exception):
    """The source a check needs is not there (no Redis, no such tool); the check is skipped."""


@dataclass(frozen=True)
class CommandOutput:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class Context:
    """One doctor run's view of one host. Thread-safe: checks run concurrently."""

    settings: Settings
    #: Seconds each check may take; probes use a little less so they fail with a reason first.
    timeout: float = DEFAULT_CHECK_TIMEOUT
    host: str = field(default_factory=socket.gethostname)
    #: Where host probes (files under /proc, tools) are read: this host, or one over SSH.
    runner: Runner = field(default_factory=LocalRunner)
    clock: Callable[[], float] = time.time
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def home(self) -> HomeLayout:
        return layout(self.settings.home)

    @property
    def probe_timeout(self) -> float:
        return max(0.5, self.timeout * 0.6)

    def now(self) -> float:
        return self.clock()

    # -- shared, computed-once probes -------------------------------------------------------
    def shared(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per run; concurrent callers wait for the first one's answer
        (or its :class:`Unavailable`)."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._cache:
                try:
                    self._cache[key] = (True, compute())
                except Unavailable as missing:
                    self._cache[key] = (False, missing)
            ok, value = self._cache[key]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def forget(self, *keys: str) -> None:
        """Drop cached probes (after a fix changed what they read)."""
        with self._guard:
            for key in keys or list(self._cache):
                self._cache.pop(key, None)

    # -- Redis ------------------------------------------------------------------------------
    def redis(self) -> redis.Redis:
        """A client for REDIS_URL that has answered PING, or :class:`Unavailable`."""

        def connect() -> redis.Redis:
            client = redis_client.connect(
                self.settings,
                socket_timeout=self.probe_timeout,
                socket_connect_timeout=self.probe_timeout,
                decode_responses=True,
            )
            try:
                client.ping()
            except (redis.RedisError, OSError) as exc:
                client.close()
                raise Unavailable(
                    f"Redis at {redact_url(self.settings.redis_url)} does not answer "
                    "(see ports.redis)"
                ) from exc
            return client

        return self.shared("redis", connect)

    def redis_info(self) -> dict[str, Any]:
        return self.shared("redis.info", lambda: dict(self._redis_call("INFO", "all")))

    def redis_config(self) -> dict[str, str]:
        return self.shared("redis.config", lambda: dict(self._redis_call("CONFIG", "GET", "*")))

    def _redis_call(self, *command: str) -> Any:
        client = self.redis()
        try:
            return client.execute_command(*command)
        except redis.ResponseError as exc:
            # CONFIG may be renamed away on a managed Redis: say so rather than guess.
            raise Unavailable(f"Redis refused {' '.join(command)}: {exc}") from exc
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"Redis stopped answering: {exc}") from exc

    # -- the host, through the runner ----------------------------------------------------
    def read_text(self, path: str | Path) -> str:
        """A file's text, or :class:`Unavailable` naming why it could not be read."""
        try:
            return self.runner.read_file(str(path)).decode(errors="replace")
        except RemoteError as exc:
            raise Unavailable(exc.reason) from exc

    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandOutput:
        """Run a probe command; a missing tool or a timeout is :class:`Unavailable`."""
        try:
            done = self.runner.run(list(argv), timeout=timeout or self.probe_timeout)
        except RemoteError as exc:
            raise Unavailable(exc.reason) from exc
        if done.exit_code == COMMAND_NOT_FOUND:
            raise Unavailable(f"{argv[0]} is not installed on {self.host}")
        return CommandOutput(
            done.exit_code,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )
