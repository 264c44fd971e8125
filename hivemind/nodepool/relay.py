"""Wake-ups across node pools: what one node pool's notifiers say reaches the others.

Each node pool wakes its own long polls in memory (:class:`~hivemind.nodepool.core.
QueueSignal` when work is queued, :class:`~hivemind.nodepool.core.FinishedLog` when tasks
end, the log notifier when a task logs). With several node pools on one Redis, a submit on
one must wake a worker's lease call waiting on another, and a task finished through one
must wake a ``WaitTasks`` on another. Their fallback polls (once a second) keep that
correct; this keeps it quick.

A notice goes out on the Redis channel :data:`hivemind.keys.NODEPOOL_EVENTS` as one JSON
message per burst: a sender thread gathers what the call threads noted (appending to a
deque costs them no round trip) and publishes it in one ``PUBLISH``. A listener thread
applies the other node pools' messages to this one's notifiers, marked as coming from a
peer so that they are not sent back. Pub/sub may drop a message (a reconnect, a failover):
that costs a fallback poll, never a task.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import redis

from hivemind import keys

if TYPE_CHECKING:
    from hivemind.nodepool.core import NodePoolState

log = logging.getLogger(__name__)

#: Seconds the listener waits for a message before it looks at ``stopping`` again, and
#: before it reconnects after an error.
LISTEN_POLL = 1.0
#: Seconds the sender lets notes gather after the first, so that a busy node pool sends a
#: few hundred messages a second at most, not one per call.
SEND_LINGER = 0.002
#: Most task ids one message names; a larger burst says "any task" (waiters re-read).
IDS_PER_MESSAGE = 5000

#: In a message: every waiter wakes, whichever count or task.
ALL = "*"


class PeerRelay:
    """Publishes this node pool's notices and applies the other node pools' ones."""

    def __init__(self, state: NodePoolState) -> None:
        self.state = state
        self.sender_id = uuid.uuid4().hex
        self._notes: deque[tuple[str, Any]] = deque()
        self._noted = threading.Event()
        self._threads: list[threading.Thread] = []
        self.received = 0  # messages from peers applied (tests and metrics read it)
        #: Other node pools listen on this Redis (``PUBSUB NUMSUB``, read every
        #: :data:`LISTEN_POLL`): until one does, notes cost nothing.
        self.peers = False

    # -- what this node pool's notifiers call -----------------------------------------------
    def queued(self, count: int | None) -> None:
        self._note("q", count)

    def finished(self, task_ids: list[str] | None) -> None:
        self._note("f", task_ids)

    def logged(self) -> None:
        self._note("l", True)

    def _note(self, kind: str, value: Any) -> None:
        if not self.peers:  # alone on this Redis: nobody to tell (the sender looks again)
            return
        self._notes.append((kind, value))
        self._noted.set()

    # -- threads ----------------------------------------------------------------------------
    def start(self) -> None:
        state = self.state
        state.queued.relay = self.queued
        state.finished.relay_ended = self.finished
        state.logs.relay = self.logged
        for target, name in ((self._send, "relay-send"), (self._listen, "relay-listen")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float) -> None:
        self._noted.set()
        for thread in self._threads:
            thread.join(timeout)

    def _send(self) -> None:
        stopping = self.state.stopping
        while not stopping.is_set():
            self._count_peers()
            if not self._noted.wait(LISTEN_POLL):
                continue
            stopping.wait(SEND_LINGER)
            self._noted.clear()
            message = self._gather()
            if message is None:
                continue
            try:
                self.state.redis.publish(keys.NODEPOOL_EVENTS, message)
            except redis.RedisError as exc:  # the peers' fallback polls cover it
                log.debug("relay: publish failed: %s", exc)

    def _count_peers(self) -> None:
        try:
            [(_channel, listening)] = self.state.redis.pubsub_numsub(keys.NODEPOOL_EVENTS)
        except (redis.RedisError, OSError, ValueError):
            return  # keep the last answer
        self.peers = int(listening) > 1  # this node pool's own listener is one

    def _gather(self) -> str | None:
        """One message for every note taken so far, or None when there were none."""
        queued: int | str | None = None
        finished: set[str] | str | None = None
        logged = False
        while self._notes:
            kind, value = self._notes.popleft()
            if kind == "q":
                queued = merge_counts(queued, value)
            elif kind == "f":
                finished = merge_ids(finished, value)
            else:
                logged = True
        if queued is None and finished is None and not logged:
            return None
        body: dict[str, Any] = {"from": self.sender_id}
        if queued is not None:
            body["q"] = queued
        if finished is not None:
            body["f"] = finished if finished == ALL else sorted(finished)
        if logged:
            body["l"] = 1
        return json.dumps(body, separators=(",", ":"))

    def _listen(self) -> None:
        stopping = self.state.stopping
        while not stopping.is_set():
            pubsub = self.state.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.NODEPOOL_EVENTS)
                while not stopping.is_set():
                    message = pubsub.get_message(timeout=LISTEN_POLL)
                    if message is not None:
                        self.apply(message["data"])
            except (redis.RedisError, OSError) as exc:
                log.debug("relay: listening failed (%s); reconnecting", exc)
                stopping.wait(LISTEN_POLL)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()

    def apply(self, data: str | bytes) -> None:
        """Wake this node pool's waiters for a peer's message (not for our own)."""
        body = parse_message(data)
        if body is None or body.get("from") == self.sender_id:
            return
        self.received += 1
        state = self.state
        if "q" in body:
            count = body["q"]
            state.queued.notify(None if count == ALL else int(count), from_peer=True)
        if "f" in body:
            ids = body["f"]
            state.finished.notify(None if ids == ALL else list(ids), from_peer=True)
        if "l" in body:
            state.logs.notify(from_peer=True)


def merge_counts(have: int | str | None, new: int | None) -> int | str:
    """Tasks queued over a burst: a sum, or :data:`ALL` once any note said "wake all"."""
    if have == ALL or new is None:
        return ALL
    return (have or 0) + new  # type: ignore[operator]


def merge_ids(have: set[str] | str | None, new: list[str] | None) -> set[str] | str:
    """Tasks ended over a burst: their ids, or :data:`ALL` for "any" (or too many)."""
    if have == ALL or new is None:
        return ALL
    merged = set(have or ()) | set(new)  # type: ignore[arg-type]
    return ALL if len(merged) > IDS_PER_MESSAGE else merged


def parse_message(data: str | bytes) -> dict[str, Any] | None:
    """A relay message's body; None for anything else on the channel."""
    try:
        body = json.loads(data)
    except (TypeError, ValueError):
        return None
    return body if isinstance(body, dict) else None
