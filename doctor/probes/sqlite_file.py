"""What an SQLite file says about itself: its 100-byte header, its permission bits, and the
replies of ``PRAGMA integrity_check``. Pure functions over bytes, numbers and rows."""

from __future__ import annotations

import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The first 16 bytes of every SQLite 3 database (what `file` recognises).
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100


@dataclass(frozen=True)
class SqliteHeader:
    page_size: int
    page_count: int
    #: ``PRAGMA user_version``: HiveMind's schema version.
    user_version: int
    #: 1 legacy rollback journal, 2 WAL.
    write_version: int

    @property
    def wal(self) -> bool:
        return self.write_version == 2


def parse_header(data: bytes) -> SqliteHeader | None:
    """The header of an SQLite 3 file, or None when ``data`` does not start like one."""
    if len(data) < HEADER_SIZE or not data.startswith(SQLITE_MAGIC):
        return None
    raw_page_size = int.from_bytes(data[16:18], "big")
    # The value 1 stands for 65536, which does not fit in two bytes.
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    return SqliteHeader(
        page_size=page_size,
        page_count=int.from_bytes(data[28:32], "big"),
        user_version=int.from_bytes(data[60:64], "big"),
        write_version=data[18],
    )


def describe_mode(mode: int) -> str:
    """``0o100664`` -> ``"0664 (-rw-rw-r--)"``."""
    return f"{stat.S_IMODE(mode):04o} ({stat.filemode(mode)})"


def world_readable(mode: int) -> bool:
    return bool(mode & stat.S_IROTH)


def world_writable(mode: int) -> bool:
    return bool(mode & stat.S_IWOTH)


def safe_mode(mode: int) -> int:
    """The permission bits ``chmod`` should set: the owner reads and writes, the group keeps
    what it had (the guide's 664 is for a shared service group), the world gets nothing."""
    return (stat.S_IMODE(mode) | 0o600) & ~0o007


def writable_by(mode: int, owner_uid: int, owner_gid: int, uid: int, gids: Iterable[int]) -> bool:
    """Would a process running as ``uid`` (in ``gids``) be let to write this file?"""
    if uid == 0:
        return True
    if uid == owner_uid:
        return bool(mode & stat.S_IWUSR)
    if owner_gid in set(gids):
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)


def integrity_problems(rows: Sequence[Sequence[object]]) -> list[str]:
    """The messages of an ``integrity_check`` / ``quick_check`` reply; empty when it is ``ok``."""
    messages = [str(row[0]) for row in rows if row]
    return [] if messages == ["ok"] else messages
