"""Redis's own answers, read into plain values: INFO, CONFIG GET, SLOWLOG and LATENCY replies.

Every function here is pure. INFO arrives either as text (``redis-cli info all``) or as the
dict redis-py already parsed (numbers as numbers); the readers below accept both.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def parse_info(text: str) -> dict[str, str]:
    """``key:value`` lines of an INFO reply; section headers and blank lines are skipped."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        info[key] = value
    return info


def parse_config_reply(items: Sequence[str]) -> dict[str, str]:
    """A CONFIG GET reply (name, value, name, value …; ``redis-cli`` prints one per line)."""
    pairs = list(items)
    return {str(pairs[i]): str(pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)}


def as_int(value: Any, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def as_float(value: Any, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def major_version(info: Mapping[str, Any]) -> int:
    return as_int(str(info.get("redis_version", "0")).split(".")[0])


# -- exposure: bind / protected-mode / requirepass ----------------------------------------------
@dataclass(frozen=True)
class Exposure:
    binds: tuple[str, ...]
    protected_mode: bool
    has_password: bool
    redis_major: int
    #: False with ``port 0``: a unix socket only, out of the network's reach.
    tcp: bool = True

    @property
    def wildcard(self) -> bool:
        """Listens on every interface (no bind at all, ``0.0.0.0``, ``*`` or ``::``)."""
        return self.tcp and (not self.binds or any(_is_wildcard(b) for b in self.binds))

    @property
    def beyond_loopback(self) -> bool:
        return self.wildcard or (self.tcp and any(not _is_loopback(b) for b in self.binds))

    @property
    def protected_mode_guards(self) -> bool:
        """Does protected-mode actually refuse remote clients here?

        It only acts while there is no password; before Redis 7 it also stood down as soon
        as any ``bind`` was given explicitly.
        """
        if not self.protected_mode or self.has_password:
            return False
        return self.redis_major >= 7 or not self.binds


def exposure(config: Mapping[str, Any], info: Mapping[str, Any]) -> Exposure:
    # A leading "-" marks an address Redis may skip if it is missing (Redis 7).
    binds = tuple(b.lstrip("-") for b in str(config.get("bind", "")).split() if b.lstrip("-"))
    return Exposure(
        binds=binds,
        protected_mode=str(config.get("protected-mode", "yes")).lower() == "yes",
        has_password=bool(config.get("requirepass")),
        redis_major=major_version(info),
        tcp=as_int(config.get("port"), 6379) != 0,
    )


# -- authentication: does a client need a password at all? -------------------------------------
def acl_default_user_needs_password(reply: Any) -> bool | None:
    """From an ``ACL GETUSER default`` reply: does the default user need a password?

    redis-py's parsed dict (``{"flags": [...], "passwords": [...]}``) or the raw flat list
    (``flags``, [...], ``passwords``, [...] …, as ``redis-cli`` prints it) both work. True
    when it has a password or is switched off (then nobody gets in without AUTH as someone
    else), False for ``nopass``; None when the reply says neither (or is not one).
    """
    fields: dict[str, Any] = {}
    if isinstance(reply, Mapping):
        fields = {_text(k): v for k, v in reply.items()}
    elif isinstance(reply, (list, tuple)):
        items = list(reply)
        fields = {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
    flags_raw = fields.get("flags")
    if not isinstance(flags_raw, (list, tuple, set)):
        return None
    flags = {_text(flag).lower() for flag in flags_raw}
    if "off" in flags:
        return True
    if "nopass" in flags:
        return False
    passwords = fields.get("passwords")
    if isinstance(passwords, (list, tuple, set)):
        return bool(passwords)
    return None


@dataclass(frozen=True)
class Auth:
    """Whether Redis asks clients for a password, and where it listens."""

    #: None when nothing tells: CONFIG and ACL refused, and our connection sent a password
    #: (a default user without one accepts any in ``AUTH default …``, so that proves nothing).
    has_password: bool | None
    #: What told: ``requirepass``, ``ACL`` (the default user), ``no AUTH`` (our connection
    #: works without sending one), or "".
    source: str
    #: None when CONFIG GET is refused (renamed away on a managed Redis).
    exposure: Exposure | None


def auth(
    config: Mapping[str, Any] | None,
    info: Mapping[str, Any],
    acl_default: Any = None,
    sent_password: bool = False,
) -> Auth:
    """Judge Redis's authentication from CONFIG GET (None when CONFIG is refused), INFO, an
    ``ACL GETUSER default`` reply (None when unknown) and whether the connection these
    replies came over sent a password."""
    seen = exposure(config, info) if config is not None else None
    if config is not None and config.get("requirepass"):
        return Auth(True, "requirepass", seen)
    from_acl = acl_default_user_needs_password(acl_default)
    if from_acl is not None:
        return Auth(from_acl, "ACL", seen)
    if config is not None:
        return Auth(False, "requirepass", seen)
    return Auth(None, "", seen) if sent_password else Auth(False, "no AUTH", seen)


def _is_wildcard(address: str) -> bool:
    return address in ("*", "0.0.0.0", "::", "::*")


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# -- persistence -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Persistence:
    save_rules: str
    aof_enabled: bool
    rdb_last_bgsave_ok: bool
    aof_last_write_ok: bool
    aof_last_rewrite_ok: bool
    rdb_last_save_time: int
    changes_since_last_save: int

    @property
    def any(self) -> bool:
        return bool(self.save_rules.strip()) or self.aof_enabled

    def failures(self) -> list[str]:
        failed = []
        if not self.rdb_last_bgsave_ok:
            failed.append("the last RDB background save failed (rdb_last_bgsave_status:err)")
        if self.aof_enabled and not self.aof_last_write_ok:
            failed.append("the last AOF write failed (aof_last_write_status:err)")
        if self.aof_enabled and not self.aof_last_rewrite_ok:
            failed.append("the last AOF rewrite failed (aof_last_bgrewrite_status:err)")
        return failed


def persistence(config: Mapping[str, Any], info: Mapping[str, Any]) -> Persistence:
    appendonly = str(config.get("appendonly", "")).lower()
    aof_enabled = appendonly == "yes" if appendonly else as_int(info.get("aof_enabled")) == 1
    return Persistence(
        save_rules=str(config.get("save", "")),
        aof_enabled=aof_enabled,
        rdb_last_bgsave_ok=str(info.get("rdb_last_bgsave_status", "ok")) == "ok",
        aof_last_write_ok=str(info.get("aof_last_write_status", "ok")) == "ok",
        aof_last_rewrite_ok=str(info.get("aof_last_bgrewrite_status", "ok")) == "ok",
        rdb_last_save_time=as_int(info.get("rdb_last_save_time")),
        changes_since_last_save=as_int(info.get("rdb_changes_since_last_save")),
    )


# -- memory ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Memory:
    used: int
    maxmemory: int
    system_total: int
    fragmentation_ratio: float
    policy: str

    @property
    def fraction_of_max(self) -> float | None:
        return self.used / self.maxmemory if self.maxmemory else None


def memory(config: Mapping[str, Any], info: Mapping[str, Any]) -> Memory:
    maxmemory = as_int(config.get("maxmemory", info.get("maxmemory")))
    return Memory(
        used=as_int(info.get("used_memory")),
        maxmemory=maxmemory,
        system_total=as_int(info.get("total_system_memory")),
        fragmentation_ratio=as_float(info.get("mem_fragmentation_ratio")),
        policy=str(config.get("maxmemory-policy", info.get("maxmemory_policy", ""))),
    )


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


# -- eviction --------------------------------------------------------------------------------
def evicts_any_key(policy: str) -> bool:
    """``allkeys-*`` evicts keys without a TTL: queued tasks, worker state, leases."""
    return policy.startswith("allkeys-")


def keeps_persistent_keys(policy: str) -> bool:
    return policy == "noeviction" or policy.startswith("volatile-")


# -- latency ---------------------------------------------------------------------------------
def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class SlowEntry:
    id: int
    started_at: int
    duration_us: int
    command: str


def parse_slowlog(reply: Sequence[Any]) -> list[SlowEntry]:
    """A raw ``SLOWLOG GET`` reply: [id, unix time, µs, [argv…], client, name] per entry.

    Only the command name and its first argument (usually the key) are kept: later
    arguments may be user data or credentials.
    """
    entries = []
    for raw in reply:
        if not isinstance(raw, list | tuple) or len(raw) < 4:
            continue
        argv = [_text(arg) for arg in raw[3]] if isinstance(raw[3], list | tuple) else []
        command = " ".join(argv[:2])[:80] if argv else "?"
        entries.append(SlowEntry(as_int(raw[0]), as_int(raw[1]), as_int(raw[2]), command))
    return entries


@dataclass(frozen=True)
class LatencyEvent:
    event: str
    latest_at: int
    latest_ms: int
    max_ms: int


def parse_latency_latest(reply: Sequence[Any]) -> list[LatencyEvent]:
    """A raw ``LATENCY LATEST`` reply: [event, unix time, latest ms, all-time max ms] each."""
    events = []
    for raw in reply:
        if isinstance(raw, list | tuple) and len(raw) >= 4:
            events.append(
                LatencyEvent(_text(raw[0]), as_int(raw[1]), as_int(raw[2]), as_int(raw[3]))
            )
    return events


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
