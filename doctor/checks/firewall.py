"""Does the host firewall let workers and browsers reach the node pool and the master?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from doctor.context import Context, Unavailable
from doctor.model import Finding
from doctor.probes.firewall import (
    Ruleset,
    parse_firewalld,
    parse_iptables_save,
    parse_nft_ruleset,
    parse_ufw_status,
)
from doctor.registry import check
from hivemind.stack import master_installed


def _ufw(ctx: Context) -> Ruleset:
    output = ctx.run(("ufw", "status", "verbose"))
    if output.exit_code != 0:
        raise Unavailable(f"ufw status: {output.stderr.strip() or output.stdout.strip()}")
    return parse_ufw_status(output.stdout)


def _firewalld(ctx: Context) -> Ruleset:
    state = ctx.run(("firewall-cmd", "--state"))
    if state.stdout.strip() != "running":
        # Not running: its rules are not loaded, whatever --list-all would print.
        return parse_firewalld(state.stdout or "not running", "")
    listing = ctx.run(("firewall-cmd", "--list-all"))
    if listing.exit_code != 0:
        raise Unavailable(f"firewall-cmd --list-all: {listing.stderr.strip()}")
    return parse_firewalld(state.stdout, listing.stdout)


def _nft(ctx: Context) -> Ruleset:
    output = ctx.run(("nft", "list", "ruleset"))
    if output.exit_code != 0:
        raise Unavailable(f"nft list ruleset: {output.stderr.strip()}")
    return parse_nft_ruleset(output.stdout)


def _iptables(ctx: Context) -> Ruleset:
    output = ctx.run(("iptables-save",))
    if output.exit_code != 0:
        raise Unavailable(f"iptables-save: {output.stderr.strip()}")
    return parse_iptables_save(output.stdout)


#: The front ends first: when ufw or firewalld is active, the nft/iptables rules are theirs.
READERS: tuple[tuple[str, Callable[[Context], Ruleset]], ...] = (
    ("ufw", _ufw),
    ("firewalld", _firewalld),
    ("nftables", _nft),
    ("iptables", _iptables),
)


def active_firewall(ctx: Context) -> tuple[Ruleset | None, dict[str, str]]:
    """The first active firewall, and what each tool said (missing, inactive, unreadable)."""
    seen: dict[str, str] = {}
    for name, read in READERS:
        try:
            ruleset = read(ctx)
        except Unavailable as missing:
            seen[name] = str(missing)
            continue
        if ruleset.active:
            seen[name] = "active"
            return ruleset, seen
        seen[name] = "inactive"
    return None, seen


def host_ports(ctx: Context) -> dict[str, int]:
    """The ports this host serves: node pool and master (which warn when blocked), Redis."""
    settings = ctx.settings
    ports = {"nodepool": settings.grpc_port}
    if master_installed():
        ports["master"] = settings.master_port
    redis_port = urlsplit(settings.redis_url).port
    if redis_port:
        ports["redis"] = redis_port
    return ports


def allow_command(ruleset: Ruleset, port: int) -> str:
    """The exact line that opens ``port`` with the firewall in use."""
    if ruleset.tool == "ufw":
        return f"sudo ufw allow {port}/tcp"
    if ruleset.tool == "firewalld":
        return f"sudo firewall-cmd --permanent --add-port={port}/tcp && sudo firewall-cmd --reload"
    if ruleset.tool == "nftables":
        where = ruleset.location or "inet filter input"
        return f"sudo nft insert rule {where} tcp dport {port} accept"
    return f"sudo iptables -I INPUT -p tcp --dport {port} -j ACCEPT"


def port_verdicts(ruleset: Ruleset, ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    verdicts = {}
    for service, port in ports.items():
        decision = ruleset.decide(port)
        verdicts[service] = {
            "port": port,
            "allowed": decision.allowed,
            "from": decision.source or ("anywhere" if decision.allowed else None),
            "by": decision.by,
        }
    return verdicts


def firewall_finding(ruleset: Ruleset, ports: dict[str, int], seen: dict[str, str]) -> Finding:
    """The verdict on a parsed ruleset: warn when the node pool's or master's port is shut.

    Redis's port is reported but never asked to be opened: workers reach only the node pool.
    """
    verdicts = port_verdicts(ruleset, ports)
    evidence = {"firewall": ruleset.tool, "tools": seen, "ports": verdicts}
    blocked = [
        service
        for service in ("nodepool", "master")
        if service in verdicts and not verdicts[service]["allowed"]
    ]
    if blocked:
        fix = "; ".join(allow_command(ruleset, ports[service]) for service in blocked)
        named = ", ".join(f"{service} ({ports[service]})" for service in blocked)
        return Finding.warn(f"{ruleset.tool} blocks {named} from other hosts", fix, **evidence)
    restricted = [
        f"{service} from {verdict['from']}"
        for service, verdict in verdicts.items()
        if verdict["allowed"] and verdict["from"] != "anywhere"
    ]
    said = f"{ruleset.tool} lets in " + ", ".join(
        f"{service} ({verdict['port']})"
        for service, verdict in verdicts.items()
        if verdict["allowed"] and service != "redis"
    )
    if restricted:
        said += f" (only {', '.join(restricted)})"
    return Finding.ok(said, **evidence)


@check(
    "firewall.ports",
    title="Firewall lets the platform's ports in",
    guide="1 無法連接到 Node Pool: 檢查防火牆; 4 節點間通訊失敗: 配置防火牆",
    host_probe=True,
)
def firewall_ports(ctx: Context) -> Finding:
    ruleset, seen = active_firewall(ctx)
    if ruleset is None:
        installed = {tool: said for tool, said in seen.items() if "not installed" not in said}
        if not installed:
            return Finding.skip(
                "no firewall tool here (ufw, firewall-cmd, nft, iptables-save)", tools=seen
            )
        if all(said == "inactive" for said in installed.values()):
            return Finding.ok(f"no active firewall ({', '.join(installed)} inactive)", tools=seen)
        return Finding.skip(
            "the firewall could not be read: "
            + "; ".join(f"{tool}: {said}" for tool, said in installed.items()),
            tools=seen,
        )
    return firewall_finding(ruleset, host_ports(ctx), seen)
