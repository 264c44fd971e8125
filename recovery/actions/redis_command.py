"""The `redis` action: one Redis command from a safe allowlist.

A playbook may read Redis and tune the settings the guide names, and nothing that loses data
or hands the server over: FLUSHALL, FLUSHDB, CONFIG REWRITE, DEBUG, SHUTDOWN, and CONFIG SET
of ``dir`` or ``dbfilename`` (the classic way to make Redis write a file anywhere) are refused
when the playbook is loaded, before anything runs.
"""

from __future__ import annotations

from typing import Any

import redis

from hivemind import redis_client
from recovery.actions import Outcome, Param, StepContext, action
from recovery.model import ActionFailed

#: Commands that only read.
READ_ONLY = {"PING", "INFO", "DBSIZE", "CONFIG GET", "LLEN", "HLEN", "SCARD", "ZCARD", "TYPE"}
#: Commands that change something, all of them safe to repeat.
CHANGING = {"CONFIG SET", "BGREWRITEAOF", "BGSAVE"}
#: Settings CONFIG SET may change: those the guide tunes.
CONFIG_SETTABLE = {
    "maxmemory-policy",
    "maxmemory",
    "appendonly",
    "appendfsync",
    "requirepass",
    "bind",
    "protected-mode",
    "timeout",
    "tcp-keepalive",
    "save",
}
#: Named in the refusal so the reason is plain.
DANGEROUS = {
    "FLUSHALL": "deletes every key of every database",
    "FLUSHDB": "deletes every key of the database",
    "CONFIG REWRITE": "rewrites Redis's own config file",
    "CONFIG RESETSTAT": "throws away the statistics the doctor reads",
    "DEBUG": "can crash or stall the server",
    "SHUTDOWN": "stops the server (use the service action)",
    "DEL": "deletes keys (task state changes go through the task store)",
    "UNLINK": "deletes keys (task state changes go through the task store)",
    "EVAL": "runs arbitrary scripts",
    "SCRIPT": "loads or flushes scripts",
    "MODULE": "loads code into the server",
    "REPLICAOF": "hands the data set to another server",
    "SLAVEOF": "hands the data set to another server",
    "MIGRATE": "moves keys to another server",
    "ACL": "changes who may do what",
    "KEYS": "blocks the server on a large data set",
}
#: Values never echoed into the audit log.
SECRET_SETTINGS = {"requirepass"}


def command_words(params: dict[str, Any]) -> list[str]:
    return [str(word) for word in params["command"]]


def command_name(words: list[str]) -> str:
    head = words[0].upper() if words else ""
    if head in ("CONFIG", "CLIENT", "SCRIPT", "MODULE", "ACL") and len(words) > 1:
        return f"{head} {words[1].upper()}"
    return head


def check_allowed(params: dict[str, Any]) -> None:
    """ValueError naming why the command is refused; None when it is allowed."""
    words = command_words(params)
    if not words:
        raise ValueError("the Redis command is empty")
    name = command_name(words)
    head = words[0].upper()
    for refused in (name, head):
        if refused in DANGEROUS:
            raise ValueError(f"Redis command {refused} is refused: it {DANGEROUS[refused]}")
    if name not in READ_ONLY | CHANGING:
        allowed = ", ".join(sorted(READ_ONLY | CHANGING))
        raise ValueError(f"Redis command {name} is not in the allowlist ({allowed})")
    if name == "CONFIG SET":
        if len(words) != 4:
            raise ValueError("CONFIG SET takes one setting and one value")
        setting = words[2].lower()
        if setting not in CONFIG_SETTABLE:
            raise ValueError(
                f"CONFIG SET {setting} is refused (settable: {', '.join(sorted(CONFIG_SETTABLE))})"
            )


def _shown(setting: str, value: str) -> str:
    return "(set)" if setting in SECRET_SETTINGS and value else value


@action(
    "redis",
    "Run one Redis command from the safe allowlist (never FLUSHALL, CONFIG REWRITE …)",
    {"command": Param(list, required=True, doc="the command as a list of words")},
    validate=check_allowed,
)
def redis_command(ctx: StepContext, params: dict[str, Any]) -> Outcome:
    check_allowed(params)  # again at run time: a variable may have filled a word in
    words = command_words(params)
    name = command_name(words)
    client = redis_client.connect(ctx.settings, socket_timeout=ctx.timeout, decode_responses=True)
    try:
        if name == "CONFIG SET":
            return _config_set(ctx, client, words[2].lower(), words[3])
        if name in READ_ONLY:
            reply = client.execute_command(*words)
            return Outcome(False, f"{name}: {_brief(reply)}", after={"reply": _brief(reply)})
        if ctx.dry_run:
            return Outcome(True, f"would run {name}")
        reply = client.execute_command(*words)
        return Outcome(True, f"{name}: {_brief(reply)}", after={"reply": _brief(reply)})
    except redis.RedisError as exc:
        raise ActionFailed(f"Redis {name}: {exc}") from None
    finally:
        client.close()


def _config_set(ctx: StepContext, client: redis.Redis, setting: str, value: str) -> Outcome:
    current = client.config_get(setting).get(setting, "")
    before = {setting: _shown(setting, current)}
    if current == value:
        return Outcome(False, f"{setting} is already {_shown(setting, value)}", before, before)
    if ctx.dry_run:
        return Outcome(
            True, f"would set {setting}: {before[setting]} -> {_shown(setting, value)}", before
        )
    client.config_set(setting, value)
    after = {setting: _shown(setting, value)}
    return Outcome(True, f"{setting}: {before[setting]} -> {after[setting]}", before, after)


def _brief(reply: Any) -> str:
    text = str(reply)
    return text if len(text) <= 200 else text[:200] + "…"
