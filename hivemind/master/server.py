"""`hivemind master`: serve the console and the API with uvicorn until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import socket

from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.logs import configure_logging
from hivemind.paths import layout

log = logging.getLogger("hivemind.master")


def _bind(host: str, port: int) -> socket.socket:
    """Bind first, so a busy port is one clear error rather than uvicorn's traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it a response's head and body wait on the
    # client's delayed ACK (40 ms a request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HivemindError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def serve(settings: Settings) -> int:
    import uvicorn

    from hivemind.master.app import create_app

    configure_logging(layout(settings.home).ensure().master_log, settings.log_level)
    sock = _bind(settings.master_host, settings.master_port)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        log_config=None,  # our handlers, configured above
        access_log=False,
        proxy_headers=False,  # client addresses (the login rate limit) are the socket's
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    log.info(
        "master listening on http://%s:%d (node pool %s)",
        settings.master_host,
        settings.master_port,
        settings.client_address,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again for the
    # handler it found: with this one, a requested stop ends in exit status 0.
    stops: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stops.append(signum))
    try:
        server.run(sockets=[sock])
    finally:
        app.state.gateway.close()
    log.info("master stopped%s", f" ({signal.Signals(stops[0]).name})" if stops else "")
    return 0
