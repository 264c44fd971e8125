"""The backup archive: a tar.gz of files plus ``manifest.json`` listing each with its SHA-256.

Layout inside the archive (paths relative to HIVEMIND_HOME where they come from there)::

    manifest.json            versions, schema version, counts, every file with size + SHA-256
    redis.json               HiveMind's Redis keys as typed JSON (recovery.redis_dump)
    node_pool/users.db       an online-backup copy, integrity-checked
    node_pool/secret.key     the token-signing secret, so saved worker tokens keep working
    data/…                   task bundles, results, checkpoints, archived logs
    master/config/…, worker/config/…

Reading checks everything before anything is used: the gzip CRC over the whole stream, only
regular files at safe relative paths, the manifest's format, and each file's size and hash.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hivemind.errors import HivemindError

ARCHIVE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
REDIS_DUMP_NAME = "redis.json"
USERS_DB_NAME = "node_pool/users.db"
ARCHIVE_PREFIX = "hivemind-backup-"
ARCHIVE_SUFFIX = ".tar.gz"
_CHUNK = 1024 * 1024

Progress = Callable[[str, int, int], None]


class ArchiveError(HivemindError):
    """An archive is unreadable, damaged, or not one this HiveMind can restore."""


@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass
class Counts:
    users: int = 0
    #: Distinct tasks: live in Redis or archived in SQLite.
    tasks: int = 0
    tasks_in_redis: int = 0
    tasks_archived: int = 0
    workers: int = 0
    redis_keys: int = 0
    tasks_by_status: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    format: int
    created_at: str
    host: str
    home: str
    versions: dict[str, str]
    schema_version: int
    counts: Counts
    files: list[FileEntry]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw: dict[str, Any] = json.loads(data)
            return cls(
                format=int(raw["format"]),
                created_at=str(raw["created_at"]),
                host=str(raw["host"]),
                home=str(raw["home"]),
                versions={str(k): str(v) for k, v in raw["versions"].items()},
                schema_version=int(raw["schema_version"]),
                counts=Counts(**raw["counts"]),
                files=[FileEntry(**f) for f in raw["files"]],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArchiveError(f"{MANIFEST_NAME} is malformed ({exc})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_archive(
    dest: Path, staged: Path, manifest: Manifest, progress: Progress | None = None
) -> None:
    """Pack ``staged`` (whose files the manifest lists) into ``dest``, written whole:
    a temp file renamed into place, mode 0600 (it holds password hashes and the secret)."""
    temp = dest.with_name(f".{dest.name}.partial")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    total = sum(f.size for f in manifest.files)
    done = 0
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            _add_bytes(tar, MANIFEST_NAME, manifest.to_json())
            for entry in manifest.files:
                info = tar.gettarinfo(str(staged / entry.path), arcname=entry.path)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with (staged / entry.path).open("rb") as fh:
                    tar.addfile(info, fh)
                done += entry.size
                if progress:
                    progress("archive", done, total)
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _check_gzip_stream(path: Path) -> None:
    """Read the whole gzip stream: its CRC and length catch a flipped byte anywhere in it."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{path} is damaged: {exc}") from None


def _safe_member(member: tarfile.TarInfo) -> PurePosixPath:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ArchiveError(f"refusing unsafe path {member.name!r} in the archive")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"refusing {member.name!r}: only regular files belong in a backup")
    return path


def read_manifest(path: Path) -> Manifest:
    """The manifest alone (no checksums checked): for listings and quick looks."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.getmember(MANIFEST_NAME)
            fh = tar.extractfile(member)
            if fh is None:
                raise ArchiveError(f"{path}: {MANIFEST_NAME} is not a file")
            return Manifest.from_json(fh.read())
    except KeyError:
        raise ArchiveError(f"{path} has no {MANIFEST_NAME}: not a HiveMind backup") from None
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise ArchiveError(f"{path} is not a readable tar.gz: {exc}") from None


def extract_verified(path: Path, dest: Path, progress: Progress | None = None) -> Manifest:
    """Check ``path`` whole and unpack it into the empty folder ``dest``.

    Raises :class:`ArchiveError` naming the first problem: damaged stream, unsafe or
    unexpected member, missing file, size or SHA-256 mismatch, unknown format.
    """
    if not path.is_file():
        raise ArchiveError(f"{path} does not exist or is not a file")
    _check_gzip_stream(path)
    manifest = read_manifest(path)
    if manifest.format > ARCHIVE_FORMAT:
        raise ArchiveError(
            f"{path} has archive format {manifest.format}, newer than this HiveMind "
            f"understands ({ARCHIVE_FORMAT}); restore it with a newer HiveMind"
        )
    expected = {f.path: f for f in manifest.files}
    seen: set[str] = set()
    total = sum(f.size for f in manifest.files)
    done = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                rel = _safe_member(member)
                name = str(rel)
                if member.isdir() or name == MANIFEST_NAME:
                    continue
                entry = expected.get(name)
                if entry is None:
                    raise ArchiveError(f"{path}: {name} is not listed in the manifest")
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                size = 0
                source = tar.extractfile(member)
                if source is None:
                    raise ArchiveError(f"{path}: cannot read {name}")
                fd = os.open(
                    target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, (member.mode & 0o777) | 0o600
                )
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                if size != entry.size or digest.hexdigest() != entry.sha256:
                    raise ArchiveError(
                        f"{path}: {name} does not match its checksum in the manifest "
                        "(the archive is damaged or was altered)"
                    )
                seen.add(name)
                done += size
                if progress:
                    progress("verify", done, total)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise ArchiveError(f"{path} is damaged: {exc}") from None
    missing = sorted(set(expected) - seen)
    if missing:
        raise ArchiveError(f"{path}: {missing[0]} is listed in the manifest but missing")
    return manifest
