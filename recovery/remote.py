"""`hivemind backup --host`: take the backup on a remote host and fetch it over SFTP.

The remote host runs its own ``hivemind backup --json`` (so the backup is consistent there,
with its own Redis and files), then the archive is fetched and its SHA-256 compared with the
one the remote computed.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path

from hivemind.errors import RemoteError, UsageError
from hivemind.remote import Runner
from recovery.archive import Manifest, sha256_file
from recovery.backup import BackupResult, apply_retention

#: A backup of a big home over a slow disk takes a while; the remote is given this long.
REMOTE_BACKUP_TIMEOUT = 3600.0


@dataclass(frozen=True)
class RemoteBackupResult:
    host: str
    remote_archive: str
    local: BackupResult


def backup_over_ssh(
    runner: Runner,
    local_dir: Path,
    *,
    remote_command: str = "hivemind",
    keep: int | None = None,
    timeout: float = REMOTE_BACKUP_TIMEOUT,
) -> RemoteBackupResult:
    """Run ``REMOTE_COMMAND backup --json`` on ``runner``'s host, fetch the archive into
    ``local_dir`` and keep the newest ``keep`` archives there (and on the remote)."""
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1 (the new backup is always kept), got {keep}")
    argv = f"{remote_command} backup --json" + (f" --keep {int(keep)}" if keep else "")
    result = runner.run(argv, timeout=timeout)
    if not result.ok:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise RemoteError(
            runner.host,
            f"`{argv}` exited {result.exit_code}: {detail[-1] if detail else 'no output'}",
        )
    try:
        reply = json.loads(result.stdout)
        remote_archive = str(reply["archive"])
        remote_sha = str(reply["sha256"])
        manifest = Manifest.from_json(json.dumps(reply["manifest"]).encode())
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteError(
            runner.host, f"`{argv}` did not answer with a backup report ({exc})"
        ) from None
    name = posixpath.basename(remote_archive)
    if not name or name != shlex.quote(name):
        raise RemoteError(runner.host, f"unexpected archive name {remote_archive!r}")
    local_dir.mkdir(parents=True, exist_ok=True)
    dest = local_dir / name
    partial = local_dir / f".{name}.partial"
    # Created 0600 before the copy fills it: the archive holds password hashes and secrets.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        runner.get(remote_archive, partial)
        if sha256_file(partial) != remote_sha:
            raise RemoteError(runner.host, f"{name} arrived damaged (SHA-256 differs); try again")
        partial.rename(dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    removed = apply_retention(local_dir, keep, dest) if keep else []
    return RemoteBackupResult(
        runner.host, remote_archive, BackupResult(dest, manifest, remote_sha, removed)
    )
