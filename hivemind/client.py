"""The Python client of the node pool, for users and admins (the CLI and the master use it)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from hivemind import auth, tuning
from hivemind.addresses import parse_addresses
from hivemind.bundle import extract_archive
from hivemind.errors import NodePoolError
from hivemind.proto import hivemind_pb2 as pb
from hivemind.proto import hivemind_pb2_grpc as pb_grpc
from hivemind.streams import StreamedCalls

if TYPE_CHECKING:
    from hivemind.tls import ChannelSecurity

T = TypeVar("T")

#: The guide's keepalive values (§4): a dead peer is noticed within seconds, not minutes.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
]


class RetryLater(NodePoolError):
    """The node pool refuses for now (too many failed logins): try again in ``retry_after`` s."""

    def __init__(self, message: str, code: str, retry_after: int) -> None:
        super().__init__(message, code)
        self.retry_after = retry_after


def _retry_after(exc: grpc.RpcError) -> int:
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "retry-after" and str(value).isdigit():
            return int(value)
    return 0


def rpc_error(exc: grpc.RpcError, address: str, secured: bool = False) -> NodePoolError:
    """One clear line for a failed call (``secured``: it went over TLS)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = _retry_after(exc)
        if retry_after:
            return RetryLater(details or code.name, code.name, retry_after)
    if code == grpc.StatusCode.UNAVAILABLE:
        from hivemind.tls import explain_failure  # only on failures: it loads cryptography

        why = explain_failure(details or "", address, secured)
        if why:
            return NodePoolError(why, "TLS")
        return NodePoolError(
            f"cannot reach the node pool at {address} ({details}); is it running? "
            "(`hivemind up` or `hivemind nodepool`)",
            code.name,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodePoolError(f"the node pool at {address} did not answer in time", code.name)
    return NodePoolError(details or code.name, code.name)


def channel_target(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target (and its options) for ``address``: one node pool as it is, or a
    list ``a:50051,b:50051`` of interchangeable ones.

    A list becomes an ``ipv4:`` (or ``ipv6:``) target of the addresses resolved now, in
    order: gRPC's default policy (pick_first) uses the first that connects and moves down
    the list when its connection drops. The authority, the name TLS checks, stays the
    first address's host, so every node pool's certificate must carry it (TLS_HOSTS), or
    TLS_SERVER_NAME names one they all carry.
    """
    if "," not in address:
        return address, []
    try:
        pools = parse_addresses(address, 50051, "NODEPOOL_ADDRESS")
    except ValueError as exc:
        raise NodePoolError(str(exc), "CONFIG") from None
    resolved: dict[int, list[str]] = {socket.AF_INET: [], socket.AF_INET6: []}
    unresolved = []
    for host, port in pools:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            unresolved.append(host)
            continue
        family, *_, sockaddr = min(infos, key=lambda info: info[0] != socket.AF_INET)
        ip = sockaddr[0] if family == socket.AF_INET else f"[{sockaddr[0]}]"
        resolved[family].append(f"{ip}:{port}")
    # One target cannot mix the two schemes; IPv4 wins when both are there.
    scheme, endpoints = next(
        (
            (name, resolved[family])
            for name, family in (("ipv4", socket.AF_INET), ("ipv6", socket.AF_INET6))
            if resolved[family]
        ),
        ("", []),
    )
    if not endpoints:
        raise NodePoolError(
            f"none of the node pools in NODEPOOL_ADDRESS={address!r} resolves "
            f"({', '.join(unresolved)})",
            "UNAVAILABLE",
        )
    first_host, first_port = pools[0]
    authority = (
        f"[{first_host}]:{first_port}" if ":" in first_host else f"{first_host}:{first_port}"
    )
    return f"{scheme}:{','.join(endpoints)}", [("grpc.default_authority", authority)]


def open_channel(address: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    """A channel to the node pool (or to the first answering of a list, see
    :func:`channel_target`): TLS trusting ``security``'s CA, or plaintext for None."""
    target, options = channel_target(address)
    if security is None:
        return grpc.insecure_channel(target, options=[*CHANNEL_OPTIONS, *options])
    if options and not security.server_name:
        # The certificate is checked for the first address's host, whichever answers.
        host = options[0][1].rpartition(":")[0].strip("[]")
        options.append(("grpc.ssl_target_name_override", host))
    return grpc.secure_channel(
        target, security.credentials(), options=[*CHANNEL_OPTIONS, *options, *security.options()]
    )


class Client:
    def __init__(
        self,
        address: str,
        token: str = "",
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
        security: ChannelSecurity | None = None,
    ) -> None:
        """``channel``: one to share with other clients (closing this client leaves it open).
        ``security``: the CA to trust for TLS (``hivemind.tls.client_security``); None dials
        plaintext."""
        self.address = address
        self.token = token
        self.timeout = timeout
        self.secured = security is not None
        self._owns_channel = channel is None
        self.channel = channel if channel is not None else open_channel(address, security)
        self.users = pb_grpc.UserServiceStub(self.channel)
        self.tasks = pb_grpc.TaskServiceStub(self.channel)
        self.workers_stub = pb_grpc.WorkerServiceStub(self.channel)
        self._submits: StreamedCalls[pb.SubmitRequest, pb.SubmitReply] = StreamedCalls(
            self._open_submit_stream,
            tuning.SUBMIT_STREAM_LIFETIME,
            tuning.STREAM_RETRY,
            after_calls=1,  # a one-off submit (the CLI's) opens no stream
        )
        self._stream_token = token

    def close(self) -> None:
        self._submits.close()
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def call(
        self,
        method: Callable[..., T],
        request: Any,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> T:
        try:
            return method(
                request,
                metadata=[*self._metadata(), *metadata],
                timeout=timeout or self.timeout,
            )
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.address, self.secured) from None

    def _open_submit_stream(
        self, requests: Iterator[pb.SubmitRequest], deadline: float
    ) -> Iterator[pb.SubmitReply]:
        self._stream_token = self.token
        return self.tasks.SubmitStream(requests, metadata=self._metadata(), timeout=deadline)  # type: ignore[no-any-return]

    def _submit_call(self, request: pb.SubmitRequest, timeout: float) -> pb.SubmitReply:
        if self.token != self._stream_token:  # signed in anew: the stream carries the old token
            self._submits.close()
            self._stream_token = self.token
        try:
            return self._submits.send(
                request,
                timeout,
                lambda r, t: self.call(self.tasks.SubmitTasks, r, timeout=t),
            )
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.address, self.secured) from None

    def _stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from method(request, metadata=self._metadata())
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.address, self.secured) from None

    # -- users -------------------------------------------------------------------------------
    def login(
        self, username: str, password: str, metadata: Sequence[tuple[str, str]] = ()
    ) -> pb.TokenReply:
        """Log in; this client uses the token from then on. ``metadata``: see
        :func:`forwarding_metadata` (the master's, for its own clients)."""
        request = pb.LoginRequest(username=username, password=password)
        reply = self.call(self.users.Login, request, metadata=metadata)
        self.token = reply.token
        return reply

    def change_password(
        self, old_password: str, new_password: str, metadata: Sequence[tuple[str, str]] = ()
    ) -> pb.TokenReply:
        """Change this user's own password. Every older token of the user stops working; this
        client uses the new one from the reply."""
        request = pb.ChangePasswordRequest(old_password=old_password, new_password=new_password)
        reply = self.call(self.users.ChangePassword, request, metadata=metadata)
        self.token = reply.token
        return reply

    def whoami(self) -> pb.User:
        return self.call(self.users.WhoAmI, pb.Empty())

    def create_user(
        self, username: str, password: str, role: str = "user", credits: int = 0
    ) -> pb.User:
        request = pb.CreateUserRequest(
            username=username, password=password, role=role, credits=credits
        )
        return self.call(self.users.CreateUser, request)

    def disable_user(self, username: str) -> pb.User:
        return self.call(self.users.DisableUser, pb.UsernameRequest(username=username))

    def set_password(self, username: str, password: str, old_password: str = "") -> pb.User:
        """Admins: reset another user's password (their tokens stop working). Your own needs
        ``old_password`` (or use :meth:`change_password`, which also hands a new token)."""
        request = pb.SetPasswordRequest(
            username=username, password=password, old_password=old_password
        )
        return self.call(self.users.SetPassword, request)

    def grant_credits(self, username: str, amount: int) -> pb.User:
        """Admins only: add ``amount`` credits to a user (negative takes them away)."""
        return self.call(self.users.GrantCredits, pb.GrantRequest(username=username, amount=amount))

    def list_users(self) -> list[pb.User]:
        return list(self.call(self.users.ListUsers, pb.Empty()).users)

    def balance(self) -> pb.Balance:
        return self.call(self.users.GetBalance, pb.Empty())

    def transfer(self, to_username: str, amount: int) -> pb.Balance:
        request = pb.TransferRequest(to_username=to_username, amount=amount)
        return self.call(self.users.TransferCredits, request)

    def issue_worker_token(self, node_id: str, ttl: float = 0) -> str:
        """Admins: a token for worker ``node_id``, valid ``ttl`` s (0: WORKER_TOKEN_TTL)."""
        request = pb.WorkerTokenRequest(node_id=node_id, ttl=ttl)
        return self.call(self.users.IssueWorkerToken, request).token

    def revoke_worker_tokens(self, node_id: str) -> None:
        """Admins: every token issued to ``node_id`` so far stops working."""
        self.call(self.users.RevokeWorkerTokens, pb.WorkerTokenRequest(node_id=node_id))

    # -- tasks -------------------------------------------------------------------------------
    def upload_bundle(
        self, zip_path: Path, on_progress: Callable[[int, int], None] | None = None
    ) -> str:
        total = zip_path.stat().st_size

        def chunks() -> Iterator[pb.BundleChunk]:
            sent = 0
            with zip_path.open("rb") as fh:
                while data := fh.read(tuning.CHUNK_SIZE):
                    sent += len(data)
                    if on_progress:
                        on_progress(sent, total)
                    yield pb.BundleChunk(data=data)

        reply = self.call(self.tasks.UploadBundle, chunks(), timeout=3600)
        return reply.bundle_id

    def submit(self, specs: Sequence[pb.TaskSpec]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(specs), tuning.SUBMIT_BATCH_MAX):
            request = pb.SubmitRequest(tasks=specs[start : start + tuning.SUBMIT_BATCH_MAX])
            ids.extend(self._submit_call(request, self.timeout).task_ids)
        return ids

    def submit_and_wait(self, specs: Sequence[pb.TaskSpec], timeout: float = 30.0) -> list[pb.Task]:
        """Submit, then the tasks once all are finished or as they are when ``timeout``
        passes. One call to the node pool when the specs fit in one request."""
        if len(specs) > tuning.SUBMIT_BATCH_MAX:
            return self.wait(self.submit(specs), timeout)
        request = pb.SubmitRequest(tasks=specs, wait=timeout)
        return list(self._submit_call(request, timeout + 30).tasks)

    def get(self, task_id: str) -> pb.Task:
        return self.call(self.tasks.GetTask, pb.TaskRequest(task_id=task_id))

    def list(self, status: str = "", limit: int = 100, all_users: bool = False) -> list[pb.Task]:
        request = pb.ListTasksRequest(status=status, limit=limit, all_users=all_users)
        return list(self.call(self.tasks.ListTasks, request).tasks)

    def cancel(self, task_id: str) -> pb.Task:
        return self.call(self.tasks.CancelTask, pb.TaskRequest(task_id=task_id))

    def wait(
        self, task_ids: Sequence[str], timeout: float = 30.0, first_completed: bool = False
    ) -> list[pb.Task]:
        """The tasks once all are finished, or as they are when ``timeout`` passes. With
        ``first_completed``: only those that ended, once one has (or none at ``timeout``)."""
        request = pb.WaitRequest(
            task_ids=list(task_ids), timeout=timeout, first_completed=first_completed
        )
        return list(self.call(self.tasks.WaitTasks, request, timeout=timeout + 30).tasks)

    def stream_log(self, task_id: str, follow: bool = False) -> Iterator[str]:
        request = pb.LogRequest(task_id=task_id, follow=follow)
        for chunk in self._stream(self.tasks.StreamLog, request):
            yield chunk.text

    def log_chunks(self, task_id: str, offset: int = 0) -> list[pb.LogChunk]:
        """The log chunks written so far from chunk ``offset`` on (no waiting)."""
        request = pb.LogRequest(task_id=task_id, follow=False, offset=offset)
        return list(self._stream(self.tasks.StreamLog, request))

    def result_chunks(self, task_id: str) -> Iterator[bytes]:
        """A bundle task's output zip, as it streams in."""
        for chunk in self._stream(self.tasks.FetchResult, pb.TaskRequest(task_id=task_id)):
            yield chunk.data

    def fetch_result(self, task_id: str, dest_dir: Path) -> Path:
        """Download a bundle task's output zip and unpack it into ``dest_dir``."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        archive = dest_dir / f"{task_id}-result.zip"
        with archive.open("wb") as fh:
            for chunk in self._stream(self.tasks.FetchResult, pb.TaskRequest(task_id=task_id)):
                fh.write(chunk.data)
        # Our own worker built this zip, but unpack defensively all the same.
        extract_archive(archive, dest_dir)
        archive.unlink()
        return dest_dir

    def workers(self) -> list[pb.WorkerInfo]:
        return list(self.call(self.workers_stub.ListWorkers, pb.Empty()).workers)

    def stats(self) -> pb.ClusterStats:
        return self.call(self.tasks.GetStats, pb.Empty())


def forwarding_metadata(service_token: str, client_address: str) -> list[tuple[str, str]]:
    """What the master adds to a login (or password change) it makes for a client: that
    client's address, which the node pool's failed-login limits count instead of the
    master's, vouched for by the master's service token."""
    return [
        (auth.FORWARDED_FOR_METADATA, client_address),
        (auth.FORWARDER_METADATA, service_token),
    ]


def function_spec(
    function: str,
    args: Sequence[Any] = (),
    *,
    name: str = "",
    timeout: float = 0,
    retries: int = -1,
    priority: int = 0,
    cpu: int = 0,
    memory_mb: int = 0,
    gpu: int = 0,
    labels: Sequence[str] = (),
    args_json: str = "",
) -> pb.TaskSpec:
    """``args_json``: the arguments encoded already (instead of ``args``)."""
    return pb.TaskSpec(
        name=name or function,
        kind=pb.FUNCTION,
        function=function,
        args_json=args_json or json.dumps(list(args)),
        timeout=timeout,
        retries=retries,
        priority=priority,
        requirements=pb.Requirements(cpu=cpu, memory_mb=memory_mb, gpu=gpu, labels=list(labels)),
    )


def bundle_spec(bundle_id: str, **options: Any) -> pb.TaskSpec:
    spec = function_spec("", **options)
    spec.kind = pb.BUNDLE
    spec.function = ""
    spec.args_json = ""
    spec.bundle_id = bundle_id
    return spec


def result_value(task: pb.Task) -> Any:
    return json.loads(task.result_json) if task.result_json else None
