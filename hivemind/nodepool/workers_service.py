"""WorkerService and WorkerTaskService: what workers do, each only as itself."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Iterable, Iterator

import grpc

from hivemind import keys, tuning
from hivemind.auth import issue_worker_token, load_secret
from hivemind.join import JoinError, redeem
from hivemind.nodepool.blobs import DataTooLarge
from hivemind.nodepool.core import NodePoolState, serve_exchanges
from hivemind.nodepool.views import task_spec, worker_message
from hivemind.proto import hivemind_pb2 as pb
from hivemind.proto import hivemind_pb2_grpc as pb_grpc
from hivemind.states import TaskState
from hivemind.taskstore import Lease, LeaseAsk, Outcome
from hivemind.tls import TLSError
from hivemind.worker_records import (
    WorkerCaps,
    heartbeat_fields,
    record_fields,
    worker_summary,
)

log = logging.getLogger(__name__)
#: What a joining host may call itself.
NODE_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,63}$")

OUTCOMES = {
    pb.SUCCEEDED: TaskState.SUCCEEDED,
    pb.FAILED: TaskState.FAILED,
    pb.TIMEOUT: TaskState.TIMEOUT,
    pb.CANCELLED: TaskState.CANCELLED,
}


def _metrics(m: pb.Metrics) -> dict[str, float]:
    return {
        "cpu_percent": round(m.cpu_percent, 1),
        "memory_percent": round(m.memory_percent, 1),
        "load1": round(m.load1, 2),
        "disk_percent": round(m.disk_percent, 1),
    }


class WorkerService(pb_grpc.WorkerServiceServicer):
    def __init__(self, state: NodePoolState) -> None:
        self.state = state

    def Register(
        self, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterReply:
        self.state.require_worker(context, request.node_id)
        res = request.resources
        caps = WorkerCaps(res.cpu, res.memory_mb, res.gpu, tuple(sorted(set(res.labels))))
        fields = record_fields(
            caps,
            capacity=res.capacity,
            hostname=res.hostname,
            address=res.address or (context.peer() or ""),
            version=res.version,
            metrics_port=str(res.metrics_port or ""),
            registered_at=f"{time.time():.3f}",
            # Left out when the worker does not say (an older one): then it is unknown, not none.
            **({"allowed_modules": ",".join(res.allowed_modules)} if res.allowed_modules else {}),
        )
        self.state.remember_caps(request.node_id, caps)
        self.state.set_leaving(request.node_id, False)
        running = len(request.running_task_ids)
        cancel = self.state.tasks.heartbeat(
            request.node_id,
            fields,
            worker_summary(caps, "online", running, hostname=res.hostname),
            request.running_task_ids,
            self.state.lease_seconds,
        )
        self.state.metrics.heartbeats.inc()
        settings = self.state.settings
        return pb.RegisterReply(
            heartbeat_interval=settings.heartbeat_interval,
            lease_timeout=self.state.lease_seconds,
            max_task_data_size=settings.max_task_data_size,
            cancel_task_ids=cancel,
            lease_takes_results=True,
        )

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        self.state.require_worker(context, request.node_id)
        caps = self.state.caps_of(request.node_id)
        if caps is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not registered; register first")
        metrics = _metrics(request.metrics)
        fields = heartbeat_fields(metrics, len(request.running_task_ids))
        summary = worker_summary(caps, "online", len(request.running_task_ids), **metrics)
        cancel = self.state.tasks.heartbeat(
            request.node_id, fields, summary, request.running_task_ids, self.state.lease_seconds
        )
        self.state.metrics.heartbeats.inc()
        ca = self.state.ca
        return pb.HeartbeatReply(
            cancel_task_ids=cancel, ca_fingerprint=ca.fingerprint() if ca else ""
        )

    def Deregister(self, request: pb.DeregisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.state.require_worker(context, request.node_id)
        self.state.set_leaving(request.node_id, True)
        self.state.queued.notify()  # its open long poll returns now
        self.state.worker_records.go_offline(request.node_id)
        return pb.Empty()

    def ListWorkers(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.WorkerList:
        self.state.identify(context)
        node_ids = sorted(self.state.redis.hkeys(keys.WORKER_NODES))
        pipe = self.state.redis.pipeline(transaction=False)
        for node_id in node_ids:
            pipe.hgetall(keys.worker_key(node_id))
            pipe.smembers(keys.worker_tasks_key(node_id))
        replies = pipe.execute()
        workers = [
            worker_message(node_id, replies[2 * i], list(replies[2 * i + 1]))
            for i, node_id in enumerate(node_ids)
        ]
        return pb.WorkerList(workers=workers)

    def Enroll(self, request: pb.EnrollRequest, context: grpc.ServicerContext) -> pb.EnrollReply:
        """A new host's join: the join token is its only credential, and it works once."""
        try:
            grant = redeem(
                self.state.redis,
                load_secret(self.state.settings),
                request.join_token,
                request.node_id,
            )
        except JoinError as exc:
            log.warning("join refused (%s, from %s)", exc, context.peer())
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        node_id = grant.node_id or request.node_id or request.hostname
        if not NODE_ID.match(node_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node id {node_id!r} is not a name")
        certificate, bundle = self._certify(request.csr, node_id, context)
        token = issue_worker_token(self.state.settings, node_id)
        log.info("joined: worker %s (labels %s) from %s", node_id, grant.labels, context.peer())
        return pb.EnrollReply(
            node_id=node_id,
            worker_token=token,
            labels=list(grant.labels),
            certificate=certificate,
            ca_bundle=bundle,
        )

    def RenewCertificate(
        self, request: pb.RenewRequest, context: grpc.ServicerContext
    ) -> pb.RenewReply:
        """A worker's certificate for a new key, and the CAs to trust: after a rotation, or
        before its certificate expires."""
        self.state.require_worker(context, request.node_id)
        certificate, bundle = self._certify(request.csr, request.node_id, context)
        log.info(
            "renewed: worker %s %s", request.node_id, "certificate" if certificate else "trust"
        )
        return pb.RenewReply(certificate=certificate, ca_bundle=bundle)

    def _certify(
        self, csr: bytes, node_id: str, context: grpc.ServicerContext
    ) -> tuple[bytes, bytes]:
        """(the certificate for ``csr``, or b"" without one; the CA bundle)."""
        ca = self.state.ca
        if ca is None:
            if csr:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this node pool serves plaintext: it has no CA to sign certificates",
                )
            return b"", b""
        try:
            return (ca.sign(csr, node_id) if csr else b""), ca.bundle()
        except (TLSError, OSError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot issue a certificate: {exc}")


class WorkerTaskService(pb_grpc.WorkerTaskServiceServicer):
    def __init__(self, state: NodePoolState) -> None:
        self.state = state

    def LeaseTasks(self, request: pb.LeaseRequest, context: grpc.ServicerContext) -> pb.LeaseReply:
        """A lease call. One that asks to wait holds a call thread while it waits, so only
        ``LONG_POLLS_MAX`` wait at once; the rest look once and say when to ask again (only
        workers that say they wait when told; an older one would ask again at once)."""
        if request.wait <= 0 or not request.waits_when_told:
            return self._lease(request, context, request.wait)
        long_polls = self.state.long_polls
        if long_polls.take():
            try:
                return self._lease(request, context, request.wait)
            finally:
                long_polls.give()
        reply = self._lease(request, context, 0.0)
        if not reply.tasks:
            # Jittered, so that workers turned away together do not come back together.
            wait = min(request.wait, tuning.LEASE_WAIT_MAX)
            reply.poll_again_after = round(wait * random.uniform(0.5, 1.0), 3)
        return reply

    def _lease_on_stream(
        self, request: pb.LeaseRequest, context: grpc.ServicerContext
    ) -> pb.LeaseReply:
        # The stream holds its thread already: its long polls take no place of their own.
        return self._lease(request, context, request.wait)

    def _lease(
        self, request: pb.LeaseRequest, context: grpc.ServicerContext, wait: float
    ) -> pb.LeaseReply:
        self.state.require_worker(
            context, request.node_id, *{r.ref.node_id for r in request.results}
        )
        caps = self.state.caps_of(request.node_id)
        if caps is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not registered; register first")
        # Outcomes first: their waiters wake now, not when this call's long poll ends.
        replies = self._complete(request.results, context) if request.results else []
        deadline = time.monotonic() + max(0.0, min(wait, tuning.LEASE_WAIT_MAX))
        queued = self.state.queued
        ask = LeaseAsk(
            request.node_id,
            caps,
            request.max_tasks,
            self.state.lease_seconds,
            request.max_bundles if request.HasField("max_bundles") else None,
        )
        first = wait > 0
        while True:
            seen = queued.generation
            leases: list[Lease] = []
            if self.state.is_leaving(request.node_id):
                break
            # A worker that just reported is usually back for more with nothing queued: its
            # first look in Redis would only slow the waiters its outcomes just woke.
            if not (first and queued.known_empty(seen, tuning.QUEUE_EMPTY_TRUST)):
                round_ = self.state.tasks.lease_for(ask)
                leases = round_.leases
                if round_.queue_empty:
                    queued.saw_empty(seen)
            first = False
            remaining = deadline - time.monotonic()
            if leases or remaining <= 0 or self.state.stopping.is_set() or not context.is_active():
                break
            # A fallback poll every second covers work queued by another process. A submit
            # may lease for this call while it waits (one round trip to Redis, not two).
            leases = queued.wait(seen, min(remaining, tuning.QUEUE_EMPTY_TRUST), ask)
            if leases:
                break
        if leases and not context.is_active():
            # The worker hung up before it could receive them: give them straight back.
            self.state.tasks.release([(x.task_id, x.attempt, request.node_id) for x in leases])
            self.state.queued.notify()
            return pb.LeaseReply(replies=replies)
        tasks = [
            pb.LeasedTask(
                task_id=lease.task_id,
                attempt=lease.attempt,
                spec=task_spec(lease.record),
                has_checkpoint=lease.has_checkpoint,
                owner=lease.owner,
            )
            for lease in leases
        ]
        return pb.LeaseReply(tasks=tasks, replies=replies)

    def LeaseStream(
        self, requests: Iterator[pb.LeaseRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.LeaseReply]:
        state = self.state
        exchange = state.metrics.rpc_seconds.labels("LeaseStream.exchange").observe
        yield from serve_exchanges(
            state.lease_streams, state.stopping, requests, context, self._lease_on_stream, exchange
        )

    def ReportProgress(
        self, request: pb.ProgressRequest, context: grpc.ServicerContext
    ) -> pb.FenceReply:
        ref = request.ref
        self.state.require_worker(context, ref.node_id)
        why = self.state.tasks.report_progress(
            ref.task_id,
            ref.attempt,
            ref.node_id,
            request.fraction,
            request.message,
            self.state.lease_seconds,
        )
        return pb.FenceReply(accepted=not why, reason=why)

    def AppendLog(
        self, request: pb.LogAppendRequest, context: grpc.ServicerContext
    ) -> pb.FenceReply:
        ref = request.ref
        self.state.require_worker(context, ref.node_id)
        why = self.state.tasks.append_log(ref.task_id, ref.attempt, ref.node_id, request.text)
        if not why:
            self.state.logs.notify()
        return pb.FenceReply(accepted=not why, reason=why)

    def CompleteTasks(
        self, request: pb.CompleteRequest, context: grpc.ServicerContext
    ) -> pb.CompleteReply:
        self.state.require_worker(context, *{r.ref.node_id for r in request.results})
        return pb.CompleteReply(replies=self._complete(request.results, context))

    def _complete(
        self, results: Iterable[pb.TaskResult], context: grpc.ServicerContext
    ) -> list[pb.FenceReply]:
        """Record the outcomes (the caller has checked that the worker owns them)."""
        outcomes = []
        for result in results:
            if result.outcome not in OUTCOMES:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "outcome must be terminal")
            if len(result.result_json) > self.state.settings.max_task_data_size:
                outcomes.append(
                    Outcome(
                        result.ref.task_id,
                        result.ref.attempt,
                        result.ref.node_id,
                        TaskState.FAILED,
                        "",
                        "the result is over MAX_TASK_DATA_SIZE",
                    )
                )
                continue
            outcomes.append(
                Outcome(
                    task_id=result.ref.task_id,
                    attempt=result.ref.attempt,
                    worker=result.ref.node_id,
                    status=OUTCOMES[result.outcome],
                    result_json=result.result_json,
                    error_message=result.error_message,
                    has_result_archive=result.has_result_archive,
                )
            )
        completions = self.state.tasks.complete_records(outcomes)
        finished = {
            o.task_id: c.record
            for o, c in zip(outcomes, completions, strict=True)
            if c.record is not None
        }
        self.state.finished.notify([o.task_id for o in outcomes], finished)
        self.state.logs.notify()
        for record in finished.values():
            self.state.metrics.finished(record.get("status", ""), record)
        return [pb.FenceReply(accepted=not c.refused, reason=c.refused) for c in completions]

    def UploadData(
        self, request_iterator: Iterable[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.FenceReply:
        iterator = iter(request_iterator)
        first = next(iterator, None)
        if first is None or not first.ref.task_id or first.kind not in ("result", "checkpoint"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first chunk names ref and kind")
        ref = first.ref
        self.state.require_worker(context, ref.node_id)

        def chunks() -> Iterator[bytes]:
            yield first.data
            for chunk in iterator:
                yield chunk.data

        blobs = self.state.blobs
        try:
            temp, _, _ = blobs.receive(chunks())
        except DataTooLarge as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{first.kind}: {exc}")
        why = self.state.tasks.mark_data(ref.task_id, ref.attempt, ref.node_id, first.kind)
        if why:
            blobs.discard(temp)
            return pb.FenceReply(accepted=False, reason=why)
        if first.kind == "result":
            blobs.keep(temp, "results", f"{ref.task_id}-{ref.attempt}")
        else:
            blobs.keep(temp, "checkpoints", ref.task_id)
        return pb.FenceReply(accepted=True)

    def FetchBundle(
        self, request: pb.AttemptRef, context: grpc.ServicerContext
    ) -> Iterator[pb.DataChunk]:
        self.state.require_worker(context, request.node_id)
        record = self.state.redis.hmget(keys.task_key(request.task_id), ["worker", "spec"])
        if record[0] != request.node_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "this task is not leased to you")
        bundle_id = json.loads(record[1] or "{}").get("bundle_id", "")
        if not bundle_id or not self.state.blobs.exists("bundles", bundle_id):
            context.abort(grpc.StatusCode.DATA_LOSS, f"bundle {bundle_id!r} is missing on disk")
        for chunk in self.state.blobs.read_chunks("bundles", bundle_id):
            yield pb.DataChunk(data=chunk)

    def FetchCheckpoint(
        self, request: pb.AttemptRef, context: grpc.ServicerContext
    ) -> Iterator[pb.DataChunk]:
        self.state.require_worker(context, request.node_id)
        if self.state.redis.hget(keys.task_key(request.task_id), "worker") != request.node_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "this task is not leased to you")
        if not self.state.blobs.exists("checkpoints", request.task_id):
            context.abort(grpc.StatusCode.NOT_FOUND, "no checkpoint for this task")
        for chunk in self.state.blobs.read_chunks("checkpoints", request.task_id):
            yield pb.DataChunk(data=chunk)

    def ReleaseTasks(
        self, request: pb.ReleaseRequest, context: grpc.ServicerContext
    ) -> pb.CompleteReply:
        self.state.require_worker(context, *{ref.node_id for ref in request.refs})
        for node_id in {ref.node_id for ref in request.refs}:
            self.state.set_leaving(node_id, True)  # before the tasks are back in the queue
        replies = self.state.tasks.release(
            [(ref.task_id, ref.attempt, ref.node_id) for ref in request.refs]
        )
        self.state.queued.notify()
        self.state.finished.notify([ref.task_id for ref in request.refs])
        self.state.metrics.requeues.labels("released").inc(sum(not why for why in replies))
        return pb.CompleteReply(
            replies=[pb.FenceReply(accepted=not why, reason=why) for why in replies]
        )
