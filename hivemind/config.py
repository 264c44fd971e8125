"""One settings object for every HiveMind process.

Precedence, lowest first: the defaults below, then ``hivemind.toml`` (found through
``--config``, ``$HIVEMIND_CONFIG``, ``./hivemind.toml``, ``$HIVEMIND_HOME/hivemind.toml``),
then environment variables ``HIVEMIND_<NAME>``.

Setting names are the guide's (``GRPC_PORT``, ``TASK_TIMEOUT`` …). In ``hivemind.toml`` they may
be written in upper or lower case; an unknown name or a value of the wrong type is one
:class:`ConfigError` that names the file (or variable) and the key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from hivemind.errors import ConfigError

CONFIG_FILE_NAME = "hivemind.toml"
ENV_PREFIX = "HIVEMIND_"


def _default_home() -> Path:
    return Path(os.environ.get("HIVEMIND_HOME") or Path.home() / ".hivemind")


@dataclass(frozen=True)
class Settings:
    """Every tunable of the platform. Field names are the lower-case setting names."""

    #: Data root; its layout is in :mod:`hivemind.paths`.
    home: Path = field(default_factory=_default_home)
    #: Address the node pool's gRPC server binds. Keep 0.0.0.0 when workers run elsewhere.
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    #: Where clients and workers reach the node pool; empty means ``localhost:GRPC_PORT``.
    nodepool_address: str = ""
    master_host: str = "0.0.0.0"
    master_port: int = 5000
    #: Seconds a web console session lasts (never longer than its node pool token).
    master_session_ttl: float = 8 * 3600.0
    redis_url: str = "redis://localhost:6379/0"
    #: Seconds a task may run unless it says otherwise.
    task_timeout: float = 300.0
    #: Seconds between worker heartbeats.
    heartbeat_interval: float = 5.0
    #: Seconds a lease lives without renewal; 0 means three heartbeat intervals.
    lease_timeout: float = 0.0
    #: Tasks one worker runs at once; 0 means the number of cores.
    max_concurrent_tasks: int = 0
    #: Largest bundle, result or checkpoint, in bytes.
    max_task_data_size: int = 100 * 1024 * 1024
    #: How often a task is retried after its worker is lost, unless it says otherwise.
    default_retries: int = 2
    #: Memory limit for a bundle task's process group, in MiB, unless the task asks for more.
    task_memory_limit_mb: int = 4096
    #: How bundle tasks are isolated: "auto" uses bubblewrap, a task user and a cgroup where
    #: this host has them (and says what is missing); "off" runs them as the worker's user.
    task_sandbox: str = "auto"
    #: Seconds a finished task stays in Redis before only the SQLite archive has it.
    task_retention: float = 24 * 3600.0
    #: Seconds a user token stays valid.
    token_ttl: float = 12 * 3600.0
    #: Token signing secret; empty means the one generated into ``node_pool/secret.key``.
    secret_key: str = ""
    #: A worker's own token (``hivemind worker token NODE_ID`` prints one).
    worker_token: str = ""
    #: Seconds a stopping worker waits for running tasks before handing them back.
    shutdown_grace: float = 30.0
    log_level: str = "INFO"

    @property
    def client_address(self) -> str:
        return self.nodepool_address or f"localhost:{self.grpc_port}"

    @property
    def effective_lease_timeout(self) -> float:
        return self.lease_timeout or 3 * self.heartbeat_interval

    @property
    def effective_max_concurrent_tasks(self) -> int:
        return self.max_concurrent_tasks or (os.cpu_count() or 1)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The settings as plain values, with secrets and Redis passwords masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_SETTINGS and value:
                value = "***"
            elif f.name == "redis_url":
                value = redact_url(value)
            out[f.name.upper()] = str(value) if isinstance(value, Path) else value
        return out


SECRET_SETTINGS = frozenset({"secret_key", "worker_token"})
_FIELDS = {f.name: f for f in fields(Settings)}
_TYPES: dict[str, type] = {
    f.name: Path if f.name == "home" else type(f.default) for f in fields(Settings)
}


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _coerce(name: str, raw: Any, where: str) -> Any:
    kind = _TYPES[name]
    try:
        if kind is bool:
            if isinstance(raw, str):
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            return bool(raw)
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if kind is Path:
            return Path(str(raw)).expanduser()
        if not isinstance(raw, str):
            raise ValueError(raw)
        return raw
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name.upper()} must be {kind.__name__}, got {raw!r}") from None


def _validate(settings: Settings) -> Settings:
    checks = [
        (1 <= settings.grpc_port <= 65535, "GRPC_PORT must be a port number (1-65535)"),
        (1 <= settings.master_port <= 65535, "MASTER_PORT must be a port number (1-65535)"),
        (settings.master_session_ttl > 0, "MASTER_SESSION_TTL must be positive"),
        (settings.task_timeout > 0, "TASK_TIMEOUT must be positive"),
        (settings.heartbeat_interval > 0, "HEARTBEAT_INTERVAL must be positive"),
        (settings.lease_timeout >= 0, "LEASE_TIMEOUT must not be negative"),
        (settings.max_concurrent_tasks >= 0, "MAX_CONCURRENT_TASKS must not be negative"),
        (settings.max_task_data_size > 0, "MAX_TASK_DATA_SIZE must be positive"),
        (settings.default_retries >= 0, "DEFAULT_RETRIES must not be negative"),
        (settings.task_sandbox in ("auto", "off"), "TASK_SANDBOX must be auto or off"),
        (
            urlsplit(settings.redis_url).scheme in ("redis", "rediss", "unix"),
            f"REDIS_URL must be a redis:// URL, got {redact_url(settings.redis_url)!r}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return settings


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The first of --config, $HIVEMIND_CONFIG, ./hivemind.toml, $HIVEMIND_HOME/hivemind.toml."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    env = os.environ.get("HIVEMIND_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"HIVEMIND_CONFIG points to {path}, which does not exist")
        return path
    for candidate in (Path.cwd() / CONFIG_FILE_NAME, _default_home() / CONFIG_FILE_NAME):
        if candidate.is_file():
            return candidate
    return None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = key.lower()
        if name not in _FIELDS:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        if isinstance(raw, dict):
            raise ConfigError(f"{path}: {key} must be a value, not a table")
        values[name] = _coerce(name, raw, str(path))
    return values


def _read_env(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        var = ENV_PREFIX + name.upper()
        if var in environ and var != "HIVEMIND_CONFIG":
            values[name] = _coerce(name, environ[var], f"environment variable {var}")
    return values


def load_settings(
    config: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings from defaults, the config file, the environment and ``overrides``."""
    env = dict(os.environ if environ is None else environ)
    path = find_config_file(config)
    values: dict[str, Any] = _read_file(path) if path else {}
    values.update(_read_env(env))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _validate(Settings(**values))
