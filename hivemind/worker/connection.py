"""A worker's calls to the node pool, each authenticated as that worker and no other."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from hivemind import tuning
from hivemind.client import open_channel, rpc_error
from hivemind.proto import hivemind_pb2 as pb
from hivemind.proto import hivemind_pb2_grpc as pb_grpc
from hivemind.streams import StreamedCalls
from hivemind.tls import ChannelSecurity

RPC_TIMEOUT = 30.0
#: Seconds a lease call may take beyond its long poll before it counts as failed.
LEASE_MARGIN = 15.0


class WorkerConnection:
    def __init__(
        self, address: str, node_id: str, token: str, security: ChannelSecurity | None = None
    ) -> None:
        self.address = address
        self.node_id = node_id
        self.security = security
        self.secured = security is not None
        self._metadata = [("authorization", f"Bearer {token}")]
        self.channel = open_channel(address, security)
        self.workers = pb_grpc.WorkerServiceStub(self.channel)
        self.tasks = pb_grpc.WorkerTaskServiceStub(self.channel)
        # Channels replaced by use_security: calls still open on them finish there.
        self._retired: list[grpc.Channel] = []
        self._leases: StreamedCalls[pb.LeaseRequest, pb.LeaseReply] = StreamedCalls(
            lambda requests, deadline: self.tasks.LeaseStream(
                requests, metadata=self._metadata, timeout=deadline
            ),
            tuning.LEASE_STREAM_LIFETIME,
            tuning.STREAM_RETRY,
        )

    def close(self) -> None:
        self._leases.close()
        for channel in (*self._retired, self.channel):
            channel.close()

    def use_security(self, security: ChannelSecurity) -> None:
        """Make new calls over a channel with ``security`` (a renewed certificate or trust).
        The old channel stays open, unused, so that no call in flight on it is cut."""
        channel = open_channel(self.address, security)
        self._retired.append(self.channel)
        self.channel, self.security = channel, security
        self.workers = pb_grpc.WorkerServiceStub(channel)
        self.tasks = pb_grpc.WorkerTaskServiceStub(channel)

    def renew(self, csr: bytes) -> pb.RenewReply:
        request = pb.RenewRequest(node_id=self.node_id, csr=csr)
        return self._call(self.workers.RenewCertificate, request, timeout=10)  # type: ignore[no-any-return]

    def _call(self, method, request, timeout: float = RPC_TIMEOUT):  # type: ignore[no-untyped-def]
        try:
            return method(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.address, self.secured) from None

    def ref(self, task_id: str, attempt: int) -> pb.AttemptRef:
        return pb.AttemptRef(task_id=task_id, attempt=attempt, node_id=self.node_id)

    def register(self, resources: pb.WorkerResources, running: Sequence[str]) -> pb.RegisterReply:
        request = pb.RegisterRequest(
            node_id=self.node_id, resources=resources, running_task_ids=list(running)
        )
        return self._call(self.workers.Register, request, timeout=10)

    def heartbeat(self, metrics: pb.Metrics, running: Sequence[str]) -> pb.HeartbeatReply:
        request = pb.HeartbeatRequest(
            node_id=self.node_id, metrics=metrics, running_task_ids=list(running)
        )
        return self._call(self.workers.Heartbeat, request, timeout=10)  # type: ignore[no-any-return]

    def deregister(self) -> None:
        self._call(self.workers.Deregister, pb.DeregisterRequest(node_id=self.node_id), 5)

    def lease(
        self,
        max_tasks: int,
        wait: float,
        max_bundles: int | None = None,
        results: Sequence[pb.TaskResult] = (),
    ) -> pb.LeaseReply:
        """Lease up to ``max_tasks``, after reporting ``results`` (replied to in order).

        Over the lease stream when the node pool has one for us and no other thread is using
        it; else with a LeaseTasks call of its own.
        """
        request = pb.LeaseRequest(
            node_id=self.node_id,
            max_tasks=max_tasks,
            wait=wait,
            max_bundles=max_bundles,
            results=list(results),
            waits_when_told=True,
        )
        try:
            return self._leases.send(request, wait + LEASE_MARGIN, self._lease_call)
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.address, self.secured) from None

    def _lease_call(self, request: pb.LeaseRequest, timeout: float) -> pb.LeaseReply:
        return self._call(self.tasks.LeaseTasks, request, timeout=timeout)  # type: ignore[no-any-return]

    def progress(self, task_id: str, attempt: int, fraction: float, message: str) -> bool:
        request = pb.ProgressRequest(
            ref=self.ref(task_id, attempt), fraction=fraction, message=message
        )
        return self._call(self.tasks.ReportProgress, request).accepted

    def append_log(self, task_id: str, attempt: int, text: str) -> bool:
        request = pb.LogAppendRequest(ref=self.ref(task_id, attempt), text=text)
        return self._call(self.tasks.AppendLog, request).accepted

    def complete(self, results: Sequence[pb.TaskResult]) -> list[pb.FenceReply]:
        request = pb.CompleteRequest(results=list(results))
        return list(self._call(self.tasks.CompleteTasks, request).replies)

    def release(self, refs: Sequence[tuple[str, int]]) -> list[pb.FenceReply]:
        request = pb.ReleaseRequest(refs=[self.ref(t, a) for t, a in refs])
        return list(self._call(self.tasks.ReleaseTasks, request).replies)

    def upload(self, task_id: str, attempt: int, kind: str, path: Path) -> pb.FenceReply:
        def chunks() -> Iterator[pb.UploadChunk]:
            with path.open("rb") as fh:
                first = True
                while True:
                    data = fh.read(tuning.CHUNK_SIZE)
                    if first:
                        yield pb.UploadChunk(ref=self.ref(task_id, attempt), kind=kind, data=data)
                        first = False
                    elif data:
                        yield pb.UploadChunk(data=data)
                    if not data:
                        return

        return self._call(self.tasks.UploadData, chunks(), timeout=3600)

    def download(self, what: str, task_id: str, attempt: int, dest: Path) -> Path:
        """Fetch a bundle (``what='bundle'``) or checkpoint into ``dest``."""
        method = self.tasks.FetchBundle if what == "bundle" else self.tasks.FetchCheckpoint
        try:
            with dest.open("wb") as fh:
                for chunk in method(
                    self.ref(task_id, attempt), metadata=self._metadata, timeout=3600
                ):
                    fh.write(chunk.data)
        except grpc.RpcError as exc:
            dest.unlink(missing_ok=True)
            raise rpc_error(exc, self.address, self.secured) from None
        return dest
