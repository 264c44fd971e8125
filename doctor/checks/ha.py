"""High availability: do the replicas keep up, can the Sentinels fail over, do the node pools
answer? (docs/high-availability.md, "Doctor checks")

Each check is ``skip`` where its feature is not configured: ``redis.sentinel`` without
Sentinel (a plain REDIS_URL), ``nodepool.peers`` with one NODEPOOL_ADDRESS, and
``redis.replication`` for a single Redis that has no replica.

Every Sentinel and data node is asked directly, all at once, once each with a short timeout
and no retries: a dead or hung (SIGSTOPped) node costs one timeout, and a wrong master name
is an answer, not a wait. The readers of Redis's replies are pure functions (fixture-tested);
they take redis-py's parsed replies (RESP2 flat lists or RESP3 maps) or ``redis-cli`` text.
"""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from doctor.checks.ports import connect_ms
from doctor.context import Context, Unavailable
from doctor.model import Finding
from doctor.probes.redis_info import as_int
from doctor.probes.replication import (
    Address,
    LinkedReplica,
    Replication,
    pools_on_primary,
    read_replication,
    record_address,
    record_flags,
    reply_fields,
    reply_records,
    reply_text,
    show,
)
from doctor.registry import check
from hivemind import redis_client
from hivemind.addresses import SentinelTarget
from hivemind.service_health import grpc_serving
from hivemind.tls import TLSError, client_security

T = TypeVar("T")
R = TypeVar("R")

#: A replica whose last acknowledgement (INFO ``lag``) is older than this is behind.
LAG_WARN_SECONDS = 10
#: The most one probe of one node may take; a third of the probe budget below that, since a
#: check asks in up to three rounds (Sentinels, their peers or the data nodes, late finds).
NODE_TIMEOUT_MAX = 1.0
GUIDE = "(ours: docs/high-availability.md, Doctor checks)"


def node_timeout(ctx: Context) -> float:
    return max(0.2, min(NODE_TIMEOUT_MAX, ctx.probe_timeout / 3))


# -- readers (pure) -----------------------------------------------------------------------------


def _client(address: Address, password: str | None, timeout: float) -> redis.Redis:
    return redis.Redis(
        host=address[0],
        port=address[1],
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
        decode_responses=True,
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc):
        return f"refuses our password ({exc})"
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return "no answer in time (a hung or overloaded process)"
    return str(exc) or type(exc).__name__


def _at_once(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    if not items:
        return []
    with ThreadPoolExecutor(min(16, len(items))) as pool:
        return list(pool.map(function, items))


@dataclass(frozen=True)
class SentinelAnswer:
    """What one Sentinel said about the master it was asked for ("" error: it answered)."""

    address: Address
    error: str = ""
    watches: bool = False
    #: The masters it watches, when not ours (for the "wrong name" message).
    watched: tuple[str, ...] = ()
    master: Mapping[str, str] = dataclasses.field(default_factory=dict)
    replicas: tuple[Mapping[str, str], ...] = ()
    peers: tuple[Mapping[str, str], ...] = ()
    #: CKQUORUM's reply, and whether it was OK.
    ckquorum: str = ""
    quorum_ok: bool = False

    @property
    def primary(self) -> Address | None:
        return record_address(self.master)


def ask_sentinel(address: Address, target: SentinelTarget, timeout: float) -> SentinelAnswer:
    """SENTINEL MASTER / REPLICAS / SENTINELS / CKQUORUM for ``target``'s master, never raising."""
    name = target.master_name
    client = _client(address, target.password, timeout)
    try:
        try:
            master = reply_fields(client.execute_command("SENTINEL", "MASTER", name))
        except redis.ResponseError as exc:
            if "no such master" not in str(exc).lower():
                raise
            masters = reply_records(client.execute_command("SENTINEL", "MASTERS"))
            return SentinelAnswer(address, watched=tuple(m.get("name", "?") for m in masters))
        replicas = reply_records(client.execute_command("SENTINEL", "REPLICAS", name))
        peers = reply_records(client.execute_command("SENTINEL", "SENTINELS", name))
        try:
            verdict, ok = reply_text(client.execute_command("SENTINEL", "CKQUORUM", name)), True
        except redis.ResponseError as exc:
            verdict, ok = str(exc), False
    except (redis.RedisError, OSError) as exc:
        return SentinelAnswer(address, error=_reason(exc))
    finally:
        client.close()
    return SentinelAnswer(
        address, "", True, (), master, tuple(replicas), tuple(peers), verdict.strip(), ok
    )


def ask_sentinels(ctx: Context, target: SentinelTarget) -> list[SentinelAnswer]:
    """The configured Sentinels, then the peers they report that are not configured."""

    timeout = node_timeout(ctx)

    def ask(addresses: Sequence[Address]) -> list[SentinelAnswer]:
        return _at_once(lambda a: ask_sentinel(a, target, timeout), addresses)

    def probe() -> list[SentinelAnswer]:
        answers = ask(list(dict.fromkeys(target.sentinels)))
        asked = {answer.address for answer in answers}
        peers = [
            address
            for answer in answers
            for address in map(record_address, answer.peers)
            if address and address not in asked
        ]
        return answers + ask(list(dict.fromkeys(peers)))

    # Both Redis checks ask the same Sentinels: once per run.
    return ctx.shared(f"ha.sentinels:{target.master_name}", probe)


@dataclass(frozen=True)
class NodeAnswer:
    address: Address
    error: str = ""
    replication: Replication | None = None


def ask_node(address: Address, password: str | None, timeout: float) -> NodeAnswer:
    client = _client(address, password, timeout)
    try:
        return NodeAnswer(address, replication=read_replication(client.info("replication")))
    except (redis.RedisError, OSError) as exc:
        return NodeAnswer(address, error=_reason(exc))
    finally:
        client.close()


# -- redis.replication --------------------------------------------------------------------------


def sentinel_primary(answers: Iterable[SentinelAnswer]) -> Address | None:
    """The primary most of the answering Sentinels name (redis.sentinel reports a split)."""
    named = Counter(a.primary for a in answers if a.watches and a.primary)
    return named.most_common(1)[0][0] if named else None


def replication_finding(
    primary: Address,
    nodes: Mapping[Address, NodeAnswer],
    sentinel_replicas: Mapping[Address, set[str]],
    lag_warn: int = LAG_WARN_SECONDS,
    label: str = "",
) -> Finding:
    """The verdict on one replication set: ``primary`` (as Sentinel names it, or REDIS_URL's
    server, then called ``label``), every data node asked, and the replicas Sentinel knows
    with their flags."""
    head = nodes.get(primary)
    name = label or show(primary)
    evidence: dict[str, Any] = {
        "primary": name,
        "nodes": {(name if a == primary else show(a)): _node_row(n) for a, n in nodes.items()},
        "sentinel_replicas": {show(a): sorted(f) for a, f in sentinel_replicas.items()},
        "lag_warn_seconds": lag_warn,
    }
    if head is None or head.replication is None:
        why = head.error if head else "not asked"
        return Finding.fail(
            f"the primary {name} does not answer: {why}",
            "see redis.sentinel: Sentinel fails over once it sees the primary down",
            **evidence,
        )
    if not head.replication.is_primary:
        return Finding.fail(
            f"{name}, named the primary, reports role:{head.replication.role}"
            + (f" of {show(head.replication.master)}" if head.replication.master else ""),
            "a failover is under way or the Sentinels are stale: see redis.sentinel",
            **evidence,
        )
    problems = _replica_problems(primary, head.replication, nodes, sentinel_replicas, lag_warn)
    masters = [a for a, n in nodes.items() if n.replication and n.replication.is_primary]
    if len(masters) > 1:
        others = ", ".join(show(a) for a in masters if a != primary)
        return Finding.fail(
            f"split brain: {len(masters)} data nodes report role:master: {name} "
            f"(the primary Sentinel names) and {others}"
            + (f"; also: {'; '.join(problems)}" if problems else ""),
            f"writes to {others} will be lost: Sentinel demotes a former primary on its own "
            f"within seconds; if it persists, run `REPLICAOF {primary[0]} {primary[1]}` on "
            f"{others} (never FLUSHALL), then see redis.sentinel",
            masters=[show(a) for a in masters],
            **evidence,
        )
    if problems:
        return Finding.warn(
            "; ".join(problems),
            "look at each named replica's redis log and its host; a replica that is down "
            "or behind cannot take over without losing writes",
            **evidence,
        )
    linked = head.replication.replicas
    if not linked:
        return Finding.warn(
            f"the primary {name} has no replica: a failover has nothing to promote",
            "start a replica (`replicaof PRIMARY PORT`) for Sentinel to fail over to",
            **evidence,
        )
    worst = max(r.lag for r in linked)
    behind = max(bytes_behind(head.replication.offset, r, nodes) for r in linked)
    return Finding.ok(
        f"primary {name} with {len(linked)} replica(s) online (lag ≤ {worst} s, "
        f"≤ {behind} bytes behind), no other primary among {len(nodes)} data node(s)",
        **evidence,
    )


def bytes_behind(
    primary_offset: int, replica: LinkedReplica, nodes: Mapping[Address, NodeAnswer]
) -> int:
    """How far a replica trails: by its own offset when it answered (the primary's copy is
    only as fresh as the last once-a-second acknowledgement), else by the primary's copy."""
    node = nodes.get(replica.address)
    own = node.replication if node is not None else None
    offset = own.offset if own is not None and not own.is_primary else replica.offset
    return max(0, primary_offset - offset)


def _replica_problems(
    primary: Address,
    head: Replication,
    nodes: Mapping[Address, NodeAnswer],
    sentinel_replicas: Mapping[Address, set[str]],
    lag_warn: int,
) -> list[str]:
    """One line per replica that is down, unlinked, behind or following another primary."""
    linked = {r.address: r for r in head.replicas}
    reasons: dict[Address, list[str]] = {}
    for address in dict.fromkeys([*linked, *sentinel_replicas, *nodes]):
        if address == primary:
            continue
        said: list[str] = []
        node, seen = nodes.get(address), linked.get(address)
        if node is not None and node.error:
            said.append(f"does not answer ({node.error})")
        if node is not None and node.replication and not node.replication.is_primary:
            own = node.replication
            if own.master and own.master != primary:
                said.append(f"follows {show(own.master)}, not the primary")
            elif not own.link_up:
                said.append(f"master_link_status:down for {own.link_down_seconds} s")
        if seen is None:
            a_primary = node is not None and node.replication and node.replication.is_primary
            if address in sentinel_replicas and not a_primary:
                down = {"s_down", "o_down", "disconnected"} & sentinel_replicas[address]
                said.append(
                    "Sentinel knows it but the primary has it not connected"
                    + (f" (Sentinel: {','.join(sorted(down))})" if down else "")
                )
        elif seen.state != "online":
            said.append(f"state {seen.state} on the primary")
        elif seen.lag > lag_warn:
            said.append(
                f"lag {seen.lag} s (> {lag_warn} s), "
                f"{bytes_behind(head.offset, seen, nodes)} bytes behind"
            )
        if said:
            reasons[address] = said
    return [f"replica {show(a)}: {', '.join(why)}" for a, why in reasons.items()]


def _node_row(node: NodeAnswer) -> dict[str, Any]:
    if node.replication is None:
        return {"error": node.error}
    seen = node.replication
    row: dict[str, Any] = {"role": seen.role, "offset": seen.offset}
    if seen.is_primary:
        row["replicas"] = {
            show(r.address): {"state": r.state, "lag": r.lag, "behind": seen.offset - r.offset}
            for r in seen.replicas
        }
    else:
        row["master"] = show(seen.master) if seen.master else None
        row["link"] = "up" if seen.link_up else f"down {seen.link_down_seconds} s"
    return row


@check("redis.replication", title="Redis replicas keep up, and there is one primary", guide=GUIDE)
def replication(ctx: Context) -> Finding:
    target = redis_client.sentinel_target(ctx.settings)
    if target is None:
        return _single_redis_replication(ctx)
    answers = ask_sentinels(ctx, target)
    primary = sentinel_primary(answers)
    if primary is None:
        why = (
            f"no Sentinel watches a master named {target.master_name!r}"
            if any(not a.error for a in answers)
            else "no Sentinel answers"
        )
        return Finding.skip(f"{why}, so the data nodes are unknown (see redis.sentinel)")
    sentinel_replicas: dict[Address, set[str]] = {}
    for answer in answers:
        for record in answer.replicas:
            address = record_address(record)
            if address:
                sentinel_replicas.setdefault(address, set()).update(record_flags(record))
    # Every node any Sentinel names, a former primary among them: split brain shows there.
    claimed = [a.primary for a in answers if a.primary]
    timeout = node_timeout(ctx)
    nodes: dict[Address, NodeAnswer] = {}
    todo = list(dict.fromkeys([primary, *claimed, *sentinel_replicas]))
    for _round in range(2):  # then the replicas only a primary's INFO lists
        for node in _at_once(lambda a: ask_node(a, target.password, timeout), todo):
            nodes[node.address] = node
        found = [
            r.address
            for n in nodes.values()
            if n.replication and n.replication.is_primary
            for r in n.replication.replicas
        ]
        todo = [a for a in dict.fromkeys(found) if a not in nodes]
    return replication_finding(primary, nodes, sentinel_replicas)


def _single_redis_replication(ctx: Context) -> Finding:
    """A plain REDIS_URL: its server's own INFO (the replicas it lists are not asked)."""
    seen = read_replication(ctx.redis_info())
    where = redis_client.describe_redis(ctx.settings)
    if not seen.is_primary:
        master = show(seen.master) if seen.master else "?"
        return Finding.fail(
            f"REDIS_URL ({where}) names a replica of {master}: HiveMind's writes are refused",
            f"point REDIS_URL at the primary {master}, or connect through Sentinel "
            "(redis+sentinel://) so a failover is followed",
        )
    if not seen.replicas:
        return Finding.skip(f"a single Redis ({where}) with no replica: nothing replicates")
    address = ("", 0)  # INFO came through REDIS_URL, whatever form its address takes
    nodes = {address: NodeAnswer(address, replication=seen)}
    return replication_finding(address, nodes, {}, label=where)


# -- redis.sentinel -----------------------------------------------------------------------------


def sentinel_finding(target: SentinelTarget, answers: Sequence[SentinelAnswer]) -> Finding:
    """The verdict on the Sentinels ``ask_sentinels`` reached (the configured ones first)."""
    name = target.master_name
    configured = set(target.sentinels)
    by_address = {a.address: a for a in answers}
    rows = {show(a.address): _sentinel_row(a) for a in answers}
    evidence: dict[str, Any] = {"master_name": name, "sentinels": rows}
    watching = [a for a in answers if a.watches]
    if not any(not a.error for a in answers):
        return Finding.fail(
            "no Sentinel answers: " + "; ".join(f"{show(a.address)} {a.error}" for a in answers),
            "start the Sentinels (`redis-server sentinel.conf --sentinel`), or fix "
            "REDIS_SENTINELS / the hosts of the redis+sentinel:// REDIS_URL",
            **evidence,
        )
    if not watching:
        names = sorted({n for a in answers for n in a.watched})
        return Finding.fail(
            f"no Sentinel watches a master named {name!r}"
            + (f" (they watch: {', '.join(names)})" if names else " (they watch none)"),
            "set REDIS_MASTER_NAME (or the path of the redis+sentinel:// REDIS_URL) to the "
            "name in the Sentinels' `sentinel monitor NAME HOST PORT QUORUM`",
            **evidence,
        )
    known = configured | {
        address for a in watching for address in map(record_address, a.peers) if address
    }
    up = {a.address for a in watching}
    quorum = max(as_int(a.master.get("quorum"), 0) for a in watching)
    needed = max(quorum, len(known) // 2 + 1)
    evidence.update(known=len(known), answering=len(up), quorum=quorum, needed=needed)
    share = f"{len(up)}/{len(known)}"
    if len(up) < needed:
        return Finding.fail(
            f"Sentinel quorum lost: {share} Sentinels watching {name!r} answer, a failover "
            f"needs {needed} (quorum {quorum}, majority of {len(known)})",
            "start the Sentinels named in the evidence; until then a dead primary is not replaced",
            **evidence,
        )
    refused = [a for a in watching if not a.quorum_ok]
    if refused:
        return Finding.fail(
            "CKQUORUM fails: " + "; ".join(f"{show(a.address)} says {a.ckquorum}" for a in refused),
            "each Sentinel must reach a majority of the others (firewall, announce-ip)",
            **evidence,
        )
    named = {a.address: a.primary for a in watching}
    if len(set(named.values())) > 1:
        return Finding.fail(
            "the Sentinels disagree on the primary: "
            + "; ".join(
                f"{show(s)} says {show(p) if p else 'none'}" for s, p in sorted(named.items())
            ),
            "wait for a failover in progress to end (failover-timeout); if it lasts, "
            "`SENTINEL RESET " + name + "` on the odd one out",
            **evidence,
        )
    primary = next(iter(named.values()))
    shown = show(primary) if primary else "?"
    flags = set().union(*(record_flags(a.master) for a in watching))
    if {"o_down", "s_down"} & flags:
        return Finding.fail(
            f"the Sentinels see the primary {shown} down ({','.join(sorted(flags))})",
            "a failover should follow within failover-timeout; see redis.replication",
            **evidence,
        )
    notes = [
        f"Sentinel {show(a)} does not answer ({by_address[a].error})"
        if by_address[a].error
        else f"Sentinel {show(a)} does not watch {name!r}"
        for a in sorted(configured - up)
    ] + [f"Sentinel {show(a)} (a peer) does not answer" for a in sorted(known - configured - up)]
    if any("failover" in flag for flag in flags):
        notes.append(f"a failover is in progress ({','.join(sorted(flags))})")
    summary = f"{share} Sentinels answer, quorum {quorum} reachable, all name primary {shown}"
    if notes:
        return Finding.warn(
            f"{summary}; but {'; '.join(notes)}",
            "start or fix the named Sentinels: one more loss and a dead primary is not replaced"
            if len(up) - 1 < needed
            else "start or fix the named Sentinels",
            **evidence,
        )
    return Finding.ok(summary + " (CKQUORUM OK)", **evidence)


def _sentinel_row(answer: SentinelAnswer) -> dict[str, Any]:
    if answer.error:
        return {"error": answer.error}
    if not answer.watches:
        return {"watches": list(answer.watched)}
    primary = answer.primary
    return {
        "primary": show(primary) if primary else None,
        "flags": answer.master.get("flags", ""),
        "replicas": len(answer.replicas),
        "other_sentinels": len(answer.peers),
        "ckquorum": answer.ckquorum,
    }


@check(
    "redis.sentinel",
    title="The Sentinels are reachable, have quorum and agree on the primary",
    guide=GUIDE,
)
def sentinel(ctx: Context) -> Finding:
    target = redis_client.sentinel_target(ctx.settings)
    if target is None:
        return Finding.skip(
            "no Sentinel configured: REDIS_URL names one Redis (ports.redis checks it)"
        )
    return sentinel_finding(target, ask_sentinels(ctx, target))


# -- nodepool.peers -----------------------------------------------------------------------------


def peers_finding(
    probed: Mapping[str, str], on_primary: Mapping[str, bool] | None = None, primary: str = ""
) -> Finding:
    """``probed``: node pool address -> "" when its gRPC health is SERVING, else why not;
    ``on_primary``: whether each has a connection to the Redis primary (None: unknown)."""
    dead = {address: why for address, why in probed.items() if why}
    elsewhere = [
        address
        for address, why in probed.items()
        if not why and on_primary is not None and not on_primary.get(address, True)
    ]
    evidence: dict[str, Any] = {
        "nodepools": {address: why or "SERVING" for address, why in probed.items()},
        "verified": "gRPC health per address"
        + (
            f", and a connection to the primary {primary} (its CLIENT LIST)"
            if on_primary is not None
            else "; the Redis primary does not answer, so which one each uses is not verified"
        ),
    }
    fix = "start the node pool at each named address, or drop it from NODEPOOL_ADDRESS"
    named = "; ".join(f"{a}: {why}" for a, why in dead.items())
    if len(dead) == len(probed):
        return Finding.fail(f"no node pool in NODEPOOL_ADDRESS answers: {named}", fix, **evidence)
    if elsewhere:
        return Finding.warn(
            f"{', '.join(elsewhere)} answer(s) but hold no connection to the Redis primary "
            f"{primary}: they use another Redis (a split brain) or lost theirs",
            "look at that node pool's log; restart it (`hivemind recover`) once Sentinel "
            "agrees on one primary (redis.sentinel)",
            **evidence,
        )
    if dead:
        share = f"{len(dead)} of {len(probed)}"
        summary = f"{share} node pools do not answer: {named} (clients and workers use the others)"
        return Finding.warn(summary, fix, **evidence)
    seen = f", each connected to the primary {primary}" if on_primary is not None else ""
    return Finding.ok(
        f"all {len(probed)} node pools are SERVING: {', '.join(probed)}{seen}", **evidence
    )


@check("nodepool.peers", title="Every node pool in NODEPOOL_ADDRESS answers", guide=GUIDE)
def nodepool_peers(ctx: Context) -> Finding:
    settings = ctx.settings
    try:
        pools = redis_client.parse_addresses(
            settings.client_address, settings.grpc_port, "NODEPOOL_ADDRESS"
        )
    except ValueError as exc:
        return Finding.fail(str(exc), "write NODEPOOL_ADDRESS as host:port,host:port")
    if len(pools) < 2:
        return Finding.skip(f"one node pool address ({show(pools[0])}); ports.nodepool checks it")
    try:
        security = client_security(settings)
    except TLSError as exc:
        return Finding.fail(f"cannot set up TLS to the node pools: {exc}", "see security.tls")
    if security is not None and not security.server_name:
        # Clients dialing the list check every certificate for the first host: so do we.
        security = dataclasses.replace(security, server_name=pools[0][0])
    timeout = node_timeout(ctx)

    def probe(address: Address) -> str:
        try:
            connect_ms(address[0], address[1], timeout)
        except OSError as exc:
            return f"nothing accepts connections ({exc})"
        if not grpc_serving(show(address), timeout=timeout, security=security):
            return "accepts TCP but its gRPC health is not SERVING (or TLS fails)"
        return ""

    unique = list(dict.fromkeys(pools))
    probed = dict(zip(map(show, unique), _at_once(probe, unique), strict=True))
    try:
        client = ctx.redis()
        names = [entry.get("name", "") for entry in client.client_list()]
        pool = client.connection_pool
        # Through Sentinel the pool knows the primary it found; else its own host and port.
        address = getattr(pool, "master_address", None) or (
            pool.connection_kwargs.get("host", "?"),
            pool.connection_kwargs.get("port", "?"),
        )
        primary = f"{address[0]}:{address[1]}"
    except (Unavailable, redis.RedisError, OSError):
        return peers_finding(probed)
    return peers_finding(probed, pools_on_primary(unique, names, socket.gethostname()), primary)
