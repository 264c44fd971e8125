"""Address lists and Sentinel URLs, parsed: ``host:port,host:port`` (NODEPOOL_ADDRESS,
REDIS_SENTINELS) and ``redis+sentinel://[:PASSWORD@]HOSTS/MASTER_NAME[/DB]`` (REDIS_URL).

A leaf module (no settings, no Redis), so that loading the settings can check them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """The Sentinels to ask, and the name of the master they watch."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    password: str | None = None

    def describe(self) -> str:
        """For messages: the Sentinels and the master's name, never the password."""
        where = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"Sentinel {where} (master {self.master_name!r})"


def parse_addresses(text: str, default_port: int, what: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (a port may be left out; ``[v6]:port`` for IPv6)."""
    addresses = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port_text = item, ""
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        if not host or (port_text and not port_text.isdigit()):
            raise ValueError(f"{what}: {item!r} is not host:port")
        port = int(port_text) if port_text else default_port
        if not 1 <= port <= 65535:
            raise ValueError(f"{what}: port {port} of {item!r} is not 1-65535")
        addresses.append((host, port))
    if not addresses:
        raise ValueError(f"{what} names no address")
    return tuple(addresses)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """A ``redis+sentinel://`` URL as a :class:`SentinelTarget`; ValueError when malformed.

    Parsed by hand: :func:`urllib.parse.urlsplit` refuses a netloc with several ports.
    """
    scheme, sep, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME or not sep:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) if at and ":" in userinfo else None
    sentinels = parse_addresses(hosts, DEFAULT_SENTINEL_PORT, "the Sentinels of REDIS_URL")
    parts = [part for part in path.split("?")[0].split("/") if part]
    if not parts:
        raise ValueError("REDIS_URL names no master: redis+sentinel://HOSTS/MASTER_NAME[/DB]")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"REDIS_URL's path must be /MASTER_NAME[/DB], got /{'/'.join(parts)}")
    return SentinelTarget(
        sentinels, unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0, password or None
    )
