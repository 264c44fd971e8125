"""Task data on the node pool's disk: bundles, results, checkpoints and archived logs.

Uploads are written to a temporary file in chunks, counted against MAX_TASK_DATA_SIZE as
they arrive (the limit is enforced before anything is kept), and renamed into place only when
complete, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hivemind import tuning
from hivemind.errors import HivemindError

_ID = re.compile(r"^[0-9a-f]{16,64}(-[0-9]+)?$")


class DataTooLarge(HivemindError):
    """An upload went over MAX_TASK_DATA_SIZE."""


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


class BlobStore:
    def __init__(self, root: Path, max_size: int) -> None:
        self.root = root
        self.max_size = max_size
        for sub in ("bundles", "results", "checkpoints", "logs", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, blob_id: str) -> Path:
        if not _ID.match(blob_id):
            raise HivemindError(f"malformed id {blob_id!r}")
        suffix = ".log" if kind == "logs" else ".zip"
        return self.root / kind / f"{blob_id}{suffix}"

    def receive(self, chunks: Iterable[bytes]) -> tuple[Path, str, int]:
        """Spool ``chunks`` to a temp file; returns (temp path, sha256, size)."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_size:
                        raise DataTooLarge(
                            f"upload is over MAX_TASK_DATA_SIZE ({_mib(self.max_size)})"
                        )
                    digest.update(chunk)
                    fh.write(chunk)
        except BaseException:
            os.unlink(name)
            raise
        return Path(name), digest.hexdigest(), size

    def keep(self, temp: Path, kind: str, blob_id: str) -> Path:
        dest = self.path(kind, blob_id)
        os.replace(temp, dest)
        return dest

    def discard(self, temp: Path) -> None:
        temp.unlink(missing_ok=True)

    def exists(self, kind: str, blob_id: str) -> bool:
        return self.path(kind, blob_id).exists()

    def read_chunks(self, kind: str, blob_id: str) -> Iterator[bytes]:
        with self.path(kind, blob_id).open("rb") as fh:
            while chunk := fh.read(tuning.CHUNK_SIZE):
                yield chunk

    def write_log(self, task_id: str, text: str) -> None:
        dest = self.path("logs", task_id)
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)

    def read_log(self, task_id: str) -> str | None:
        path = self.path("logs", task_id)
        return path.read_text(encoding="utf-8") if path.exists() else None
