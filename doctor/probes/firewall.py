"""Does this host's firewall let TCP connections in on a port? Parsed from the output of
``ufw status verbose``, ``firewall-cmd --list-all``, ``nft list ruleset`` and ``iptables-save``.

Every tool's rules become :class:`Chain` objects evaluated the way the kernel does, first match
wins, so one evaluator answers for all four. Rules this model cannot judge (other protocols,
loopback-only, established connections, negations, named sets) are left out: they never
decide whether a *new* connection from another host gets in.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

PortRange = tuple[int, int]

ACCEPT, DROP, REJECT, RETURN, JUMP = "accept", "drop", "reject", "return", "jump"
#: firewalld's predefined services that matter here (``/usr/lib/firewalld/services``).
FIREWALLD_SERVICE_PORTS: dict[str, list[PortRange]] = {
    "ssh": [(22, 22)],
    "http": [(80, 80)],
    "https": [(443, 443)],
    "redis": [(6379, 6379)],
    "redis-sentinel": [(26379, 26379)],
}


@dataclass(frozen=True)
class Rule:
    #: Ports it matches; None matches every port.
    ports: tuple[PortRange, ...] | None
    verdict: str
    #: Source address it is limited to; None for anywhere.
    source: str | None = None
    #: Chain jumped to when ``verdict`` is JUMP.
    target: str | None = None
    text: str = ""

    def matches(self, port: int) -> bool:
        return self.ports is None or any(low <= port <= high for low, high in self.ports)


@dataclass
class Chain:
    name: str
    #: ACCEPT or DROP for a base chain; None for a chain that returns to its caller.
    policy: str | None
    rules: list[Rule] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: The rule (or ``policy …``) that decided.
    by: str
    source: str | None = None


@dataclass
class Ruleset:
    tool: str
    #: False when the firewall is off or filters nothing (an accept policy and no drop rule).
    active: bool
    chains: dict[str, Chain]
    #: The chains every incoming packet passes (several for nftables tables hooked to input).
    entry: list[str]
    #: Where a fix rule would go (nftables: ``inet filter input``).
    location: str = ""

    def decide(self, port: int) -> Decision:
        """Whether a new TCP connection to ``port`` from another host gets in."""
        if not self.active:
            return Decision(True, f"{self.tool} is not filtering")
        allowing: Decision | None = None
        for name in self.entry:
            decision = _walk(self.chains, name, port, depth=0)
            if decision is None or not decision.allowed:
                return decision or Decision(False, f"chain {name}")
            allowing = allowing or decision
        return allowing or Decision(True, "no chain filters input")


def _walk(chains: dict[str, Chain], name: str, port: int, depth: int) -> Decision | None:
    chain = chains.get(name)
    if chain is None or depth > 8:
        return None
    for rule in chain.rules:
        if not rule.matches(port):
            continue
        if rule.verdict == JUMP and rule.target:
            decision = _walk(chains, rule.target, port, depth + 1)
            if decision is not None:
                return decision
            continue
        if rule.verdict == RETURN:
            return None
        if rule.verdict in (DROP, REJECT) and rule.source:
            continue  # blocks some senders only; others still reach later rules
        return Decision(rule.verdict == ACCEPT, rule.text, rule.source)
    if chain.policy is None:
        return None
    return Decision(chain.policy == ACCEPT, f"policy {chain.policy} of {name}")


def _filters(chains: dict[str, Chain], entry: list[str]) -> bool:
    return any(
        chain.policy in (DROP, REJECT) or any(r.verdict in (DROP, REJECT) for r in chain.rules)
        for chain in chains.values()
        if chain.name in entry or chain.policy is None
    )


def _port_ranges(text: str, separator: str = ",") -> tuple[PortRange, ...]:
    """``22``, ``5000:5010``, ``5000-5010`` and lists of them."""
    ranges = []
    for part in text.split(separator):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.replace("-", ":").partition(":")
        ranges.append((int(low), int(high or low)))
    return tuple(ranges)


# -- ufw -------------------------------------------------------------------------------------

_UFW_PORTS = re.compile(r"^(?P<ports>\d+(?:[:,]\d+)*)(?:/(?P<proto>tcp|udp))?$")


_SKIPPED = "skipped"


def _ufw_to(to: str) -> tuple[PortRange, ...] | str | None:
    """Ports of ufw's To column; None for all ports; ``_SKIPPED`` for a rule not judged here."""
    if "(v6)" in to:
        return _SKIPPED  # the same rule again for IPv6
    words = to.replace(" on ", " ").split()
    for word in words:
        match = _UFW_PORTS.match(word)
        if match:
            if match["proto"] == "udp":
                return _SKIPPED
            return _port_ranges(match["ports"])
    if words and (words[0] == "Anywhere" or re.match(r"^[\d.:/a-fA-F]+$", words[0])):
        return None  # every port (to this host or one of its addresses)
    return _SKIPPED  # an application profile (OpenSSH …): its ports are not in this output


def parse_ufw_status(text: str) -> Ruleset:
    active = bool(re.search(r"^Status:\s*active", text, re.MULTILINE))
    default = re.search(r"^Default:\s*(\w+)\s*\(incoming\)", text, re.MULTILINE)
    policy = ACCEPT if default and default.group(1) == "allow" else DROP
    chain = Chain("ufw", policy)
    in_table = False
    for line in text.splitlines():
        if line.startswith("--"):
            in_table = True
            continue
        if not in_table or not line.strip():
            continue
        columns = re.split(r"\s{2,}", line.strip())
        if len(columns) < 3:
            continue
        to, action, source = columns[0], columns[1].split(), columns[2]
        if "OUT" in action or "FWD" in action:
            continue
        ports = _ufw_to(to)
        if isinstance(ports, str):
            continue
        verdict = {"ALLOW": ACCEPT, "LIMIT": ACCEPT, "DENY": DROP, "REJECT": REJECT}.get(action[0])
        if verdict is None:
            continue
        chain.rules.append(
            Rule(
                ports,
                verdict,
                None if source.startswith("Anywhere") else source,
                text=line.strip(),
            )
        )
    return Ruleset("ufw", active, {"ufw": chain}, ["ufw"])


# -- firewalld ---------------------------------------------------------------------------------

_RICH_PORT = re.compile(r'port port="(?P<ports>[\d-]+)" protocol="tcp"')
_RICH_SOURCE = re.compile(r'source address="(?P<source>[^"]+)"')


def parse_firewalld(state: str, list_all: str) -> Ruleset:
    """``firewall-cmd --state`` and ``--list-all`` (the default zone)."""
    active = state.strip() == "running"
    fields: dict[str, str] = {}
    rich: list[str] = []
    zone = ""
    current = ""
    for line in list_all.splitlines():
        if line and not line[0].isspace():
            zone = line.split()[0]
            continue
        stripped = line.strip()
        key, sep, value = stripped.partition(":")
        if sep and key in ("target", "services", "ports", "rich rules", "sources", "interfaces"):
            current = key
            fields[key] = value.strip()
        elif current == "rich rules" and stripped:
            rich.append(stripped)
    target = fields.get("target", "default").upper()
    chain = Chain(zone or "firewalld", ACCEPT if target == "ACCEPT" else REJECT)
    for rule_text in rich:
        ports = _RICH_PORT.search(rule_text)
        if not ports or " accept" not in rule_text:
            continue
        source = _RICH_SOURCE.search(rule_text)
        chain.rules.append(
            Rule(
                _port_ranges(ports["ports"]),
                ACCEPT,
                source["source"] if source else None,
                text=rule_text,
            )
        )
    for service in fields.get("services", "").split():
        if service in FIREWALLD_SERVICE_PORTS:
            ranges = tuple(FIREWALLD_SERVICE_PORTS[service])
            chain.rules.append(Rule(ranges, ACCEPT, text=f"service {service}"))
    for spec in fields.get("ports", "").split():
        number, _, proto = spec.partition("/")
        if proto == "tcp":
            chain.rules.append(Rule(_port_ranges(number), ACCEPT, text=f"port {spec}"))
    return Ruleset("firewalld", active, {chain.name: chain}, [chain.name], zone)


# -- iptables-save -------------------------------------------------------------------------------

_IPTABLES_VERDICTS = {"ACCEPT": ACCEPT, "DROP": DROP, "REJECT": REJECT, "RETURN": RETURN}


def _iptables_rule(words: list[str], chains: set[str], text: str) -> Rule | None:
    if "!" in words:
        return None  # a negated match: not judged here
    options: dict[str, str] = {}
    for index, word in enumerate(words):
        if word.startswith("-") and index + 1 < len(words):
            options[word] = words[index + 1]
    target = options.get("-j") or options.get("-g")
    if not target:
        return None
    if options.get("-p", "tcp") not in ("tcp", "6", "all"):
        return None
    if options.get("-i") == "lo":
        return None
    state = options.get("--ctstate") or options.get("--state")
    if state and "NEW" not in state.split(","):
        return None
    ports: tuple[PortRange, ...] | None = None
    if "--dport" in options:
        ports = _port_ranges(options["--dport"])
    elif "--dports" in options:
        ports = _port_ranges(options["--dports"])
    source = options.get("-s")
    if source in ("0.0.0.0/0", "::/0"):
        source = None
    if target in _IPTABLES_VERDICTS:
        return Rule(ports, _IPTABLES_VERDICTS[target], source, text=text)
    if target in chains:
        return Rule(ports, JUMP, source, target, text=text)
    return None  # LOG, MARK …: not a verdict


def parse_iptables_save(text: str) -> Ruleset:
    """The ``filter`` table's INPUT chain and the user chains it jumps to."""
    chains: dict[str, Chain] = {}
    lines: list[str] = []
    table = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
        elif table != "filter":
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            verdict = _IPTABLES_VERDICTS.get(policy)
            chains[name] = Chain(name, verdict)
        elif line.startswith("-A "):
            lines.append(line)
    for line in lines:
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        chain = chains.get(words[1])
        rule = _iptables_rule(words[2:], set(chains), line)
        if chain is not None and rule is not None:
            chain.rules.append(rule)
    entry = ["INPUT"] if "INPUT" in chains else []
    return Ruleset("iptables", _filters(chains, entry), chains, entry, "INPUT")


# -- nft list ruleset ----------------------------------------------------------------------------

_NFT_VERDICTS = {"accept": ACCEPT, "drop": DROP, "reject": REJECT, "return": RETURN}
_NFT_DPORT = re.compile(r"\b(?:tcp|th) dport (?P<ports>\{[^}]*\}|[\d-]+)")
_NFT_SADDR = re.compile(r"\bip6? saddr (?P<source>[\d./a-fA-F:]+)")
_NFT_HOOK = re.compile(r"\bhook input\b")
_NFT_POLICY = re.compile(r"\bpolicy (?P<policy>accept|drop)")


def _nft_rule(text: str, table: str) -> Rule | None:
    words = text.replace(";", " ").split()
    if not words or "!=" in words or any(word.startswith("@") for word in words):
        return None
    if "udp" in words and "tcp" not in words:
        return None
    if any(word in ("iif", "iifname") for word in words) and ('"lo"' in words or "lo" in words):
        return None
    if "ct" in words and "state" in words:
        states = words[words.index("state") + 1] if "state" in words[:-1] else ""
        if "new" not in states.split(","):
            return None
    ports = _NFT_DPORT.search(text)
    ranges = _port_ranges(ports["ports"].strip("{} ")) if ports else None
    source = _NFT_SADDR.search(text)
    for index, word in enumerate(words):
        if word in _NFT_VERDICTS:
            return Rule(ranges, _NFT_VERDICTS[word], source and source["source"], text=text)
        if word in ("jump", "goto") and index + 1 < len(words):
            target = f"{table} {words[index + 1]}"
            return Rule(ranges, JUMP, source and source["source"], target, text=text)
    return None


def parse_nft_ruleset(text: str) -> Ruleset:
    """Every chain hooked to input (in any table) must accept the packet."""
    chains: dict[str, Chain] = {}
    entry: list[str] = []
    table = ""
    chain: Chain | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("table "):
            table = " ".join(line.split()[1:3]).rstrip(" {")
            continue
        if line.startswith("chain "):
            name = f"{table} {line.split()[1]}"
            chain = Chain(name, None)
            chains[name] = chain
            continue
        if chain is None or not line:
            continue
        if line == "}":
            chain = None
            continue
        if line.startswith("type "):
            if _NFT_HOOK.search(line):
                policy = _NFT_POLICY.search(line)
                # A base chain without a policy accepts what its rules do not drop.
                chain.policy = DROP if policy and policy["policy"] == "drop" else ACCEPT
                entry.append(chain.name)
            continue
        rule = _nft_rule(line, table)
        if rule is not None:
            chain.rules.append(rule)
    location = entry[0] if entry else ""
    return Ruleset("nftables", _filters(chains, entry), chains, entry, location)
