"""Filesystem space from ``df -P -k`` (POSIX output: one line per filesystem, 1 KiB blocks)."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True)
class FilesystemSpace:
    device: str
    total: int
    used: int
    free: int
    mount: str

    @property
    def free_percent(self) -> float:
        # df counts space reserved for root as neither used nor available; so does this.
        usable = self.used + self.free
        return 100.0 * self.free / usable if usable else 0.0


def parse_df(text: str) -> list[FilesystemSpace]:
    """The rows of ``df -P -k PATH…``, in the order of the paths given."""
    rows = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 6:
            continue
        try:
            total, used, free = (int(parts[i]) * KIB for i in (1, 2, 3))
        except ValueError:
            continue
        # The mount point is the last column and may hold spaces.
        mount = line.split(None, 5)[5] if len(parts) >= 6 else parts[-1]
        rows.append(FilesystemSpace(parts[0], total, used, free, mount))
    return rows
