"""Can this host reach the node pool and the workers quickly, and do connections stay alive?"""

from __future__ import annotations

import errno
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from doctor.checks.ports import split_address
from doctor.cluster import live_workers
from doctor.context import Context, Unavailable
from doctor.model import Finding
from doctor.probes.grpc_options import GUIDE_KEEPALIVE, guide_options_text, keepalive_of
from doctor.probes.grpc_peer import parse_grpc_peer
from doctor.probes.wireguard import WireguardInterface, parse_wg_dump
from doctor.registry import check
from hivemind import vpn as vpn_setup

LATENCY_WARN_MS = 100.0
#: At most this many workers are probed (at once, a few at a time).
WORKERS_PROBED = 64
PROBE_THREADS = 16
HANDSHAKE_WARN_SECONDS = 180.0
WIREGUARD_CONFIG_DIR = Path("/etc/wireguard")


# -- TCP round trips ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    target: str
    address: str
    reachable: bool
    rtt_ms: float | None
    #: "connected", "refused" (the host answered with a reset) or why it is unreachable.
    outcome: str

    def row(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "address": self.address,
            "reachable": self.reachable,
            "rtt_ms": self.rtt_ms,
            "outcome": self.outcome,
        }


def tcp_reach(target: str, host: str, port: int, timeout: float) -> Reach:
    """One TCP connect's round trip. A refused connect still proves the host reachable: its
    kernel answered the SYN with a reset, one round trip later (workers listen on no port, so
    this is how their advertised address is timed)."""
    address = f"{host}:{port}"
    began = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            outcome = "connected"
    except ConnectionRefusedError:
        outcome = "refused"
    except TimeoutError:
        return Reach(target, address, False, None, f"no answer within {timeout:g}s")
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, "") or str(exc)
        return Reach(target, address, False, None, f"{reason}: {exc.strerror or exc}")
    return Reach(target, address, True, round((time.perf_counter() - began) * 1000, 2), outcome)


def latency_finding(nodepool: Reach, workers: list[Reach], notes: list[str]) -> Finding:
    """fail when anything is unreachable, warn on a round trip above ``LATENCY_WARN_MS``."""
    rows = [nodepool, *workers]
    evidence: dict[str, Any] = {"nodepool": nodepool.row(), "workers": [w.row() for w in workers]}
    if notes:
        evidence["notes"] = notes
    if not nodepool.reachable or nodepool.outcome == "refused":
        return Finding.fail(
            f"the node pool at {nodepool.address} cannot be reached: {nodepool.outcome}",
            "see ports.nodepool; then check the route (`mtr HOST`) and the firewall",
            **evidence,
        )
    down = [w for w in workers if not w.reachable]
    if down:
        named = ", ".join(f"{w.target} ({w.address}: {w.outcome})" for w in down[:5])
        return Finding.fail(
            f"{len(down)} live worker(s) unreachable from here: {named}",
            f"check the route to each (`mtr {split_address(down[0].address)[0]}`), its host "
            "and the VPN (network.vpn)",
            **evidence,
        )
    slow = [r for r in rows if r.rtt_ms is not None and r.rtt_ms > LATENCY_WARN_MS]
    if slow:
        named = ", ".join(f"{r.target} {r.rtt_ms:.0f} ms" for r in slow[:5])
        return Finding.warn(
            f"round trips above {LATENCY_WARN_MS:.0f} ms: {named}",
            "run `mtr HOST` to see where the time goes; keep workers near the node pool",
            **evidence,
        )
    worst = max(r.rtt_ms or 0.0 for r in rows)
    return Finding.ok(
        f"node pool and {len(workers)} live worker(s) reachable, slowest {worst:.1f} ms",
        **evidence,
    )


@check("network.latency", title="Round trips to node pool and workers", guide="2 / 4: ping, mtr")
def latency(ctx: Context) -> Finding:
    timeout = min(1.0, ctx.probe_timeout)
    host, port = split_address(ctx.settings.client_address)
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    notes: list[str] = []
    try:
        workers = live_workers(ctx)[:WORKERS_PROBED]
    except (Unavailable, redis.RedisError, OSError) as exc:
        workers = []
        notes.append(f"workers not probed: {exc}")
    targets = []
    for worker in workers:
        peer = parse_grpc_peer(worker.address)
        if peer is None:
            notes.append(f"{worker.node_id}: no TCP address advertised ({worker.address!r})")
            continue
        targets.append((worker.node_id, *peer))
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        nodepool_reach = pool.submit(tcp_reach, "nodepool", host, port, timeout)
        reaches = list(pool.map(lambda t: tcp_reach(t[0], t[1], t[2], timeout), targets))
    return latency_finding(nodepool_reach.result(), reaches, notes)


# -- gRPC keepalive ----------------------------------------------------------------------------


def worker_channel_options() -> list[tuple[str, Any]]:
    """The options of the channel a worker opens: WorkerConnection uses client.open_channel."""
    from hivemind import client
    from hivemind.worker import connection

    if connection.open_channel is not client.open_channel:
        raise Unavailable("workers open their channel with something other than open_channel")
    return list(client.CHANNEL_OPTIONS)


def keepalive_finding(options: list[tuple[str, Any]]) -> Finding:
    keepalive = keepalive_of(options)
    evidence = {
        "keepalive_time_ms": keepalive.time_ms,
        "keepalive_timeout_ms": keepalive.timeout_ms,
        "permit_without_calls": keepalive.permit_without_calls,
        "guide": GUIDE_KEEPALIVE,
    }
    if not keepalive.enabled:
        return Finding.warn(
            "keepalive is off on the workers' channel: a dead node pool or a dropped NAT "
            "mapping goes unnoticed until the next call times out",
            f"set in hivemind/client.py CHANNEL_OPTIONS: {guide_options_text()}",
            **evidence,
        )
    return Finding.ok(
        f"workers ping every {keepalive.time_ms / 1000:g} s, give up after "
        f"{(keepalive.timeout_ms or 20000) / 1000:g} s",
        **evidence,
    )


@check(
    "network.grpc_keepalive",
    title="gRPC keepalive on worker channels",
    guide="4 節點間通訊失敗: 優化網路配置 (keepalive)",
)
def grpc_keepalive(ctx: Context) -> Finding:
    del ctx  # the options are the installed code's, the same on every run
    return keepalive_finding(worker_channel_options())


# -- WireGuard ---------------------------------------------------------------------------------


def configured_interfaces() -> list[str]:
    """Interfaces wg-quick would bring up (``/etc/wireguard/NAME.conf``)."""
    try:
        return sorted(path.stem for path in WIREGUARD_CONFIG_DIR.glob("*.conf"))
    except OSError:
        return []


def vpn_finding(interfaces: list[WireguardInterface], configured: list[str], now: float) -> Finding:
    up = {interface.name for interface in interfaces}
    down = [name for name in configured if name not in up]
    peers = []
    stale = []
    for interface in interfaces:
        for peer in interface.peers:
            age = None if peer.latest_handshake is None else round(now - peer.latest_handshake)
            row = {
                "interface": interface.name,
                "peer": peer.public_key[:12] + "…",
                "endpoint": peer.endpoint,
                "handshake_age_s": age,
            }
            peers.append(row)
            if age is None or age > HANDSHAKE_WARN_SECONDS:
                stale.append(row)
    evidence = {"interfaces": sorted(up), "configured_but_down": down, "peers": peers}
    if down:
        return Finding.warn(
            f"WireGuard interface(s) configured but down: {', '.join(down)}",
            "; ".join(f"sudo wg-quick up {name}" for name in down) + " (or `hivemind vpn setup`)",
            **evidence,
        )
    if stale:
        named = ", ".join(
            f"{row['peer']} on {row['interface']} "
            + ("never" if row["handshake_age_s"] is None else f"{row['handshake_age_s']} s ago")
            for row in stale[:5]
        )
        return Finding.warn(
            f"{len(stale)} WireGuard peer(s) without a handshake in the last "
            f"{HANDSHAKE_WARN_SECONDS / 60:.0f} min: {named}",
            "check that peer's host and its endpoint; `hivemind vpn setup` re-creates the "
            "configuration",
            **evidence,
        )
    return Finding.ok(
        f"WireGuard {', '.join(sorted(up))} up, {len(peers)} peer(s) with recent handshakes",
        **evidence,
    )


def generated_not_installed(
    generated: Path | None, interfaces: list[str], configured: list[str], wg_installed: bool
) -> Finding | None:
    """A warning when `hivemind vpn init` set up WireGuard here but it is not in use."""
    if generated is None or vpn_setup.INTERFACE in interfaces or vpn_setup.INTERFACE in configured:
        return None
    install = (
        f"sudo install -m 600 {generated} /etc/wireguard/{vpn_setup.INTERFACE}.conf && "
        f"sudo wg-quick up {vpn_setup.INTERFACE}"
    )
    if not wg_installed:
        install = "apt-get install wireguard-tools; then " + install
    return Finding.warn(
        f"`hivemind vpn init` made {generated}, but {vpn_setup.INTERFACE} is not installed or up",
        install,
        generated=str(generated),
        interfaces=interfaces,
    )


@check(
    "network.vpn",
    title="WireGuard VPN",
    guide="4 節點間通訊失敗: 使用 VPN (WireGuard)",
)
def vpn(ctx: Context) -> Finding:
    configured = configured_interfaces()
    server_config = vpn_setup.vpn_files(ctx.settings).server_config
    generated = server_config if server_config.is_file() else None
    try:
        output = ctx.run(("wg", "show", "all", "dump"))
    except Unavailable:
        pending = generated_not_installed(generated, [], configured, wg_installed=False)
        if pending is not None:
            return pending
        if configured:
            raise Unavailable(
                f"WireGuard is configured ({', '.join(configured)}) but `wg` is not installed"
            ) from None
        return Finding.skip("no VPN configured (no `wg` tool, no /etc/wireguard/*.conf)")
    if output.exit_code != 0:
        raise Unavailable(f"wg show all dump: {output.stderr.strip() or 'failed'}")
    interfaces = parse_wg_dump(output.stdout)
    pending = generated_not_installed(
        generated, [i.name for i in interfaces], configured, wg_installed=True
    )
    if pending is not None:
        return pending
    if not interfaces and not configured:
        return Finding.skip("no VPN configured (no WireGuard interface)")
    return vpn_finding(interfaces, configured, ctx.now())
