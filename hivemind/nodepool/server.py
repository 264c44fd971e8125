"""`hivemind nodepool`: the gRPC server, its health service and its lifecycle."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hivemind import keys, redis_client, tuning
from hivemind.client_certs import ensure_node_pool_files
from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.logs import configure_logging
from hivemind.metrics import MetricsServer
from hivemind.metrics import serve as serve_metrics
from hivemind.nodepool.background import Housekeeper
from hivemind.nodepool.core import NodePoolState
from hivemind.nodepool.instrumentation import CallMetrics
from hivemind.nodepool.relay import PeerRelay
from hivemind.nodepool.tasks_service import TaskService
from hivemind.nodepool.users_service import UserService
from hivemind.nodepool.workers_service import WorkerService, WorkerTaskService
from hivemind.paths import layout
from hivemind.proto import hivemind_pb2 as pb
from hivemind.proto import hivemind_pb2_grpc as pb_grpc
from hivemind.tls import fingerprint, server_uses_tls
from hivemind.tls_rotation import server_credentials

log = logging.getLogger("hivemind.nodepool")

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["UserService"].full_name,
    pb.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    pb.DESCRIPTOR.services_by_name["TaskService"].full_name,
    pb.DESCRIPTOR.services_by_name["WorkerTaskService"].full_name,
)
#: Seconds in-flight calls get to finish after SIGTERM.
SHUTDOWN_GRACE = 10.0
MAX_MESSAGE = 8 * 1024 * 1024


class NodePoolServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = NodePoolState.open(settings)
        self.housekeeper = Housekeeper(self.state)
        self.relay = PeerRelay(self.state)
        self.health = health.HealthServicer()
        # Metrics off (port 0): calls are not even counted, so that costs nothing either.
        counted = [CallMetrics(self.state.metrics)] if settings.nodepool_metrics_port else []
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=tuning.NODEPOOL_CALL_THREADS, thread_name_prefix="rpc"
            ),
            interceptors=counted,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 30000),
                ("grpc.keepalive_timeout_ms", 5000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_UserServiceServicer_to_server(UserService(self.state), self.server)
        self.workers = WorkerService(self.state)
        pb_grpc.add_WorkerServiceServicer_to_server(self.workers, self.server)
        pb_grpc.add_TaskServiceServicer_to_server(TaskService(self.state), self.server)
        pb_grpc.add_WorkerTaskServiceServicer_to_server(WorkerTaskService(self.state), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.address = f"{settings.grpc_host}:{settings.grpc_port}"
        self.enroll_address = f"{settings.grpc_host}:{settings.effective_enroll_port}"
        self.enroll_server: grpc.Server | None = None
        self.metrics_server: MetricsServer | None = None
        self._stopped = threading.Event()

    def _enrollment_server(self) -> grpc.Server:
        """With mutual TLS, a joining host has no certificate yet: it enrols on a port of its
        own, which serves the worker calls alone (and those need a certificate, but Enroll)."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="enroll"))
        pb_grpc.add_WorkerServiceServicer_to_server(self.workers, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def start(self) -> None:
        # Once, without the failover retries: a wrong master name or a dead Redis says so
        # at once instead of after REDIS_FAILOVER_SECONDS.
        redis_client.check_reachable(self.settings)
        secured = server_uses_tls(self.settings)
        try:
            if secured:
                files, made = ensure_node_pool_files(self.settings)
                if made:
                    log.info("TLS: %s", made)
                mutual = self.settings.require_client_cert
                self.server.add_secure_port(self.address, server_credentials(files, mutual))
                if mutual:
                    self.enroll_server = self._enrollment_server()
                    self.enroll_server.add_secure_port(
                        self.enroll_address, server_credentials(files, require_client_cert=False)
                    )
            else:
                self.server.add_insecure_port(self.address)
        except RuntimeError:
            raise HivemindError(
                f"cannot listen on {self.address} (or, with mutual TLS, the enrolment port "
                f"{self.enroll_address}): the port is in use"
            ) from None
        self.server.start()
        if self.enroll_server is not None:
            self.enroll_server.start()
        self.housekeeper.start()
        self.relay.start()
        self.state.metrics.watch_queue(self._queue_counts)
        metrics_port = self.settings.nodepool_metrics_port
        self.metrics_server = serve_metrics(
            self.state.metrics.registry, self.settings.grpc_host, metrics_port
        )
        if self.metrics_server is not None:
            log.info("metrics on %s:%d/metrics", self.settings.grpc_host, self.metrics_server.port)
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if secured:
            log.info(
                "node pool listening on %s with %s (CA %s, fingerprint %s)",
                self.address,
                "mutual TLS" if self.settings.require_client_cert else "TLS",
                files.ca_cert,
                fingerprint(files.ca_cert.read_bytes()),
            )
            if self.settings.require_client_cert:
                log.info("enrolment (hivemind join) on %s", self.enroll_address)
        else:
            log.info(
                "node pool listening on %s, plaintext (TLS=%s)", self.address, self.settings.tls
            )

    def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting calls, let in-flight ones finish (long polls return early)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("node pool stopping; in-flight calls get %.0f s", grace)
        self.health.enter_graceful_shutdown()
        self.state.stopping.set()
        self.state.queued.notify()
        if self.enroll_server is not None:
            self.enroll_server.stop(grace)
        self.server.stop(grace).wait()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.housekeeper.join(5)
        self.relay.join(5)
        self.state.users.close()
        self.state.tasks.close()
        log.info("node pool stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()

    def _queue_counts(self) -> dict[str, int]:
        pipe = self.state.redis.pipeline(transaction=False)
        pipe.llen(keys.TASK_QUEUE)
        pipe.zcard(keys.LEASES)
        queued, running = pipe.execute()
        return {"queued": int(queued), "running": int(running)}


def serve(settings: Settings) -> int:
    """Run the node pool in the foreground until SIGTERM or SIGINT."""
    configure_logging(
        layout(settings.home).named_nodepool_log(settings.nodepool_name), settings.log_level
    )
    server = NodePoolServer(settings)
    server.start()
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop_requested.wait(1.0):
        pass
    server.stop()
    return 0
