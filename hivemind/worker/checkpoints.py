"""A task's checkpoint folder, watched so that each settled change is zipped and sent to the
node pool: the next attempt, on whichever worker, starts from it. Bundles and function tasks
share it."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from hivemind.bundle import extract_archive, zip_output
from hivemind.errors import BundleError, NodePoolError
from hivemind.worker.functions import checkpoint_folder, task_folder_name

log = logging.getLogger("hivemind.worker")

Signature = tuple[tuple[str, int, int], ...]


def folder_signature(folder: Path) -> Signature:
    """(relative path, size, mtime) of every file under ``folder``; empty when it is missing."""
    entries = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue  # deleted while we looked: the next poll sees the new state
            entries.append((os.path.relpath(path, folder), info.st_size, info.st_mtime_ns))
    return tuple(sorted(entries))


class CheckpointWatch:
    """Sends ``folder`` whenever it changed since the last send and has then held still for a
    whole poll, so a checkpoint being written is not sent half-done (``final`` skips the
    wait: the task is gone). What the folder holds when the watch starts (a restored
    checkpoint) is not sent back, unless ``fresh``: all of it is then the task's own."""

    def __init__(self, folder: Path, zips: Path, max_size: int, fresh: bool = False) -> None:
        self.folder = folder
        self._zips = zips  # where the zips are written, outside ``folder``
        self._max_size = max_size
        self._seen = self._sent = () if fresh else folder_signature(folder)
        self._taken = 0
        self._lock = threading.Lock()  # one send at a time, in order

    def send(self, final: bool, deliver: Callable[[Path], object]) -> None:
        """Zip the folder and ``deliver`` the zip (removed afterwards) if it is due.

        Raises BundleError when the folder is over the size limit; that state is skipped.
        """
        with self._lock:
            signature = folder_signature(self.folder)
            changed = signature != self._sent
            stable = final or signature == self._seen
            self._seen = signature
            if not changed or not stable:
                return
            self._taken += 1
            target = self._zips / f".checkpoint-{self._taken}.zip"
            try:
                path = zip_output(self.folder, target, self._max_size, "checkpoint")
            except OSError:
                return  # a file vanished while being zipped: still being written; retry
            except BundleError:
                self._sent = signature  # too big: not tried again until it changes
                raise
            self._sent = signature
            if path is not None:
                try:
                    deliver(path)
                finally:
                    path.unlink(missing_ok=True)


class FunctionCheckpoints:
    """The checkpoints of a worker's function tasks, in ``checkpoint_folder(work_root, id)``:
    the previous attempt's is restored before a task starts, each settled change is sent
    while it runs (so the next attempt gets it even if this worker dies), and a task handed
    back sends its last state on the way out.

    ``download(task_id, attempt, dest)`` and ``upload(task_id, attempt, path)`` talk to the
    node pool; ``download`` raises NodePoolError.
    """

    def __init__(
        self,
        work_root: Path,
        max_size: int,
        download: Callable[[str, int, Path], object],
        upload: Callable[[str, int, Path], object],
    ) -> None:
        self._work_root = work_root
        self._root = str(work_root)
        self._max_size = max_size
        self._download = download
        self._upload = upload
        self._watches: dict[tuple[str, int], CheckpointWatch] = {}
        self._lock = threading.Lock()

    def folder(self, task_id: str) -> Path:
        return checkpoint_folder(self._work_root, task_id)

    def restore(self, task_id: str, attempt: int) -> None:
        """Put the previous attempt's checkpoint where the function's checkpoint_dir() is."""
        folder = self.folder(task_id)
        download = folder.parent / "previous-checkpoint.zip"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._download(task_id, attempt, download)
            extract_archive(download, folder)
        except (NodePoolError, BundleError, OSError) as exc:
            # A lost checkpoint costs time, not the task: it starts from scratch.
            log.warning("task %s: previous checkpoint not restored: %s", task_id, exc)
        finally:
            download.unlink(missing_ok=True)
        with self._lock:
            self._watches[(task_id, attempt)] = CheckpointWatch(
                folder, folder.parent, self._max_size
            )

    def send(self, task_id: str, attempt: int, final: bool) -> None:
        """Send the task's checkpoint if it changed (see CheckpointWatch); never raises."""
        with self._lock:
            watch = self._watches.get((task_id, attempt))
            if watch is None:
                folder = self.folder(task_id)
                if not folder.is_dir():
                    return  # most tasks never make one
                watch = CheckpointWatch(folder, folder.parent, self._max_size, fresh=True)
                self._watches[(task_id, attempt)] = watch
        try:
            watch.send(final, lambda path: self._upload(task_id, attempt, path))
        except BundleError as exc:
            log.warning("task %s: checkpoint not saved: %s", task_id, exc)

    def forget(self, task_id: str, attempt: int) -> None:
        """The attempt is over here: drop its watch and the task's folder."""
        with self._lock:
            self._watches.pop((task_id, attempt), None)
        # Plain strings, and one stat: this runs after every function call, and most calls
        # make no checkpoint (pathlib here was a tenth of a busy worker's time).
        own_folder = os.path.join(self._root, task_folder_name(task_id))
        if os.path.isdir(own_folder):
            shutil.rmtree(own_folder, ignore_errors=True)
