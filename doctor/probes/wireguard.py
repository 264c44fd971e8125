"""WireGuard state from ``wg show all dump`` (tab-separated, documented in wg(8)).

Each interface has one line of 5 fields, then one line of 9 fields per peer::

    wg0  PRIVATE-KEY  PUBLIC-KEY  LISTEN-PORT  FWMARK
    wg0  PUBLIC-KEY  PRESHARED-KEY  ENDPOINT  ALLOWED-IPS  LATEST-HANDSHAKE  RX  TX  KEEPALIVE

``LATEST-HANDSHAKE`` is unix seconds, 0 when the peer never completed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WireguardPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: str
    #: Unix time of the latest handshake; None when there never was one.
    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int


@dataclass
class WireguardInterface:
    name: str
    public_key: str
    listen_port: int | None
    peers: list[WireguardPeer] = field(default_factory=list)


def _none_if(value: str, *empty: str) -> str | None:
    return None if value in empty else value


def parse_wg_dump(text: str) -> list[WireguardInterface]:
    interfaces: dict[str, WireguardInterface] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 5:
            port = fields[3]
            interfaces[fields[0]] = WireguardInterface(
                fields[0], fields[2], int(port) if port.isdigit() else None
            )
        elif len(fields) == 9 and fields[0] in interfaces:
            handshake = int(fields[5]) if fields[5].isdigit() else 0
            interfaces[fields[0]].peers.append(
                WireguardPeer(
                    public_key=fields[1],
                    endpoint=_none_if(fields[3], "(none)", ""),
                    allowed_ips=fields[4],
                    latest_handshake=float(handshake) if handshake else None,
                    rx_bytes=int(fields[6]) if fields[6].isdigit() else 0,
                    tx_bytes=int(fields[7]) if fields[7].isdigit() else 0,
                )
            )
    return list(interfaces.values())
