"""WireGuard for a cluster across networks: keys, the node pool's config and one per peer.

``hivemind vpn init`` makes ``$HIVEMIND_HOME/vpn/`` (0700) with the node pool host's key and
``wg-hivemind.conf`` (the interface, 10.77.0.1 of 10.77.0.0/24 unless told otherwise);
``hivemind vpn add-peer NAME`` gives a worker host the next address and a key pair, adds it as
a ``[Peer]`` there, and writes and prints the config to install on that host. Every file
holding a private key is 0600, and none is written inside a git work tree: a private key
must never be committed.

Keys are X25519, made with the cryptography package: the same keys ``wg genkey`` / ``wg
pubkey`` make (32 bytes, base64). The files are wg-quick configs; :func:`parse_config` reads
them back for the doctor.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hivemind.config import Settings
from hivemind.errors import HivemindError
from hivemind.paths import layout, write_private

INTERFACE = "wg-hivemind"
DEFAULT_NETWORK = "10.77.0.0/24"
DEFAULT_PORT = 51820
#: Peers behind NAT keep their mapping open with a packet this often (seconds).
KEEPALIVE = 25
#: A line that holds a WireGuard private key (base64 of 32 bytes), as a POSIX extended
#: regular expression (what `git grep -E` takes): the doctor looks for it in repositories.
PRIVATE_KEY_ERE = r"^[[:space:]]*PrivateKey[[:space:]]*=[[:space:]]*[A-Za-z0-9+/]{43}=[[:space:]]*$"


class VpnError(HivemindError):
    """A VPN setup that cannot be made or read."""


def generate_keypair() -> tuple[str, str]:
    """(private key, public key), base64, as ``wg genkey | tee key | wg pubkey`` gives."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode(), public_key_of(base64.b64encode(raw).decode())


def public_key_of(private_key: str) -> str:
    """``wg pubkey``: the public key of a base64 private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    try:
        key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key, validate=True))
    except ValueError as exc:
        raise VpnError(f"not a WireGuard private key: {exc}") from None
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


# -- wg-quick config files ---------------------------------------------------------------------


@dataclass
class WgConfig:
    """A wg-quick config: its [Interface] and its [Peer]s, as key -> value (names as written),
    with each peer's ``# Name:`` comment kept."""

    interface: dict[str, str] = field(default_factory=dict)
    peers: list[dict[str, str]] = field(default_factory=list)


def parse_config(text: str, where: str = "<config>") -> WgConfig:
    """Read a wg-quick config (pure); a line it cannot read is an error naming the line."""
    config = WgConfig()
    section: dict[str, str] | None = None
    name = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("# Name:"):
            name = line.removeprefix("# Name:").strip()
            continue
        if not line or line.startswith("#"):
            continue
        if line == "[Interface]":
            section = config.interface
        elif line == "[Peer]":
            section = {"Name": name} if name else {}
            name = ""
            config.peers.append(section)
        elif "=" in line and section is not None:
            key, _, value = line.partition("=")
            section[key.strip()] = value.strip()
        else:
            raise VpnError(f"{where}:{number}: cannot read {raw!r}")
    if "PrivateKey" not in config.interface:
        raise VpnError(f"{where}: no [Interface] with a PrivateKey")
    return config


def render_config(config: WgConfig) -> str:
    out = ["[Interface]", *(f"{k} = {v}" for k, v in config.interface.items())]
    for peer in config.peers:
        out.append("")
        if peer.get("Name"):
            out.append(f"# Name: {peer['Name']}")
        out.append("[Peer]")
        out += [f"{k} = {v}" for k, v in peer.items() if k != "Name"]
    return "\n".join(out) + "\n"


# -- the setup in HIVEMIND_HOME ----------------------------------------------------------------


@dataclass(frozen=True)
class VpnFiles:
    root: Path

    @property
    def server_config(self) -> Path:
        return self.root / f"{INTERFACE}.conf"

    @property
    def state(self) -> Path:
        return self.root / "vpn.json"

    def peer_config(self, name: str) -> Path:
        return self.root / "peers" / f"{name}.conf"


def vpn_files(settings: Settings) -> VpnFiles:
    return VpnFiles(layout(settings.home).root / "vpn")


def repository_around(path: Path) -> Path | None:
    """The git work tree ``path`` is in, if any."""
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _refuse_repository(path: Path) -> None:
    repo = repository_around(path.resolve())
    if repo is not None:
        raise VpnError(
            f"{path} is inside the git repository at {repo}: private keys must stay outside "
            "any repository; set HIVEMIND_HOME elsewhere"
        )


@dataclass(frozen=True)
class VpnState:
    endpoint: str
    network: str
    port: int

    @property
    def server_address(self) -> str:
        return str(next(ipaddress.ip_network(self.network).hosts()))


def init_vpn(
    settings: Settings, endpoint: str, network: str = DEFAULT_NETWORK, port: int = DEFAULT_PORT
) -> Path:
    """Make the node pool host's key and interface config; returns the config's path."""
    files = vpn_files(settings)
    _refuse_repository(files.root)
    if files.server_config.exists():
        raise VpnError(f"{files.server_config} exists already: the VPN is set up")
    try:
        net = ipaddress.ip_network(network)
    except ValueError as exc:
        raise VpnError(f"--network {network!r} is not a network: {exc}") from None
    if net.num_addresses < 4:
        raise VpnError(f"--network {network} leaves no addresses for peers")
    if not endpoint or ":" in endpoint.rsplit("]", 1)[-1]:
        raise VpnError("--endpoint is the host name or address peers dial, without a port")
    state = VpnState(endpoint, str(net), port)
    private, _public = generate_keypair()
    config = WgConfig(
        interface={
            "PrivateKey": private,
            "Address": f"{state.server_address}/{net.prefixlen}",
            "ListenPort": str(port),
        }
    )
    files.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(files.root, 0o700)
    write_private(files.server_config, render_config(config))
    files.state.write_text(json.dumps({"endpoint": endpoint, "network": str(net), "port": port}))
    return files.server_config


def load_state(files: VpnFiles) -> tuple[VpnState, WgConfig]:
    try:
        data = json.loads(files.state.read_text())
        text = files.server_config.read_text()
    except (OSError, ValueError):
        raise VpnError(f"no VPN set up in {files.root}: run `hivemind vpn init` first") from None
    state = VpnState(str(data["endpoint"]), str(data["network"]), int(data["port"]))
    return state, parse_config(text, str(files.server_config))


PEER_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,63}$")


def add_peer(settings: Settings, name: str) -> tuple[Path, str]:
    """Give peer ``name`` the next free address and a key pair; add it to the interface's
    config. Returns (its config's path, its config text)."""
    files = vpn_files(settings)
    _refuse_repository(files.root)
    if not PEER_NAME.match(name):
        raise VpnError(f"peer name {name!r} is not a plain name")
    state, server = load_state(files)
    if any(peer.get("Name") == name for peer in server.peers):
        raise VpnError(f"peer {name} exists already ({files.peer_config(name)})")
    net = ipaddress.ip_network(state.network)
    taken = {state.server_address} | {
        peer.get("AllowedIPs", "").split("/")[0] for peer in server.peers
    }
    address = next((str(ip) for ip in net.hosts() if str(ip) not in taken), None)
    if address is None:
        raise VpnError(f"no free address left in {state.network}")
    private, public = generate_keypair()
    server.peers.append({"Name": name, "PublicKey": public, "AllowedIPs": f"{address}/32"})
    peer = WgConfig(
        interface={"PrivateKey": private, "Address": f"{address}/{net.prefixlen}"},
        peers=[
            {
                "Name": "hivemind node pool",
                "PublicKey": public_key_of(server.interface["PrivateKey"]),
                "Endpoint": f"{state.endpoint}:{state.port}",
                "AllowedIPs": state.network,
                "PersistentKeepalive": str(KEEPALIVE),
            }
        ],
    )
    text = render_config(peer)
    write_private(files.peer_config(name), text)
    write_private(files.server_config, render_config(server))
    return files.peer_config(name), text


def generated_address(settings: Settings) -> str | None:
    """The node pool host's VPN address, when `vpn init` set one up here."""
    try:
        state, _config = load_state(vpn_files(settings))
    except VpnError:
        return None
    return state.server_address
