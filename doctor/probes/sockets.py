"""Listening TCP sockets from ``/proc/net/tcp`` and ``/proc/net/tcp6`` (what ``ss -tln`` reads)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: ``st`` column value of a listening socket.
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class ListeningSocket:
    address: str
    port: int
    inode: int

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified


def _decode_address(hex_address: str) -> str:
    """``0100007F`` -> ``127.0.0.1``; the kernel prints each 32-bit word in host (little) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def parse_proc_net_tcp(text: str) -> list[ListeningSocket]:
    """The listening sockets of one ``/proc/net/tcp`` or ``tcp6`` file."""
    sockets = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or parts[3] != TCP_LISTEN:
            continue
        address, _, port = parts[1].partition(":")
        try:
            sockets.append(ListeningSocket(_decode_address(address), int(port, 16), int(parts[9])))
        except ValueError:
            continue
    return sockets


def listeners_on(sockets: list[ListeningSocket], port: int) -> list[ListeningSocket]:
    return [sock for sock in sockets if sock.port == port]
