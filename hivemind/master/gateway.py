"""How the master reaches the node pool: one gRPC client per caller, and node pool refusals
turned into HTTP errors with the right status code."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from hivemind import tuning
from hivemind.auth import AuthError, TokenSigner, load_secret
from hivemind.client import Client, open_channel, rpc_error
from hivemind.config import Settings
from hivemind.errors import HivemindError, NodePoolError
from hivemind.tls import client_security

#: gRPC status -> HTTP status. Anything not listed is the node pool's fault: 502.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
#: Callers' clients kept for reuse (they share one channel, so more cost only memory).
CACHED_CLIENTS = 1000
#: The master's own token (for /metrics, which has no signed-in user) lives this long.
SERVICE_TOKEN_TTL = 3600.0


class ApiError(Exception):
    """A refusal with an HTTP status and a message fit for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def api_error(exc: NodePoolError, *, is_admin: bool = False) -> ApiError:
    status = HTTP_STATUS.get(exc.code, 502)
    message = str(exc)
    if exc.code == "NOT_FOUND" and message.startswith("no task ") and not is_admin:
        # The node pool answers the same for someone else's task and a missing one (so ids
        # cannot be probed); to a normal user both are a task they may not see.
        return ApiError(403, f"{message}: it does not exist or is not yours")
    return ApiError(status, message)


class Gateway:
    """Opens node pool clients for callers, all over one gRPC channel.

    The token goes with each call, so a caller's client costs no connection: any number of
    them (a flood of junk tokens included) share the channel, and dropping one from the
    cache never closes a channel another caller's call or live stream is using.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.address = settings.client_address
        self._lock = threading.Lock()
        self.security = client_security(settings)
        self._channel = open_channel(self.address, self.security)
        self._clients: OrderedDict[str, Client] = OrderedDict()
        self._service_token = ""
        self._service_expires = 0.0
        self._trust_checked = time.monotonic()

    def _follow_rotation(self) -> None:
        """After a CA rotation (``hivemind tls rotate``) new calls go over a channel with the
        new trust and certificate; calls open on the old one finish there. Looked at once
        per ``tuning.TRUST_RECHECK`` seconds, under the lock."""
        now = time.monotonic()
        if now - self._trust_checked < tuning.TRUST_RECHECK:
            return
        self._trust_checked = now
        try:
            security = client_security(self.settings)
        except HivemindError:
            return  # unreadable mid-write: the next look gets it
        if security == self.security:
            return
        self.security = security
        self._channel = open_channel(self.address, security)
        self._clients.clear()  # not closed: their calls in flight keep the old channel

    def client(self, token: str) -> Client:
        with self._lock:
            self._follow_rotation()
            found = self._clients.get(token)
            if found is None:
                found = Client(
                    self.address, token, timeout=30.0, channel=self._channel, security=self.security
                )
                self._clients[token] = found
                if len(self._clients) > CACHED_CLIENTS:
                    # Not closed: a call may still be using it, and it holds nothing of its
                    # own but a submit stream, which ends at its deadline.
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(token)
            return found

    def forget(self, token: str) -> None:
        with self._lock:
            found = self._clients.pop(token, None)
        if found is not None:
            found.close()

    @contextmanager
    def calling(self, token: str, *, is_admin: bool = False) -> Iterator[Client]:
        """A client for ``token``; node pool refusals become :class:`ApiError`."""
        try:
            yield self.client(token)
        except NodePoolError as exc:
            raise api_error(exc, is_admin=is_admin) from None

    def parallel(
        self, token: str, *calls: tuple[str, str, Any], is_admin: bool = False
    ) -> list[Any]:
        """Several unary calls at once (``(service, method, request)`` each), for pages that
        need more than one answer: the page waits for the slowest, not for their sum."""
        client = self.client(token)
        stubs = {"tasks": client.tasks, "workers": client.workers_stub, "users": client.users}
        metadata = [("authorization", f"Bearer {token}")]
        try:
            pending = [
                getattr(stubs[service], method).future(
                    request, metadata=metadata, timeout=client.timeout
                )
                for service, method, request in calls
            ]
            return [future.result() for future in pending]
        except grpc.RpcError as exc:
            raise api_error(
                rpc_error(exc, self.address, self.security is not None), is_admin=is_admin
            ) from None

    def nodepool_health(self) -> str:
        """ "ok", or why the node pool's gRPC health check does not say SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.client("").channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
        except grpc.RpcError as exc:
            return f"unreachable: {rpc_error(exc, self.address, self.security is not None)}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return f"not serving: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        return "ok"

    def login(self, username: str, password: str) -> tuple[str, float, str]:
        """(token, expires_at, role) for a username and password."""
        with Client(self.address, timeout=15.0, security=self.security) as anonymous:
            try:
                reply = anonymous.login(username, password)
            except NodePoolError as exc:
                raise api_error(exc) from None
        return reply.token, reply.expires_at, reply.user.role

    def service_client(self) -> Client:
        """A client with the master's own token: it may read stats and workers, nothing else.

        It is signed with the node pool's secret, so the master must run on the node pool's
        host (as `hivemind up` does) or be given SECRET_KEY.
        """
        with self._lock:
            if time.time() > self._service_expires - 60:
                try:
                    secret = load_secret(self.settings, create=False)
                except AuthError as exc:
                    message = f"metrics need the node pool's signing secret: {exc}"
                    raise ApiError(503, message) from None
                token, expires = TokenSigner(secret).issue(
                    "master", "service", "service", SERVICE_TOKEN_TTL
                )
                self._service_token, self._service_expires = token, expires
            token = self._service_token
        return self.client(token)

    def close(self) -> None:
        with self._lock:
            for found in self._clients.values():
                found.close()
            self._clients.clear()
            self._channel.close()
