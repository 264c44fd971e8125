"""Is a service up? The probes `hivemind up`, `status`, the doctor and the playbooks ask."""

from __future__ import annotations

import socket

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hivemind import redis_client
from hivemind.client import open_channel
from hivemind.config import Settings
from hivemind.keys import worker_key
from hivemind.tls import ChannelSecurity


def grpc_serving(
    address: str, timeout: float = 1.0, security: ChannelSecurity | None = None
) -> bool:
    """True when the gRPC health service at ``address`` reports SERVING for the server (over
    TLS trusting ``security``'s CA, or plaintext)."""
    with open_channel(address, security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def worker_online(settings: Settings, node_id: str, timeout: float = 1.0) -> bool:
    """True when the worker's Redis hash says ``status`` = online."""
    client = redis_client.connect(
        settings, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
    )
    try:
        return bool(client.hget(worker_key(node_id), "status") == "online")
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def port_listening(host: str, port: int, timeout: float = 1.0) -> bool:
    # A wildcard bind is reached through loopback.
    target = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    try:
        with socket.create_connection((target, port), timeout=timeout):
            return True
    except OSError:
        return False
