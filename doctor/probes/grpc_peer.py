"""Addresses as gRPC writes them: ``context.peer()`` gives ``ipv4:10.0.0.7:45678``,
``ipv6:[::1]:45678`` (brackets sometimes percent-encoded) or ``unix:/path``; a worker's
advertised address in ``worker:<id>`` is one of those."""

from __future__ import annotations

from urllib.parse import unquote


def parse_grpc_peer(peer: str) -> tuple[str, int] | None:
    """(host, port) of a TCP peer; None for unix sockets and anything unreadable."""
    text = unquote(peer.strip())
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6", "dns"):
        rest = text  # a bare host:port
    host, _, port = rest.rpartition(":")
    host = host.strip("[]").removeprefix("//")
    if not host or not port.isdigit():
        return None
    return host, int(port)
