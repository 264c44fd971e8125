"""HiveMind's own log files under ``$HIVEMIND_HOME``, and compressing them to free space.

Only regular files inside the three log folders are touched (never a symlink, which could
point out of the home): rotated copies (``nodepool.log.1`` …, the RotatingFileHandler's)
are gzipped in place, and a live log grown far past the rotation size is copied into a
gzip and truncated, the way logrotate's ``copytruncate`` does. Every HiveMind writer opens
its logs in append mode, so a truncated log keeps being written from its new end.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hivemind.logs import MAX_BYTES
from hivemind.paths import HomeLayout

#: ``name.log.3`` (RotatingFileHandler) and ``name.log.old`` (the guide's recovery script).
_ROTATED = re.compile(r"\.(log|out)\.(\d+|old)$")
_LIVE = re.compile(r"\.(log|out)$")
#: A live log larger than this escaped rotation (a console ``.out`` file is never rotated).
OVERSIZED_LIVE_LOG = 2 * MAX_BYTES


def log_folders(home: HomeLayout) -> list[Path]:
    return [home.nodepool_log.parent, home.master_log.parent, home.worker_log.parent]


def _regular_files(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [path for path in entries if path.is_file() and not path.is_symlink()]


def rotated_copies(home: HomeLayout) -> list[Path]:
    """Rotated, still uncompressed copies of HiveMind's logs."""
    return [p for f in log_folders(home) for p in _regular_files(f) if _ROTATED.search(p.name)]


def oversized_live_logs(home: HomeLayout, limit: int = OVERSIZED_LIVE_LOG) -> list[Path]:
    return [
        p
        for f in log_folders(home)
        for p in _regular_files(f)
        if _LIVE.search(p.name) and p.stat().st_size > limit
    ]


def log_bytes(home: HomeLayout) -> int:
    """Bytes all files in HiveMind's log folders take, compressed ones included."""
    total = 0
    for folder in log_folders(home):
        for path in _regular_files(folder):
            try:
                total += path.stat().st_size
            except OSError:
                continue
    return total


@dataclass(frozen=True)
class Compressed:
    source: Path
    target: Path
    bytes_before: int
    bytes_after: int


def _free_gzip_name(path: Path) -> Path:
    """``path.gz``, or a time-stamped name beside it when that is taken (nothing is overwritten)."""
    target = path.with_name(path.name + ".gz")
    if not target.exists():
        return target
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for index in range(1000):
        candidate = path.with_name(f"{path.name}.{stamp}-{index}.gz")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free .gz name beside {path}")


def _write_gzip(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    with source.open("rb") as raw, gzip.open(partial, "wb", compresslevel=6) as packed:
        shutil.copyfileobj(raw, packed, 1024 * 1024)
    shutil.copystat(source, partial)
    os.replace(partial, target)


def compress_rotated(path: Path) -> Compressed:
    """Gzip a rotated copy; the plain copy goes only once its gzip is complete on disk."""
    before = path.stat().st_size
    target = _free_gzip_name(path)
    _write_gzip(path, target)
    path.unlink()
    return Compressed(path, target, before, target.stat().st_size)


def copy_truncate(path: Path) -> Compressed:
    """Gzip a live log's content beside it, then truncate it (its writer appends on)."""
    before = path.stat().st_size
    target = _free_gzip_name(path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"))
    _write_gzip(path, target)
    with path.open("r+b") as live:
        live.truncate(0)
    return Compressed(path, target, before, target.stat().st_size)
