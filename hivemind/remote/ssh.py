"""The runner for a host reached over SSH (paramiko): commands on a session channel, files
over SFTP.

Host keys are checked against known_hosts, and an unknown key is refused unless the caller
passes ``insecure_host_key=True`` on purpose; a key that differs from the known one is
always refused. Every way of failing to connect (no route, refused port, not SSH, unknown or
changed host key, refused key) becomes one :class:`RemoteError` naming the host and the
reason, within the connect timeout.
"""

from __future__ import annotations

import getpass
import posixpath
import select
import shlex
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import paramiko

from hivemind.errors import CommandTimeout, RemoteError, UsageError
from hivemind.remote.runner import (
    DEFAULT_CONNECT_TIMEOUT,
    Command,
    CommandResult,
    Runner,
    check_tool_name,
    command_text,
    compose_argv,
)

DEFAULT_SSH_PORT = 22
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
_READ_SIZE = 65536
#: The host's own `timeout` stops a command this long after the runner stopped waiting.
_REMOTE_KILL_MARGIN = 0.5


@dataclass(frozen=True)
class SSHTarget:
    user: str
    host: str
    port: int = DEFAULT_SSH_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


def parse_target(text: str, default_user: str | None = None) -> SSHTarget:
    """``[user@]host[:port]`` (an IPv6 address in brackets: ``user@[::1]:2222``)."""
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw):
        raise UsageError(f"not a host: {text!r} (expected user@host[:port])")
    user, _, hostport = raw.rpartition("@")
    user = user or default_user or getpass.getuser()
    port_text = ""
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"not a host: {text!r} (an IPv6 address is written [addr]:port)")
        port_text = rest[1:]
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:
        host = hostport
    if not host:
        raise UsageError(f"not a host: {text!r} (the host name is missing)")
    port = DEFAULT_SSH_PORT
    if port_text or hostport.endswith(":"):
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise UsageError(f"not a host: {text!r} (the port must be 1-65535)")
        port = int(port_text)
    return SSHTarget(user=user, host=host, port=port)


class _AcceptOnPurpose(paramiko.MissingHostKeyPolicy):
    """``insecure_host_key``: accept an unknown key for this connection, remember nothing."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)


class SSHRunner(Runner):
    def __init__(
        self,
        target: SSHTarget | str,
        *,
        key_file: Path | str | None = None,
        known_hosts: Path | str | None = None,
        insecure_host_key: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        """Connect now; raises :class:`RemoteError` naming the reason if that fails.

        Keys come from ``key_file`` when given, else from the SSH agent and ``~/.ssh``.
        ``known_hosts`` defaults to ``~/.ssh/known_hosts``.
        """
        self.target = parse_target(target) if isinstance(target, str) else target
        self.host = str(self.target)
        self.connect_timeout = connect_timeout
        self.known_hosts = Path(known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        self._key_file = Path(key_file).expanduser() if key_file else None
        self._sftp: paramiko.SFTPClient | None = None
        self._host_facts: tuple[bool, bool] | None = None
        # Checks run concurrently on one runner: lazy set-up is guarded, and SFTP (one
        # channel, not safe to share between threads) is used by one thread at a time.
        self._lock = threading.Lock()
        self._sftp_lock = threading.Lock()
        self._client = paramiko.SSHClient()
        if self.known_hosts.is_file():
            try:
                self._client.load_host_keys(str(self.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise RemoteError(self.host, f"cannot read {self.known_hosts}: {exc}") from None
        self._client.set_missing_host_key_policy(
            _AcceptOnPurpose() if insecure_host_key else paramiko.RejectPolicy()
        )
        self._connect()

    def _connect(self) -> None:
        t = self.target
        if self._key_file is not None and not self._key_file.is_file():
            raise RemoteError(self.host, f"key file {self._key_file} does not exist")
        deadline = time.monotonic() + self.connect_timeout
        try:
            self._client.connect(
                t.host,
                port=t.port,
                username=t.user,
                key_filename=str(self._key_file) if self._key_file else None,
                allow_agent=self._key_file is None,
                look_for_keys=self._key_file is None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as exc:
            raise RemoteError(
                self.host,
                f"host key mismatch: the server offered {exc.key.get_name()} "
                f"{exc.key.fingerprint}, but {self.known_hosts} expects "
                f"{exc.expected_key.fingerprint}; the host was reinstalled or someone is in "
                "between (verify, then fix known_hosts with ssh-keygen -R)",
            ) from None
        except paramiko.AuthenticationException:
            tried = str(self._key_file) if self._key_file else "the SSH agent and ~/.ssh keys"
            raise RemoteError(
                self.host, f"key authentication refused for user {t.user} (tried {tried})"
            ) from None
        except paramiko.SSHException as exc:
            raise RemoteError(self.host, self._explain(str(exc), deadline)) from None
        except TimeoutError:
            raise RemoteError(
                self.host, f"no answer within {self.connect_timeout:g} s (host down or filtered)"
            ) from None
        except paramiko.ssh_exception.NoValidConnectionsError:
            raise RemoteError(
                self.host, f"connection refused on port {t.port} (no sshd there; wrong port?)"
            ) from None
        except socket.gaierror as exc:
            raise RemoteError(self.host, f"cannot resolve {t.host}: {exc.strerror}") from None
        except OSError as exc:
            raise RemoteError(self.host, f"cannot connect: {exc.strerror or exc}") from None

    def _explain(self, message: str, deadline: float) -> str:
        t = self.target
        if "not found in known_hosts" in message:
            return (
                f"unknown host key: {t.host} port {t.port} is not in {self.known_hosts}; "
                f"check its fingerprint and add it (ssh-keyscan -p {t.port} {t.host} >> "
                f"{self.known_hosts}), or pass --insecure-host-key to accept it on purpose"
            )
        # A server that never finishes the handshake surfaces as a banner error or, when the
        # transport died before authentication, as "No existing session".
        if "banner" in message.lower() or "no existing session" in message.lower():
            if time.monotonic() >= deadline - 0.1:
                return f"no SSH banner within {self.connect_timeout:g} s on port {t.port}"
            return f"port {t.port} does not speak SSH ({message})"
        return f"SSH failed: {message}"

    # -- commands ----------------------------------------------------------------------------
    def _probe_host(self) -> tuple[bool, bool]:
        """(runs as root, has timeout(1)), asked once per connection in one round trip."""
        with self._lock:
            if self._host_facts is None:
                probe = self._exec(
                    ["sh", "-c", "id -u; command -v timeout >/dev/null && echo timeout"],
                    timeout=self.connect_timeout,
                    input=None,
                )
                lines = probe.text.split()
                self._host_facts = (lines[:1] == ["0"], "timeout" in lines)
            return self._host_facts

    def _remote_is_root(self) -> bool:
        return self._probe_host()[0]

    def _remote_has_timeout(self) -> bool:
        return self._probe_host()[1]

    def run(
        self,
        argv: Command,
        *,
        timeout: float,
        input: bytes | None = None,
        sudo: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        words = compose_argv(argv, env=env, sudo=sudo and not self._remote_is_root())
        if self._remote_has_timeout():
            # Closing an SSH channel does not stop a command without a terminal, so the host
            # stops it itself (its whole process group) just after we stop waiting.
            limit = f"{timeout + _REMOTE_KILL_MARGIN:.3f}"
            words = ["timeout", "-k", "1", limit, *words]
        try:
            return self._exec(words, timeout=timeout, input=input, shown=command_text(argv))
        except (paramiko.SSHException, OSError) as exc:
            raise RemoteError(self.host, f"the connection failed: {exc}") from None

    def _exec(
        self, words: list[str], *, timeout: float, input: bytes | None, shown: str = ""
    ) -> CommandResult:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(self.host, "the connection is closed")
        started = time.monotonic()
        deadline = started + timeout
        channel = transport.open_session(timeout=min(timeout, self.connect_timeout))
        out, err = bytearray(), bytearray()
        try:
            channel.settimeout(max(0.01, timeout))
            channel.exec_command(shlex.join(words))
            if input:
                channel.sendall(input)
            channel.shutdown_write()
            while True:
                while channel.recv_ready():
                    out += channel.recv(_READ_SIZE)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(_READ_SIZE)
                drained = not channel.recv_ready() and not channel.recv_stderr_ready()
                if channel.exit_status_ready() and channel.eof_received and drained:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(
                        self.host, shown or shlex.join(words), timeout, bytes(out), bytes(err)
                    )
                select.select([channel], [], [], min(remaining, 0.05))
            code = channel.recv_exit_status()
        except TimeoutError:
            raise CommandTimeout(
                self.host, shown or shlex.join(words), timeout, bytes(out), bytes(err)
            ) from None
        finally:
            # Closing the channel hangs up on the command (SIGHUP via sshd) after a timeout.
            channel.close()
        return CommandResult(code, bytes(out), bytes(err), time.monotonic() - started)

    # -- files -------------------------------------------------------------------------------
    def _sftp_client(self) -> paramiko.SFTPClient:
        """The connection's SFTP client; call it holding ``_sftp_lock``."""
        if self._sftp is None:
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, OSError) as exc:
                raise RemoteError(self.host, f"SFTP is not available: {exc}") from None
            self._sftp.get_channel().settimeout(self.connect_timeout * 3)  # type: ignore[union-attr]
        return self._sftp

    def read_file(self, path: str) -> bytes:
        try:
            with self._sftp_lock, self._sftp_client().open(path, "rb") as fh:
                return bytes(fh.read())
        except OSError as exc:
            raise RemoteError(self.host, f"cannot read {path}: {_sftp_reason(exc)}") from None

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        temp = posixpath.join(posixpath.dirname(path) or ".", f".{posixpath.basename(path)}.tmp")
        try:
            with self._sftp_lock:
                sftp = self._sftp_client()
                with sftp.open(temp, "wb") as fh:
                    fh.write(data)
                sftp.chmod(temp, mode)
                sftp.posix_rename(temp, path)
        except OSError as exc:
            raise RemoteError(self.host, f"cannot write {path}: {_sftp_reason(exc)}") from None

    def get(self, remote: str, local: Path) -> None:
        try:
            with self._sftp_lock:
                self._sftp_client().get(remote, str(local))
        except OSError as exc:
            raise RemoteError(self.host, f"cannot fetch {remote}: {_sftp_reason(exc)}") from None

    def put(self, local: Path, remote: str) -> None:
        try:
            with self._sftp_lock:
                self._sftp_client().put(str(local), remote)
        except OSError as exc:
            raise RemoteError(self.host, f"cannot send {remote}: {_sftp_reason(exc)}") from None

    def which(self, tool: str) -> str | None:
        result = self.run(f"command -v {check_tool_name(tool)}", timeout=self.connect_timeout)
        path = result.text.strip()
        return path if result.ok and path.startswith("/") else None

    def close(self) -> None:
        with self._sftp_lock:
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
        self._client.close()


def _sftp_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
