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
from urllib.parse import parse_qs, quote, unquote, urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from hivemind.addresses import parse_addresses, parse_sentinel_url
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
    #: This node pool's name among several on one host (its log is
    #: ``nodepool-<NAME>.log``); empty for the only one.
    nodepool_name: str = ""
    master_host: str = "0.0.0.0"
    master_port: int = 5000
    #: Seconds a web console session lasts (never longer than its node pool token).
    master_session_ttl: float = 8 * 3600.0
    #: One Redis (``redis://``, ``rediss://``, ``unix://``) or, through Sentinel,
    #: ``redis+sentinel://[:PASSWORD@]HOST:26379,HOST:26379/MASTER_NAME[/DB]``.
    redis_url: str = "redis://localhost:6379/0"
    #: Sentinels (``host:26379,host:26379``) to ask for the primary instead of REDIS_URL's
    #: host; REDIS_URL still gives the db and password.
    redis_sentinels: str = ""
    #: The master the Sentinels watch (with REDIS_SENTINELS).
    redis_master_name: str = "hivemind"
    #: The data nodes `hivemind up --ha` starts (the first is the primary at first).
    ha_redis_ports: str = "127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6381"
    #: Through Sentinel, how long (ms) a submit or a completion waits for one replica to
    #: hold it before it is acknowledged; 0 does not wait.
    redis_wait_ms: int = 1000
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
    #: Seconds a newly issued worker token stays valid.
    worker_token_ttl: float = 90 * 24 * 3600.0
    #: Redis's password when REDIS_URL carries none; empty means the one ``hivemind up``
    #: generated into ``redis/redis.password`` (0600), when that file exists.
    redis_password: str = ""
    #: TLS on the node pool's gRPC port: "auto" serves it unless GRPC_HOST is loopback, "on"
    #: always, "off" never (see hivemind.tls). Clients follow the same setting.
    tls: str = "auto"
    #: The CA certificate a client or worker trusts; empty means this home's
    #: ``node_pool/tls/ca.crt`` (the node pool's own, on its host).
    tls_ca_file: str = ""
    #: More names (DNS or IP, comma-separated) for the server certificate, besides this
    #: host's names and loopback: the address workers dial when it is not the hostname.
    tls_hosts: str = ""
    #: The name a client checks in the server's certificate, when it dials another.
    tls_server_name: str = ""
    #: Mutual TLS: the node pool accepts only connections that present a certificate its CA
    #: issued, and a worker's certificate must name the worker its token is for.
    require_client_cert: bool = False
    #: The certificate and key this host's clients and worker present (mutual TLS); empty
    #: means the worker's own (``worker/config/<node id>.crt``), else the node pool host's
    #: ``node_pool/tls/client.crt``.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: With mutual TLS, the port where hosts without a certificate yet may only enrol
    #: (``hivemind join``); 0 means GRPC_PORT + 1.
    enroll_port: int = 0
    #: Prometheus metrics ports: ``hivemind doctor serve``, the node pool, and the first
    #: worker on a host (each further worker takes the next free port up; 0 turns the
    #: node pool's or workers' metrics off).
    doctor_metrics_port: int = 9480
    nodepool_metrics_port: int = 9481
    worker_metrics_port: int = 9482
    #: Seconds a stopping worker waits for running tasks before handing them back.
    shutdown_grace: float = 30.0
    log_level: str = "INFO"

    @property
    def effective_enroll_port(self) -> int:
        return self.enroll_port or self.grpc_port + 1

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


SECRET_SETTINGS = frozenset({"secret_key", "worker_token", "redis_password"})
_FIELDS = {f.name: f for f in fields(Settings)}
_TYPES: dict[str, type] = {
    f.name: Path if f.name == "home" else type(f.default) for f in fields(Settings)
}


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    if "password=" in parts.query:  # unix:///path?password=… carries it in the query
        base, _, query = url.partition("?")
        query, hash_, fragment = query.partition("#")
        items = query.split("&")
        query = "&".join("password=***" if i.startswith("password=") else i for i in items)
        return f"{base}?{query}{hash_}{fragment}"
    return url


# -- the password every HiveMind client of Redis sends -------------------------------------------
#: Hosts of the REDIS_URLs for which `hivemind up` starts a Redis of its own.
LOCAL_REDIS_HOSTS = frozenset({"localhost", "127.0.0.1"})


def url_password(url: str) -> str | None:
    """The password ``url`` carries (``redis://:PW@…``, or ``?password=PW`` for a unix
    socket), None when it carries none (an empty one counts as none)."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return unquote(parts.password)
    except ValueError:
        return None
    return next((value for value in parse_qs(parts.query).get("password", []) if value), None)


def redis_url_with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user, unless it carries a password already."""
    if not password or url_password(url) is not None:
        return url
    parts = urlsplit(url)
    if parts.scheme == "unix":  # by hand: geturl() would turn unix:///path into unix:/path
        base, hash_, fragment = url.partition("#")
        joiner = "&" if "?" in base else "?"
        return f"{base}{joiner}password={quote(password, safe='')}{hash_}{fragment}"
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hostport}").geturl()


def is_local_redis_url(url: str) -> bool:
    """A ``redis://`` URL on this machine: the kind `hivemind up` starts a Redis for."""
    try:
        parts = urlsplit(url)
        return parts.scheme == "redis" and (parts.hostname or "localhost") in LOCAL_REDIS_HOSTS
    except ValueError:
        return False


def _sends_local_password(url: str) -> bool:
    """A Redis (or, for ``redis+sentinel://``, every Sentinel) on this machine: it may be
    sent the password `hivemind up` generated here."""
    if not url.startswith("redis+sentinel://"):
        return is_local_redis_url(url)
    hosts = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    names = [item.rpartition(":")[0] if ":" in item else item for item in hosts.split(",")]
    return bool(names) and all(name in LOCAL_REDIS_HOSTS for name in names)


def redis_password_file(settings: Settings) -> Path:
    """Where `hivemind up` keeps the password of the Redis it starts (mode 0600)."""
    from hivemind.paths import layout  # paths is a leaf module; imported late all the same

    return layout(settings.home).redis_password_file


def read_redis_password_file(path: Path) -> str | None:
    """The password in ``path``; None when the file is missing, unreadable or empty."""
    try:
        password = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return password or None


def redis_password_source(settings: Settings) -> str:
    """Where the password :func:`effective_redis_url` sends comes from: ``REDIS_URL``,
    ``REDIS_PASSWORD``, the password file's path, or "" when it sends none."""
    if url_password(settings.redis_url) is not None:
        return "REDIS_URL"
    if settings.redis_password:
        return "REDIS_PASSWORD"
    if _sends_local_password(settings.redis_url):
        path = redis_password_file(settings)
        if read_redis_password_file(path) is not None:
            return str(path)
    return ""


def effective_redis_url(settings: Settings) -> str:
    """The URL every HiveMind process connects to Redis with.

    REDIS_URL as it is when it carries a password; else with REDIS_PASSWORD; else, for a
    Redis on this machine (``redis://localhost`` or ``127.0.0.1``), with the password
    `hivemind up` generated into ``$HIVEMIND_HOME/redis/redis.password`` when that file
    exists. A Redis elsewhere is never sent the local file's password. Secret: log only
    :func:`redact_url` of it.
    """
    url = settings.redis_url
    if url_password(url) is not None:
        return url
    if settings.redis_password:
        return redis_url_with_password(url, settings.redis_password)
    if not _sends_local_password(url):
        return url
    password = read_redis_password_file(redis_password_file(settings))
    return redis_url_with_password(url, password) if password else url


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
        (settings.tls in ("auto", "on", "off"), "TLS must be auto, on or off"),
        (0 <= settings.enroll_port <= 65535, "ENROLL_PORT must be a port number (1-65535)"),
        (
            1 <= settings.doctor_metrics_port <= 65535,
            "DOCTOR_METRICS_PORT must be a port number (1-65535)",
        ),
        (
            0 <= settings.nodepool_metrics_port <= 65535,
            "NODEPOOL_METRICS_PORT must be a port number (1-65535), or 0 for none",
        ),
        (
            0 <= settings.worker_metrics_port <= 65535,
            "WORKER_METRICS_PORT must be a port number (1-65535), or 0 for none",
        ),
        (
            not (settings.require_client_cert and settings.tls == "off"),
            'REQUIRE_CLIENT_CERT needs TLS: remove TLS = "off"',
        ),
        (
            urlsplit(settings.redis_url).scheme in ("redis", "rediss", "unix", "redis+sentinel"),
            "REDIS_URL must be a redis:// or redis+sentinel:// URL, got "
            f"{redact_url(settings.redis_url)!r}",
        ),
        (settings.redis_wait_ms >= 0, "REDIS_WAIT_MS must not be negative"),
        (
            bool(settings.redis_master_name) or not settings.redis_sentinels,
            "REDIS_SENTINELS needs REDIS_MASTER_NAME",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        if settings.redis_url.startswith("redis+sentinel://"):
            parse_sentinel_url(settings.redis_url)
        if settings.redis_sentinels:
            parse_addresses(settings.redis_sentinels, 26379, "REDIS_SENTINELS")
        if "," in settings.nodepool_address:
            parse_addresses(settings.nodepool_address, settings.grpc_port, "NODEPOOL_ADDRESS")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
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
