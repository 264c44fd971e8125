"""The transport floor of an idle round trip: what the hops alone cost on this machine.

``python -m bench.floor`` times the building blocks of a no-op task's round trip, each on
its own, with nothing else running:

- a Redis round trip over a bare socket and from redis-py (PING), and a trivial Lua script
  call (EVALSHA) over a bare socket and the way the node pool makes it
  (``hivemind.taskstore.lua``);
- a gRPC unary round trip from Python to a Python server in another process (the sync
  server with a thread pool, as the node pool runs it, echoing 100 bytes), and the CPU
  time each side spends per call; and a message's round trip on an open bidirectional
  stream to the same server (what a worker's lease costs on its lease stream);
- a round trip over a pipe to a warm process (what a function pool call costs).

It then adds them up along each system's path, with no handler or library work at all:

- HiveMind: client -> node pool -> worker -> node pool -> client is one message round trip
  on the client's submit stream (a one-off submit makes a call instead), one on the
  worker's lease stream (the lease reply, then the next lease carrying the outcome), two
  Redis scripts (submit-and-lease, complete) and one pipe round trip. A third line prices
  the same hops with Redis over a bare socket: no Redis client at all.
- Celery and RQ: the client, the worker and the result all meet in Redis: about four Redis
  round trips (enqueue, the worker's blocking pop, the result write, the client's read) and,
  for Celery's prefork pool, one pipe round trip.

A system cannot beat its floor; the gap between the floor and the measured p50 is the
Python work along the path. ``--gap 0.007`` sleeps that long before each timed round trip,
as every hop of a one-at-a-time round trip follows a few idle milliseconds: on a VM, a hop
made after the CPUs idled costs several times a back-to-back one. Not a timed test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

from bench.machine import cpu_model, percentile
from bench.processes import ROOT, base_environment, free_ports, start_redis
from hivemind.taskstore.lua import LuaScript, ScriptConnections

_ECHO_SERVER = """
import sys
from concurrent import futures
import grpc
def echo(request, context):
    return request
def echoes(requests, context):
    yield from requests
handler = grpc.method_handlers_generic_handler(
    "floor.Echo",
    {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Echoes": grpc.stream_stream_rpc_method_handler(echoes),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
"""


def _time(call: Callable[[], object], rounds: int, gap: float, warmup: int = 200) -> float:
    """p50 of ``call`` in milliseconds, each call after ``gap`` idle seconds."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(rounds):
        if gap > 0:
            time.sleep(gap)
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return 1000 * percentile(samples, 0.5)


def _packed(*words: str) -> bytes:
    """One Redis command in RESP, as a client sends it."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        parts.append(f"${len(word)}\r\n{word}\r\n".encode())
    return b"".join(parts)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _pipe_echo(conn: Connection) -> None:
    while (message := conn.recv()) is not None:
        conn.send(message)


def measure(rounds: int, gap: float) -> dict[str, float]:
    import grpc
    import redis

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hivemind-floor-") as tmp:
        redis_port, grpc_port = free_ports(2)
        server = start_redis(Path(tmp), redis_port)
        try:
            with socket.create_connection(("127.0.0.1", redis_port)) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

                def raw_ping() -> None:
                    raw.sendall(b"*1\r\n$4\r\nPING\r\n")
                    raw.recv(64)

                figures["redis PING (bare socket)"] = _time(raw_ping, rounds, gap)
                client = redis.Redis(host="127.0.0.1", port=redis_port)
                connections = ScriptConnections(client)
                script = LuaScript(connections, "return ARGV[1]")
                script(["x"])  # loaded, so that the bare call below finds it
                evalsha = _packed("EVALSHA", script.sha, "0", "x")

                def raw_evalsha() -> None:
                    raw.sendall(evalsha)
                    raw.recv(64)

                figures["redis EVALSHA (bare socket)"] = _time(raw_evalsha, rounds, gap)
            figures["redis PING"] = _time(client.ping, rounds, gap)
            figures["redis EVALSHA (the node pool's way)"] = _time(
                lambda: script(["x"]), rounds, gap
            )
            connections.close()
            client.close()
        finally:
            server.stop()

        echo = subprocess.Popen(
            [sys.executable, "-c", _ECHO_SERVER, str(grpc_port)],
            env=base_environment(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert echo.stdout is not None
            echo.stdout.readline()
            server_process = psutil.Process(echo.pid)
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                call = channel.unary_unary("/floor.Echo/Echo")
                payload = b"x" * 100
                before = _cpu_seconds(server_process), _cpu_seconds(psutil.Process())
                figures["gRPC unary (Python to Python)"] = _time(lambda: call(payload), rounds, gap)
                after = _cpu_seconds(server_process), _cpu_seconds(psutil.Process())
                # The warm-up calls count too: 200 of them.
                calls = rounds + 200
                figures["  its server's CPU per call"] = 1000 * (after[0] - before[0]) / calls
                figures["  its client's CPU per call"] = 1000 * (after[1] - before[1]) / calls
                requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
                replies = channel.stream_stream("/floor.Echo/Echoes")(iter(requests.get, None))

                def exchange() -> None:
                    requests.put(payload)
                    next(replies)

                before = _cpu_seconds(server_process), _cpu_seconds(psutil.Process())
                figures["gRPC message on an open stream"] = _time(exchange, rounds, gap)
                after = _cpu_seconds(server_process), _cpu_seconds(psutil.Process())
                figures["  its server's CPU per message"] = 1000 * (after[0] - before[0]) / calls
                requests.put(None)
        finally:
            echo.terminate()
            echo.wait()

    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_pipe_echo, args=(child,))
    process.start()
    message = ("task-id", 1, "module:function", [])

    def pipe_round_trip() -> None:
        parent.send(message)
        parent.recv()

    figures["pipe to a warm process"] = _time(pipe_round_trip, rounds, gap)
    parent.send(None)
    process.join()
    return figures


def floors(figures: dict[str, float]) -> dict[str, float]:
    grpc_rtt = figures["gRPC unary (Python to Python)"]
    stream_rtt = figures["gRPC message on an open stream"]
    script = figures["redis EVALSHA (the node pool's way)"]
    bare_script = figures["redis EVALSHA (bare socket)"]
    ping = figures["redis PING"]
    pipe = figures["pipe to a warm process"]
    return {
        # A submit leases for the waiting worker in its own script (SUBMIT_AND_LEASE); the
        # outcome's script is the other.
        "HiveMind, a client's later submits: 2 stream messages + 2 Redis + 1 pipe": 2 * stream_rtt
        + 2 * script
        + pipe,
        "HiveMind, a one-off submit: 1 call + 1 stream message + 2 Redis + 1 pipe": grpc_rtt
        + stream_rtt
        + 2 * script
        + pipe,
        "HiveMind's hops with no Redis client: 2 stream messages + 2 bare Redis + 1 pipe": (
            2 * stream_rtt + 2 * bare_script + pipe
        ),
        "Celery prefork: 4 Redis + 1 pipe": 4 * ping + pipe,
        "RQ, Dramatiq (threads): 4 Redis": 4 * ping,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3000, help="timed round trips per block")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="idle time before each timed round trip (0: back to back)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.gap < 0:
        parser.error("--rounds must be positive and --gap not negative")
    print(f"{cpu_model()}, Python {sys.version.split()[0]}")
    figures = measure(args.rounds, args.gap)
    after = f", each after {args.gap * 1000:g} ms idle" if args.gap else ", back to back"
    print(f"\nBuilding blocks, p50 of {args.rounds} round trips each{after}:")
    for name, value in figures.items():
        print(f"  {name:36s} {value:6.3f} ms")
    print("\nFloor of an idle round trip (the hops alone, no handler work):")
    for name, value in floors(figures).items():
        print(f"  {name:82s} {value:6.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
