"""What every part of the node pool shares: settings, stores, the signer and wake-ups."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import redis

from hivemind import keys, redis_client, tuning
from hivemind.auth import AuthError, Identity, TokenSigner, signer_for
from hivemind.client_certs import PeerNodes
from hivemind.config import Settings
from hivemind.metrics import NodePoolMetrics
from hivemind.nodepool.blobs import BlobStore
from hivemind.paths import layout
from hivemind.taskstore import Lease, LeaseAsk, TaskStore
from hivemind.tls import server_uses_tls, tls_files
from hivemind.tls_rotation import SigningCA
from hivemind.userdb import UserError, UserRecord, UserStore
from hivemind.worker_records import WorkerCaps, WorkerRecords, caps_from_record

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Reply = TypeVar("Reply")


class Notifier:
    """Wakes long polls in this process: leases when work is queued, waits when tasks end."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        #: Tells the other node pools (:class:`~hivemind.nodepool.relay.PeerRelay`).
        self.relay: Callable[[], None] | None = None

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self, *, from_peer: bool = False) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        if self.relay is not None and not from_peer:
            self.relay()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the generation moves past ``seen`` or ``timeout`` passes."""
        with self._cond:
            if self._generation == seen:
                self._cond.wait(timeout)
            return self._generation


class LeaseWaiter:
    """One lease call waiting for work, and what a submit leased to it directly."""

    __slots__ = ("ask", "claimed", "handed", "woken")

    def __init__(self, ask: LeaseAsk) -> None:
        self.ask = ask
        self.woken = threading.Event()
        self.claimed = False  # a submit is leasing for it; ``handed`` follows
        self.handed: list[Lease] = []


class QueueSignal:
    """Wakes lease calls when work is queued, hands new work straight to a waiting one, and
    remembers when the queue was seen empty."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._waiters: deque[LeaseWaiter] = deque()  # longest waiting first
        self._empty_at: tuple[int, float] | None = None  # (generation, monotonic time)
        #: Tells the other node pools (:class:`~hivemind.nodepool.relay.PeerRelay`).
        self.relay: Callable[[int | None], None] | None = None

    @property
    def generation(self) -> int:
        return self._generation

    def notify(
        self, count: int | None = None, left_empty: int | None = None, *, from_peer: bool = False
    ) -> None:
        """Wake ``count`` waiters (longest waiting first), or all of them when None.

        Work that any worker can take needs one lease call per task, not every idle worker's
        at once: each woken call costs a lease script in Redis. The others still look once a
        second (their fallback poll).

        ``left_empty``: the change left nothing queued, and began at this generation; the
        queue counts as seen empty unless another change came in between.
        """
        with self._lock:
            if left_empty is not None and left_empty == self._generation:
                self._empty_at = (left_empty + 1, time.monotonic())
            self._generation += 1
            woken = len(self._waiters) if count is None else min(count, len(self._waiters))
            for _ in range(woken):
                self._waiters.popleft().woken.set()
        if self.relay is not None and not from_peer and (count is None or count > 0):
            self.relay(count)

    def wait(self, seen: int, timeout: float, ask: LeaseAsk) -> list[Lease]:
        """Block until the generation moves past ``seen`` or ``timeout`` passes. Returns the
        leases a submit made for ``ask`` meanwhile (see :meth:`claim`), if any."""
        waiter = LeaseWaiter(ask)
        with self._lock:
            if self._generation != seen:
                return []
            self._waiters.append(waiter)
        waiter.woken.wait(timeout)
        with self._lock:
            if not waiter.claimed:
                with contextlib.suppress(ValueError):  # not woken: timed out
                    self._waiters.remove(waiter)
                return []
        waiter.woken.wait()  # the submit that claimed it is leasing for it; it always hands
        return waiter.handed

    def claim(self) -> LeaseWaiter | None:
        """The longest-waiting lease call, taken out of the line: the caller leases for it,
        then must :meth:`hand` it the leases (none on failure)."""
        with self._lock:
            if not self._waiters:
                return None
            waiter = self._waiters.popleft()
            waiter.claimed = True
            return waiter

    @staticmethod
    def hand(waiter: LeaseWaiter, leases: list[Lease]) -> None:
        waiter.handed = leases
        waiter.woken.set()

    def saw_empty(self, seen: int) -> None:
        """A lease round that started at generation ``seen`` left nothing queued."""
        with self._lock:
            if seen == self._generation:
                self._empty_at = (seen, time.monotonic())

    def known_empty(self, seen: int, max_age: float) -> bool:
        """The queue was seen empty at generation ``seen`` (so nothing was queued in this
        process between then and when the caller read ``seen``), at most ``max_age`` seconds
        ago (other processes' work shows within that time)."""
        empty_at = self._empty_at
        return (
            empty_at is not None
            and empty_at[0] == seen
            and time.monotonic() - empty_at[1] < max_age
        )


Record = dict[str, str]


class FinishedLog(Notifier):
    """A notifier that also remembers which tasks ended at each generation, and their hashes
    when the notifier had them, so that a waiter re-reads only the tasks it has no hash of
    instead of every task it waits for."""

    def __init__(
        self,
        keep: int = tuning.FINISHED_NOTICES_KEPT,
        keep_records: int = tuning.FINISHED_RECORDS_KEPT,
    ) -> None:
        super().__init__()
        self._entries: deque[tuple[int, dict[str, Record | None] | None]] = deque(maxlen=keep)
        # Entries that still hold hashes, oldest first: the oldest lose theirs past the limit.
        self._holding: deque[dict[str, Record | None]] = deque()
        self._held = 0
        self._latest: dict[str, Record] = {}  # each held task's newest hash
        self._keep_records = keep_records
        self.relay_ended: Callable[[list[str] | None], None] | None = None

    def notify(
        self,
        task_ids: Iterable[str] | None = None,
        records: dict[str, Record] | None = None,
        *,
        from_peer: bool = False,
    ) -> None:
        """``task_ids`` that may have ended, with the hashes of those that did (``records``);
        None when unknown (waiters re-read everything)."""
        known = records or {}
        entry = None if task_ids is None else {i: known.get(i) for i in task_ids}
        if self.relay_ended is not None and not from_peer:
            self.relay_ended(None if entry is None else list(entry))
        with self._cond:
            self._generation += 1
            self._entries.append((self._generation, entry))
            if entry is None:
                self._latest.clear()  # anything may have changed
            else:
                for task_id, record in entry.items():
                    if record is not None:
                        self._latest[task_id] = record
                    else:
                        self._latest.pop(task_id, None)
            if entry is not None and known:
                self._holding.append(entry)
                self._held += sum(record is not None for record in entry.values())
                while self._held > self._keep_records:
                    oldest = self._holding.popleft()
                    for task_id, record in oldest.items():
                        if record is not None:
                            oldest[task_id] = None
                            self._held -= 1
                            if self._latest.get(task_id) is record:
                                del self._latest[task_id]
            self._cond.notify_all()

    def records(self, task_ids: Iterable[str]) -> dict[str, Record]:
        """The hashes still held of those of ``task_ids`` that ended in this process."""
        with self._cond:
            latest = self._latest
            return {i: latest[i] for i in task_ids if i in latest}

    def since(self, seen: int) -> tuple[int, dict[str, Record | None] | None]:
        """The generation now, and the tasks that may have ended after generation ``seen``,
        each with its hash when its newest notice had one; None means "any of them"."""
        with self._cond:
            now = self._generation
            if now == seen:
                return now, {}
            if not self._entries or self._entries[0][0] > seen + 1:
                return now, None
            changed: dict[str, Record | None] = {}
            # Newest first, stopping at what the caller has seen: a waiter wakes often.
            for generation, entry in reversed(self._entries):
                if generation <= seen:
                    break
                if entry is None:
                    return now, None
                for task_id, record in entry.items():
                    changed.setdefault(task_id, record)
            return now, changed


class Slots:
    """Up to ``limit`` things held at once (lease streams or long polls, each holding a call
    thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self) -> bool:
        with self._lock:
            if self._held >= self.limit:
                return False
            self._held += 1
            return True

    def give(self) -> None:
        with self._lock:
            self._held -= 1


def serve_exchanges(
    slots: Slots,
    stopping: threading.Event,
    requests: Iterator[Request],
    context: grpc.ServicerContext,
    handle: Callable[[Request, grpc.ServicerContext], Reply],
    observe: Callable[[float], None] | None = None,
) -> Iterator[Reply]:
    """A stream that answers each request as its unary call would (``handle``), if one of
    ``slots`` is free; see :mod:`hivemind.streams` for the client's side. ``observe`` gets
    the seconds each exchange took."""
    if not slots.take():
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this node pool holds {slots.limit} such streams already; make calls instead",
        )
    try:
        for request in requests:
            began = time.perf_counter()
            reply = handle(request, context)
            if observe is not None:
                observe(time.perf_counter() - began)
            yield reply
            if stopping.is_set():
                return  # the next request would only get an empty reply at once
    finally:
        slots.give()


@dataclass
class NodePoolState:
    settings: Settings
    redis: redis.Redis
    tasks: TaskStore
    users: UserStore
    blobs: BlobStore
    signer: TokenSigner
    queued: QueueSignal = field(default_factory=QueueSignal)
    finished: FinishedLog = field(default_factory=FinishedLog)
    logs: Notifier = field(default_factory=Notifier)
    stopping: threading.Event = field(default_factory=threading.Event)
    lease_streams: Slots = field(default_factory=lambda: Slots(tuning.LEASE_STREAMS_MAX))
    long_polls: Slots = field(default_factory=lambda: Slots(tuning.LONG_POLLS_MAX))
    submit_streams: Slots = field(default_factory=lambda: Slots(tuning.SUBMIT_STREAMS_MAX))
    _caps: dict[str, WorkerCaps] = field(default_factory=dict)
    _verified: dict[str, Identity] = field(default_factory=dict)
    _users_seen: dict[str, tuple[float, UserRecord]] = field(default_factory=dict)
    _leaving: set[str] = field(default_factory=set)
    peer_nodes: PeerNodes = field(default_factory=PeerNodes)
    ca: SigningCA | None = None  # with TLS: the CA that signs workers' certificates
    metrics: NodePoolMetrics = field(default_factory=NodePoolMetrics)

    @classmethod
    def open(cls, settings: Settings) -> NodePoolState:
        home = layout(settings.home).ensure()
        client = redis_client.connect_nodepool(settings)
        metrics = NodePoolMetrics()
        return cls(
            settings=settings,
            redis=client,
            tasks=TaskStore(client, metrics.observe_script, redis_client.replica_wait(settings)),
            metrics=metrics,
            users=UserStore(home.users_db),
            blobs=BlobStore(home.data, settings.max_task_data_size),
            signer=signer_for(settings),
            ca=SigningCA(tls_files(settings)) if server_uses_tls(settings) else None,
        )

    @functools.cached_property
    def worker_records(self) -> WorkerRecords:
        """The worker status writes (lost, offline, forgotten); heartbeats go via ``tasks``."""
        return WorkerRecords(self.redis)

    @property
    def lease_seconds(self) -> float:
        return self.settings.effective_lease_timeout

    # -- authentication --------------------------------------------------------------------
    def identify(self, context: grpc.ServicerContext) -> Identity:
        """The caller's identity from its bearer token, or abort with UNAUTHENTICATED."""
        token = ""
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    token = ""
        if not token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token; log in first")
        if self.settings.require_client_cert and self.peer_nodes.of(context) is None:
            # Only the enrolment port takes connections without a certificate.
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this node pool requires a client certificate (REQUIRE_CLIENT_CERT); this "
                "port only enrols new hosts (`hivemind join`)",
            )
        identity = self._verified.get(token)
        if identity is None or identity.expires_at < time.time():
            try:
                identity = self.signer.verify(token)
            except AuthError as exc:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            # Workers send the same token on every call: verify it once, not on each.
            if len(self._verified) >= tuning.VERIFIED_TOKENS_MAX:
                self._verified.clear()
            self._verified[token] = identity
        if identity.kind == "user":
            try:
                user = self.user(identity.subject)
            except UserError:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "user no longer exists")
            if user.disabled:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "this account is disabled")
            # The role in the database wins over the one in an older token.
            identity = Identity(identity.subject, "user", user.role, identity.expires_at)
        return identity

    def user(self, username: str) -> UserRecord:
        """The user's record as of at most ``USER_RECHECK`` seconds ago (raises UserError).

        Changes made through this node pool show at once (:meth:`forget_user`); changes
        made by other processes, such as `hivemind user disable`, within that time.
        """
        now = time.monotonic()
        seen = self._users_seen.get(username)
        if seen is not None and now - seen[0] < tuning.USER_RECHECK:
            return seen[1]
        record = self.users.get(username)
        if len(self._users_seen) >= tuning.VERIFIED_TOKENS_MAX:
            self._users_seen.clear()
        self._users_seen[username] = (now, record)
        return record

    # -- stopping workers ---------------------------------------------------------------------
    def set_leaving(self, node_id: str, leaving: bool) -> None:
        """A worker that hands tasks back or deregisters is stopping: its lease calls get
        nothing more (its open long poll returns once woken), so it cannot take back what
        it just handed back. Registering again ends that."""
        if leaving:
            self._leaving.add(node_id)
        else:
            self._leaving.discard(node_id)

    def is_leaving(self, node_id: str) -> bool:
        return node_id in self._leaving

    def forget_user(self, username: str) -> None:
        self._users_seen.pop(username, None)

    def require_user(self, context: grpc.ServicerContext, admin: bool = False) -> Identity:
        identity = self.identify(context)
        if identity.kind != "user":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "this call needs a user token")
        if admin and not identity.is_admin:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "this call needs an admin")
        return identity

    def require_worker(self, context: grpc.ServicerContext, *node_ids: str) -> Identity:
        """A worker token whose worker is every one of ``node_ids`` (it acts only as itself)."""
        identity = self.identify(context)
        if not identity.is_worker:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "this call needs a worker token")
        if self.settings.require_client_cert:
            presented = self.peer_nodes.of(context)
            if presented != identity.subject:
                whose = f"worker {presented}" if presented else "no worker (a CLI's)"
                log.warning(
                    "refused worker %s from %s: its certificate is for %s",
                    identity.subject,
                    context.peer(),
                    whose,
                )
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this token is for worker {identity.subject}, but the connection's "
                    f"certificate is for {whose}: a worker presents its own certificate",
                )
        for node_id in node_ids:
            if identity.subject != node_id:
                context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this token belongs to worker {identity.subject!r}, not {node_id!r}",
                )
        return identity

    # -- worker capabilities -----------------------------------------------------------------
    def remember_caps(self, node_id: str, caps: WorkerCaps) -> None:
        self._caps[node_id] = caps

    def caps_of(self, node_id: str) -> WorkerCaps | None:
        caps = self._caps.get(node_id)
        if caps is None:
            record = self.redis.hgetall(keys.worker_key(node_id))
            if not record:
                return None
            caps = caps_from_record(record)
            self._caps[node_id] = caps
        return caps
