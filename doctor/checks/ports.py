"""Are the node pool, the master and Redis answering, and on which addresses do they listen?"""

from __future__ import annotations

import ipaddress
import socket
import time
import urllib.error
import urllib.request

import redis

from doctor.cluster import live_workers
from doctor.context import Context, Unavailable
from doctor.fixes import Action, fixer
from doctor.model import Finding, Status
from doctor.probes.grpc_peer import parse_grpc_peer
from doctor.probes.sockets import ListeningSocket, listeners_on, parse_proc_net_tcp
from doctor.registry import check
from doctor.services import start_command, systemd_unit
from hivemind import redis_client, stack
from hivemind.config import redact_url, redis_password_source
from hivemind.service_health import grpc_serving
from hivemind.stack import STACK_SERVICES
from hivemind.tls import client_security

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def split_address(address: str) -> tuple[str, int]:
    """``host:port``; of a NODEPOOL_ADDRESS list, the first."""
    host, _, port = address.split(",")[0].strip().rpartition(":")
    return host.strip("[]") or "localhost", int(port)


def connect_ms(host: str, port: int, timeout: float) -> float:
    """Milliseconds a TCP connect takes; raises OSError when it cannot connect."""
    target = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    began = time.perf_counter()
    with socket.create_connection((target, port), timeout=timeout):
        return round((time.perf_counter() - began) * 1000, 2)


@check(
    "ports.nodepool",
    title="Node pool answers on its gRPC port",
    guide="快速診斷; 1 連接問題 / 無法連接到 Node Pool",
    fixable=True,
)
def nodepool_port(ctx: Context) -> Finding:
    # Of a list of node pools, the first that serves will do (nodepool.peers checks all).
    finding = Finding.fail("NODEPOOL_ADDRESS names no node pool", "set NODEPOOL_ADDRESS")
    for address in ctx.settings.client_address.split(","):
        finding = _nodepool_serving(ctx, address.strip())
        if finding.status is Status.OK:
            break
    return finding


def _nodepool_serving(ctx: Context, address: str) -> Finding:
    host, port = split_address(address)
    fix = f"start the node pool: {start_command('nodepool')}"
    try:
        took = connect_ms(host, port, ctx.probe_timeout)
    except OSError as exc:
        return Finding.fail(f"nothing accepts connections at {address}", fix, error=str(exc))
    security = client_security(ctx.settings)
    if not grpc_serving(f"{host}:{port}", timeout=ctx.probe_timeout, security=security):
        return Finding.fail(
            f"{address} accepts TCP but its gRPC health is not SERVING",
            f"look at node_pool/logs/nodepool.log, then {fix}",
            connect_ms=took,
        )
    return Finding.ok(f"{address} is SERVING ({took} ms to connect)", connect_ms=took)


@check(
    "ports.master",
    title="Master web console answers on its port",
    guide="快速診斷",
    fixable=True,
)
def master_port(ctx: Context) -> Finding:
    if not stack.master_installed():
        return Finding.skip("the master (hivemind.master) is not installed on this host")
    host, port = ctx.settings.master_host, ctx.settings.master_port
    target = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    fix = f"start the master: {start_command('master')}"
    try:
        took = connect_ms(target, port, ctx.probe_timeout)
    except OSError as exc:
        return Finding.fail(f"nothing accepts connections on port {port}", fix, error=str(exc))
    url = f"http://{target}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=ctx.probe_timeout) as reply:
            code = reply.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return Finding.fail(f"{url} does not answer", fix, error=str(exc), connect_ms=took)
    if code != 200:
        return Finding.fail(
            f"{url} answers HTTP {code}", f"look at master/logs/master.log, then {fix}", code=code
        )
    return Finding.ok(f"{url} is healthy ({took} ms to connect)", connect_ms=took)


@check(
    "ports.redis",
    title="Redis answers PING",
    guide="快速診斷; 1 連接問題 / Redis 連接失敗",
    fixable=True,
)
def redis_port(ctx: Context) -> Finding:
    url = redact_url(ctx.settings.redis_url)
    source = redis_password_source(ctx.settings)
    client = redis_client.connect(
        ctx.settings,
        socket_timeout=ctx.probe_timeout,
        socket_connect_timeout=ctx.probe_timeout,
    )
    began = time.perf_counter()
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        refused = isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc)
        if not refused:
            return Finding.fail(f"Redis at {url} answers PING with an error", error=str(exc))
        if not source:
            return Finding.fail(
                f"Redis at {url} needs a password that REDIS_URL lacks",
                "set REDIS_PASSWORD (or REDIS_URL to redis://:PASSWORD@host:port/0); for the "
                "Redis `hivemind up` started, it is in "
                f"{ctx.home.redis_password_file}",
                error=str(exc),
            )
        fix = (
            f"make the password in {source} match Redis's requirepass"
            if source in ("REDIS_URL", "REDIS_PASSWORD")
            else f"{source} holds the password of the Redis `hivemind up` starts; for "
            "another Redis, put its own password in REDIS_PASSWORD"
        )
        return Finding.fail(
            f"Redis at {url} refuses our password (from {source})",
            fix,
            error=str(exc),
            password_from=source,
        )
    except (redis.RedisError, OSError) as exc:
        return Finding.fail(
            f"Redis at {url} does not answer",
            f"start Redis: {start_command('redis')}",
            error=str(exc),
        )
    finally:
        client.close()
    took = round((time.perf_counter() - began) * 1000, 2)
    return Finding.ok(f"Redis at {url} answers PING ({took} ms)", ping_ms=took)


def listening_sockets(ctx: Context) -> list[ListeningSocket]:
    def read() -> list[ListeningSocket]:
        sockets = []
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                sockets += parse_proc_net_tcp(ctx.read_text(name))
            except Exception:  # tcp6 is absent without IPv6; tcp alone still tells
                if name == "/proc/net/tcp":
                    raise
        return sockets

    return ctx.shared("sockets.listening", read)


def _remote_workers(ctx: Context) -> list[str]:
    """Live workers connected from another address (none known without Redis)."""
    try:
        rows = live_workers(ctx)
    except Unavailable:
        return []
    peers = {row.node_id: parse_grpc_peer(row.address) for row in rows}
    return [node for node, peer in peers.items() if peer and not _is_loopback(peer[0])]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


@check(
    "ports.listen_address",
    title="Services listen where workers can reach them",
    guide="1 無法連接到 Node Pool: ss -tlnp, config.py GRPC_HOST",
)
def listen_address(ctx: Context) -> Finding:
    sockets = listening_sockets(ctx)
    settings = ctx.settings
    ports = {"nodepool": settings.grpc_port, "master": settings.master_port}
    bound = {
        name: sorted({sock.address for sock in listeners_on(sockets, port)})
        for name, port in ports.items()
    }
    evidence = {"GRPC_HOST": settings.grpc_host, "listening": bound}
    nodepool = listeners_on(sockets, settings.grpc_port)
    loopback_only = bool(nodepool) and all(sock.loopback_only for sock in nodepool)
    fix = 'set GRPC_HOST = "0.0.0.0" in hivemind.toml and restart the node pool'
    remote = _remote_workers(ctx)
    if loopback_only and remote:
        return Finding.fail(
            f"the node pool listens on loopback only, but {len(remote)} worker(s) are remote",
            fix,
            remote_workers=remote[:10],
            **evidence,
        )
    if settings.grpc_host in LOOPBACK_NAMES or loopback_only:
        return Finding.warn(
            "the node pool is reachable from this host only (GRPC_HOST is loopback)",
            fix,
            **evidence,
        )
    if not nodepool:
        return Finding.skip(
            f"nothing listens on port {settings.grpc_port} here (see ports.nodepool)", **evidence
        )
    return Finding.ok(f"node pool listens on {', '.join(bound['nodepool'])}", **evidence)


def _start_service(ctx: Context, check_id: str, service: str) -> list[Action]:
    unit = systemd_unit(service) if service != "redis" else None
    if unit:
        argv = ["systemctl", "start", unit]

        def apply() -> str:
            done = ctx.run(argv, timeout=60)
            if done.exit_code:
                raise RuntimeError(done.stderr.strip() or f"systemctl exited {done.exit_code}")
            return f"started {unit}"

        return [Action(check_id, f"start {unit}", " ".join(argv), apply, touches=_PORT_CHECKS)]

    # What must answer first: the node pool needs Redis, the master the node pool.
    needed = STACK_SERVICES[: STACK_SERVICES.index(service) + 1]

    def start_in_order() -> str:
        events: list[str] = []
        for name in needed:
            # A no-op for a service that runs; started as the last `hivemind up` did.
            stack.start_named(ctx.settings, name, on_event=events.append)
        return "; ".join(events) or f"{service} already runs"

    return [
        Action(
            check_id,
            f"start {' then '.join(needed)} where not running, as the last `hivemind up` did",
            f"hivemind up (only {', '.join(needed)})",
            start_in_order,
            touches=(*_PORT_CHECKS, "process.services"),
        )
    ]


_PORT_CHECKS = ("ports.nodepool", "ports.master", "ports.redis")


@fixer("ports.nodepool")
def start_nodepool(ctx: Context, _finding: Finding) -> list[Action]:
    return _start_service(ctx, "ports.nodepool", "nodepool")


@fixer("ports.master")
def start_master(ctx: Context, _finding: Finding) -> list[Action]:
    return _start_service(ctx, "ports.master", "master")


@fixer("ports.redis")
def start_redis(ctx: Context, _finding: Finding) -> list[Action]:
    return _start_service(ctx, "ports.redis", "redis")
