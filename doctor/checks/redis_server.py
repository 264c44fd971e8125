"""Is Redis configured to keep HiveMind's state safe: exposure, persistence, memory, eviction,
latency? Everything is read from INFO and CONFIG; fixes use CONFIG SET only (never CONFIG
REWRITE, never redis.conf), so a restart returns to what the operator wrote.
"""

from __future__ import annotations

import shlex
import time
from typing import Any
from urllib.parse import urlsplit

import redis

from doctor.context import Context, Unavailable
from doctor.fixes import Action, fixer
from doctor.model import Finding, Status
from doctor.probes import redis_info as probe
from doctor.registry import check
from hivemind.config import effective_redis_url, redis_password_source, url_password
from hivemind.redis_client import RedisUnreachable, locate_primary, sentinel_target

#: PINGs in the latency burst (p99 of 100 ignores one hiccup), cut short after PING_BUDGET_S so
#: a far-away Redis does not eat the check's timeout.
PING_BURST = 100
PING_BUDGET_S = 0.5
PING_P99_WARN_MS = 10.0
#: Slowlog entries and latency events older than this are history, not a current problem.
RECENT_SECONDS = 3600
#: Without maxmemory, a host this small can be driven out of memory by Redis alone.
SMALL_HOST_BYTES = 4 * 1024**3
MEMORY_WARN_FRACTION = 0.80
MEMORY_FAIL_FRACTION = 0.95
#: Fragmentation only matters once there is real memory behind it.
FRAGMENTATION_WARN = 1.5
FRAGMENTATION_MIN_USED = 100 * 1024**2


def redis_cli(ctx: Context) -> str:
    """The ``redis-cli`` prefix that reaches the configured Redis (password never inlined:
    ``--askpass``, or REDISCLI_AUTH read from the password file `hivemind up` wrote)."""
    source = redis_password_source(ctx.settings)
    parts = ["redis-cli"]
    if source not in ("", "REDIS_URL", "REDIS_PASSWORD"):
        parts.insert(0, f'REDISCLI_AUTH="$(cat {shlex.quote(source)})"')
    host, port, socket_path = _redis_endpoint(ctx)
    if socket_path:
        parts += ["-s", socket_path]
    else:
        if host and host not in ("localhost", "127.0.0.1"):
            parts += ["-h", host]
        if port and port != 6379:
            parts += ["-p", str(port)]
    if source in ("REDIS_URL", "REDIS_PASSWORD"):
        parts.append("--askpass")
    return " ".join(parts)


def _redis_endpoint(ctx: Context) -> tuple[str | None, int | None, str]:
    """(host, port, unix socket path) of the Redis the checks talk to: through Sentinel,
    the primary it names now (or, when none answers, the first Sentinel)."""
    target = sentinel_target(ctx.settings)
    if target is not None:
        try:
            return (*locate_primary(target, ctx.probe_timeout), "")
        except RedisUnreachable:
            return (*target.sentinels[0], "")
    url = urlsplit(ctx.settings.redis_url)
    if url.scheme == "unix":
        return None, None, url.path
    try:
        return url.hostname, url.port, ""
    except ValueError:  # a bad port: the config check reports it
        return url.hostname, None, ""


@check(
    "redis.config_exposure",
    title="Redis is not open to the network without a password",
    guide="1 連接問題 / Redis 連接失敗: 修改 Redis 配置",
)
def config_exposure(ctx: Context) -> Finding:
    seen = probe.exposure(ctx.redis_config(), ctx.redis_info())
    evidence = {
        "bind": " ".join(seen.binds) or "(all interfaces)",
        "protected-mode": "yes" if seen.protected_mode else "no",
        "requirepass": "set" if seen.has_password else "empty",
        "redis_version_major": seen.redis_major,
    }
    fix = (
        "bind Redis to 127.0.0.1 or the private address the node pool uses, and set "
        "requirepass (then put the password in REDIS_URL); never `protected-mode no` "
        "without a password"
    )
    if seen.beyond_loopback and not seen.has_password and not seen.protected_mode_guards:
        return Finding.fail(
            "Redis accepts connections from the network with no password: anyone who "
            "reaches it can read and rewrite every task",
            fix,
            **evidence,
        )
    if seen.beyond_loopback and not seen.has_password:
        return Finding.warn(
            "Redis listens beyond loopback with no password; only protected-mode keeps "
            "remote clients out",
            fix,
            **evidence,
        )
    if seen.wildcard:
        return Finding.warn(
            "Redis listens on every interface (password set)",
            "bind it to the private address the node pool uses instead of 0.0.0.0",
            **evidence,
        )
    where = "loopback only" if not seen.beyond_loopback else "a private address"
    guard = ", password set" if seen.has_password else ""
    return Finding.ok(f"Redis listens on {where}{guard}", **evidence)


@check(
    "redis.auth",
    title="Redis asks every client for a password",
    guide="1 連接問題 / Redis 連接失敗: 修改 Redis 配置 (requirepass)",
)
def auth(ctx: Context) -> Finding:
    try:
        client = ctx.redis()
        info = ctx.redis_info()
        try:
            config: dict[str, str] | None = ctx.redis_config()
        except Unavailable:
            config = None  # CONFIG renamed away: ACL and our own AUTH still tell
        acl = _acl_default_user(client)
    except Unavailable as missing:
        return Finding.skip(str(missing))
    seen = probe.auth(
        config, info, acl, sent_password=url_password(effective_redis_url(ctx.settings)) is not None
    )
    embedded = (ctx.home.run / "redis.pid").exists()
    return auth_finding(seen, embedded, str(ctx.home.redis_password_file), redis_cli(ctx))


def _acl_default_user(client: redis.Redis) -> Any:
    """``ACL GETUSER default``, or None (Redis before 6, or ACL refused to us)."""
    try:
        return client.acl_getuser("default")
    except redis.ResponseError:
        return None
    except (redis.RedisError, OSError) as exc:
        raise Unavailable(f"Redis stopped answering: {exc}") from exc


def auth_finding(seen: probe.Auth, embedded: bool, password_file: str, cli: str) -> Finding:
    """The verdict on what :func:`doctor.probes.redis_info.auth` read. Pure."""
    exposure = seen.exposure
    evidence: dict[str, object] = {
        "password": {True: "required", False: "none", None: "unknown"}[seen.has_password],
        "told_by": seen.source,
    }
    if exposure is not None:
        evidence["bind"] = " ".join(exposure.binds) or "(all interfaces)"
        evidence["protected-mode"] = "yes" if exposure.protected_mode else "no"
    else:
        evidence["bind"] = "unknown (CONFIG GET refused)"
    if seen.has_password is None:
        return Finding.skip(
            "Redis refuses CONFIG GET and ACL GETUSER, so whether it requires a password "
            "cannot be told from here",
            **evidence,
        )
    if seen.has_password:
        return Finding.ok(f"Redis requires a password (told by {seen.source})", **evidence)
    if embedded:
        fix = (
            "`hivemind down`, then `hivemind up`: it restarts this Redis with a password it "
            f"generates into {password_file} (0600) and gives every HiveMind process"
        )
    else:
        fix = (
            "set `requirepass` in redis.conf (a long random one) and restart Redis, then give "
            "HiveMind the same password in REDIS_PASSWORD (or REDIS_URL "
            f"redis://:PASSWORD@host:port/0); live: `{cli} config set requirepass …`"
        )
    if exposure is not None and exposure.beyond_loopback:
        return Finding.fail(
            f"Redis has no password and listens beyond loopback ({evidence['bind']}): anyone "
            "who reaches it can read every task and rewrite any (`hset task:<id> owner …`)",
            fix,
            **evidence,
        )
    return Finding.warn(
        "Redis has no password: any process on this host, a running task included, can "
        "rewrite task state (`hset task:<id> owner …`)",
        fix,
        **evidence,
    )


@check(
    "redis.persistence",
    title="Redis persists its data (RDB or AOF) and its last save worked",
    guide="性能監控 / 效能調優建議: save 900 1 …",
    fixable=True,
)
def persistence(ctx: Context) -> Finding:
    seen = probe.persistence(ctx.redis_config(), ctx.redis_info())
    evidence: dict[str, object] = {
        "save": seen.save_rules or "(none)",
        "appendonly": "yes" if seen.aof_enabled else "no",
        "changes_since_last_save": seen.changes_since_last_save,
    }
    if seen.rdb_last_save_time:
        evidence["last_save_age_s"] = max(0, int(ctx.now()) - seen.rdb_last_save_time)
    failures = seen.failures()
    if failures:
        return Finding.fail(
            "; ".join(failures),
            "look at Redis's log for the reason (disk full, permissions on its dir), then "
            f"`{redis_cli(ctx)} bgsave`",
            **evidence,
        )
    if not seen.any:
        return Finding.warn(
            "Redis keeps nothing on disk: a restart loses every queued task and worker",
            f"`{redis_cli(ctx)} config set appendonly yes`, and `appendonly yes` in "
            "redis.conf so it survives a restart",
            **evidence,
        )
    kinds = [name for name, on in (("AOF", seen.aof_enabled), ("RDB", seen.save_rules)) if on]
    return Finding.ok(f"Redis persists with {' and '.join(kinds)}", **evidence)


@fixer("redis.persistence")
def enable_aof(ctx: Context, finding: Finding) -> list[Action]:
    if finding.status is not Status.WARN:
        return []  # a failed save needs a human: its cause is on the disk, not in Redis

    def apply() -> str:
        ctx.redis().config_set("appendonly", "yes")
        return "appendonly is yes (Redis writes its AOF in the background)"

    return [
        Action(
            "redis.persistence",
            "turn on Redis's append-only file (appendonly no -> yes), live, without "
            "touching redis.conf",
            f"{redis_cli(ctx)} config set appendonly yes",
            apply,
        )
    ]


@check(
    "redis.memory",
    title="Redis has memory headroom",
    guide="2 性能問題: maxmemory 2gb; 性能監控",
)
def memory(ctx: Context) -> Finding:
    seen = probe.memory(ctx.redis_config(), ctx.redis_info())
    evidence: dict[str, object] = {
        "used_memory": probe.human_bytes(seen.used),
        "maxmemory": probe.human_bytes(seen.maxmemory) if seen.maxmemory else "unlimited",
        "total_system_memory": probe.human_bytes(seen.system_total),
        "mem_fragmentation_ratio": seen.fragmentation_ratio,
        "maxmemory-policy": seen.policy,
    }
    bigkeys = f"raise maxmemory, and find what grew with `{redis_cli(ctx)} --bigkeys`"
    fraction = seen.fraction_of_max
    if fraction is not None:
        evidence["used_percent"] = round(fraction * 100, 1)
        if fraction > MEMORY_FAIL_FRACTION:
            return Finding.fail(
                f"Redis uses {fraction:.0%} of its maxmemory; with noeviction, writes are "
                "refused when it is full",
                bigkeys,
                **evidence,
            )
        if fraction > MEMORY_WARN_FRACTION:
            return Finding.warn(f"Redis uses {fraction:.0%} of its maxmemory", bigkeys, **evidence)
    elif seen.system_total and seen.system_total < SMALL_HOST_BYTES:
        return Finding.warn(
            f"Redis has no maxmemory on a host with {probe.human_bytes(seen.system_total)} "
            "of RAM; it can grow until the kernel's OOM killer picks something",
            f"`{redis_cli(ctx)} config set maxmemory <about half the RAM>` (and in redis.conf)",
            **evidence,
        )
    if seen.fragmentation_ratio > FRAGMENTATION_WARN and seen.used > FRAGMENTATION_MIN_USED:
        return Finding.warn(
            f"Redis memory is fragmented (ratio {seen.fragmentation_ratio:.2f})",
            f"`{redis_cli(ctx)} config set activedefrag yes` (jemalloc builds only)",
            **evidence,
        )
    limit = "no maxmemory" if fraction is None else f"{fraction:.0%} of maxmemory"
    return Finding.ok(f"Redis uses {probe.human_bytes(seen.used)} ({limit})", **evidence)


@check(
    "redis.eviction_policy",
    title="Redis never evicts HiveMind's state",
    guide="2 性能問題 / 性能監控: maxmemory-policy allkeys-lru",
    fixable=True,
)
def eviction_policy(ctx: Context) -> Finding:
    policy = str(ctx.redis_config().get("maxmemory-policy", ""))
    evidence = {"maxmemory-policy": policy}
    fix = (
        f"`{redis_cli(ctx)} config set maxmemory-policy noeviction`, and "
        "`maxmemory-policy noeviction` in redis.conf (the guide's allkeys-lru loses data)"
    )
    if probe.evicts_any_key(policy):
        return Finding.fail(
            f"maxmemory-policy is {policy}: when memory runs short Redis silently deletes "
            "queued tasks, leases and worker state",
            fix,
            **evidence,
        )
    if not probe.keeps_persistent_keys(policy):
        return Finding.warn(f"unknown maxmemory-policy {policy!r}", fix, **evidence)
    return Finding.ok(f"maxmemory-policy is {policy}", **evidence)


@fixer("redis.eviction_policy")
def set_noeviction(ctx: Context, finding: Finding) -> list[Action]:
    before = finding.evidence.get("maxmemory-policy", "?")

    def apply() -> str:
        ctx.redis().config_set("maxmemory-policy", "noeviction")
        return "maxmemory-policy is noeviction"

    return [
        Action(
            "redis.eviction_policy",
            f"set maxmemory-policy {before} -> noeviction, live (redis.conf is not touched: "
            "put it there too)",
            f"{redis_cli(ctx)} config set maxmemory-policy noeviction",
            apply,
            touches=("redis.memory",),
        )
    ]


@check(
    "redis.latency",
    title="Redis answers quickly",
    guide="2 性能問題 / 任務執行緩慢",
)
def latency(ctx: Context) -> Finding:
    client = ctx.redis()
    samples = _ping_burst(client)
    p99 = round(probe.percentile(samples, 0.99), 3)
    now = int(ctx.now())
    try:
        slowlog = probe.parse_slowlog(client.execute_command("SLOWLOG", "GET", "10"))
        monitoring = probe.as_int(ctx.redis_config().get("latency-monitor-threshold"))
        events = (
            probe.parse_latency_latest(client.execute_command("LATENCY", "LATEST"))
            if monitoring
            else []
        )
        advice = str(client.execute_command("LATENCY", "DOCTOR")) if events else ""
    except redis.ResponseError as exc:
        raise Unavailable(f"Redis refused SLOWLOG/LATENCY: {exc}") from exc
    except (redis.RedisError, OSError) as exc:
        raise Unavailable(f"Redis stopped answering: {exc}") from exc
    recent_slow = [e for e in slowlog if now - e.started_at <= RECENT_SECONDS]
    recent_events = [e for e in events if now - e.latest_at <= RECENT_SECONDS]
    evidence: dict[str, object] = {
        "ping_p99_ms": p99,
        "ping_median_ms": round(probe.percentile(samples, 0.5), 3),
        "pings": len(samples),
        "slow_commands_last_hour": [
            {
                "command": e.command,
                "ms": round(e.duration_us / 1000, 1),
                "age_s": now - e.started_at,
            }
            for e in recent_slow
        ],
        "latency_monitor_threshold_ms": monitoring or "off",
    }
    if recent_events:
        evidence["latency_events"] = [
            {"event": e.event, "latest_ms": e.latest_ms, "max_ms": e.max_ms} for e in recent_events
        ]
        evidence["latency_doctor"] = advice.strip().splitlines()[:8]
    problems = []
    if p99 > PING_P99_WARN_MS:
        problems.append(f"PING p99 is {p99} ms (over {PING_P99_WARN_MS:g} ms)")
    if recent_slow:
        slowest = max(recent_slow, key=lambda e: e.duration_us)
        problems.append(
            f"{len(recent_slow)} slow command(s) in the last hour, the slowest "
            f"`{slowest.command}` at {slowest.duration_us / 1000:.1f} ms"
        )
    if recent_events:
        problems.append(f"{len(recent_events)} latency event(s) recorded in the last hour")
    if problems:
        return Finding.warn(
            "; ".join(problems),
            f"look at the commands named (`{redis_cli(ctx)} slowlog get 10`) and at the "
            "host's load; long Lua scripts and big KEYS/HGETALL calls block every client",
            **evidence,
        )
    return Finding.ok(f"PING p99 {p99} ms, no slow commands in the last hour", **evidence)


def _ping_burst(client: redis.Redis) -> list[float]:
    samples: list[float] = []
    deadline = time.perf_counter() + PING_BUDGET_S
    try:
        while len(samples) < PING_BURST and (not samples or time.perf_counter() < deadline):
            began = time.perf_counter()
            client.ping()
            samples.append((time.perf_counter() - began) * 1000)
    except (redis.RedisError, OSError) as exc:
        raise Unavailable(f"Redis stopped answering PING: {exc}") from exc
    return samples
