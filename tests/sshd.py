"""A real OpenSSH sshd on 127.0.0.1 for the tests, run as the current user.

It has its own host key, a client key in its own authorized_keys, and a known_hosts file
holding its host key, all in a temp dir; it runs in the foreground (``-D -e``) and is
stopped at the end. When it cannot start, :func:`start_sshd` raises with sshd's own words:
a test that claims SSH works must never be skipped quietly.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
INSTALL_HINT = "install it: apt-get update && apt-get install -y openssh-server"


class SSHDUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class SSHD:
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_public_key: str
    pid: int

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _sshd_binary() -> str:
    for candidate in (shutil.which("sshd"), *SSHD_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SSHDUnavailable(f"no sshd binary found; {INSTALL_HINT}")


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _answers_ssh(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _set_env_line(env: Mapping[str, str]) -> str:
    for name, value in env.items():
        if not name.isidentifier() or any(c.isspace() or c == '"' for c in value):
            raise ValueError(f"SetEnv cannot carry {name}={value!r}")
    return "SetEnv " + " ".join(f"{name}={value}" for name, value in env.items())


@contextmanager
def running_sshd(
    root: Path,
    wait: float = 10.0,
    *,
    env: Mapping[str, str] | None = None,
    extra_config: Sequence[str] = (),
) -> Iterator[SSHD]:
    """An sshd in ``root``; ``env`` is set in every session it starts (``SetEnv``, which
    overrides even HOME: each sshd can be a "host" with a home of its own, though they all
    run as this user), ``extra_config`` lines are added to its sshd_config."""
    if shutil.which("ssh-keygen") is None:
        raise SSHDUnavailable(f"no ssh-keygen found; {INSTALL_HINT}")
    binary = _sshd_binary()
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # The privilege separation dir; Debian creates it only when its service starts.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_pub = _keygen(root / "host_key", "hivemind-test-host")
    client_pub = _keygen(root / "client_key", "hivemind-test-client")
    (root / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    key_type, key_data = host_pub.split()[:2]
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key_data}\n")
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {root / 'host_key'}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                "UsePAM no",
                "StrictModes no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                *([_set_env_line(env)] if env else []),
                *extra_config,
                "",
            ]
        )
    )
    log = (root / "sshd.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-D", "-e", "-f", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + wait
        while not _answers_ssh(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = (root / "sshd.log").read_text(errors="replace").strip()
                raise SSHDUnavailable(
                    f"sshd did not start on 127.0.0.1:{port} "
                    f"(exit {proc.poll()}): {output[-2000:] or 'no output'}"
                )
            time.sleep(0.05)
        yield SSHD(
            host="127.0.0.1",
            port=port,
            user=getpass.getuser(),
            client_key=root / "client_key",
            known_hosts=root / "known_hosts",
            host_public_key=host_pub,
            pid=proc.pid,
        )
    finally:
        if proc.poll() is None:
            # Its own session: the per-connection children go with it.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
