"""The runner for this host: subprocess and plain file I/O."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from hivemind.errors import CommandTimeout, RemoteError
from hivemind.remote.runner import (
    Command,
    CommandResult,
    Runner,
    check_tool_name,
    command_text,
    compose_argv,
)

LOCAL_HOST = "local"


class LocalRunner(Runner):
    def __init__(self) -> None:
        self.host = LOCAL_HOST

    def run(
        self,
        argv: Command,
        *,
        timeout: float,
        input: bytes | None = None,
        sudo: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        # Root needs no sudo, and a container often has none.
        words = compose_argv(argv, env=env, sudo=sudo and os.geteuid() != 0)
        started = time.monotonic()
        try:
            # Its own session, so a timeout stops the whole process group, not just the head.
            proc = subprocess.Popen(
                words,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            # What a shell says, so a missing tool looks the same here and over SSH.
            message = f"{words[0]}: command not found\n".encode()
            return CommandResult(127, b"", message, time.monotonic() - started)
        except OSError as exc:
            raise RemoteError(self.host, f"cannot run {words[0]}: {exc.strerror}") from None
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            stdout, stderr = proc.communicate()
            raise CommandTimeout(self.host, command_text(argv), timeout, stdout, stderr) from None
        return CommandResult(proc.returncode, stdout, stderr, time.monotonic() - started)

    def read_file(self, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise RemoteError(self.host, f"cannot read {path}: {exc.strerror}") from None

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        target = Path(path)
        try:
            fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(temp, mode)
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise RemoteError(self.host, f"cannot write {path}: {exc.strerror}") from None

    def get(self, remote: str, local: Path) -> None:
        self._copy(Path(remote), Path(local))

    def put(self, local: Path, remote: str) -> None:
        self._copy(Path(local), Path(remote))

    def _copy(self, source: Path, dest: Path) -> None:
        try:
            shutil.copyfile(source, dest)
        except OSError as exc:
            raise RemoteError(
                self.host, f"cannot copy {source} to {dest}: {exc.strerror}"
            ) from None

    def which(self, tool: str) -> str | None:
        return shutil.which(check_tool_name(tool))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
