"""Log files: the guide's paths, rotated so they never fill the disk."""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import sys
import threading
import time
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 20 * 1024 * 1024
BACKUPS = 5
#: Seconds a line may wait in a buffered log before it is written.
BUFFERED_FLUSH_INTERVAL = 0.2
#: Most a log file may allow: its owner to write, its group to read, the world nothing.
LOG_FILE_MODE = 0o640


def open_log_fd(path: str | os.PathLike[str]) -> int:
    """``path`` opened for appending, created with LOG_FILE_MODE; an existing log that allows
    more (world-readable, group-writable) is tightened to it. Logs hold task names, errors
    and output. A file of another user's is left as it is (security.secrets names it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid == os.geteuid() and mode & 0o777 & ~LOG_FILE_MODE:
            os.fchmod(fd, mode & ~0o777 | mode & LOG_FILE_MODE)
    except OSError:
        pass
    return fd


class LineFormatter(logging.Formatter):
    """LOG_FORMAT, with the date and time of each second formatted once, not once a line: a
    busy worker logs a line per task."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._stamp = (-1, "")  # (second, its text), replaced whole: threads may share it

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached_second, text = self._stamp
        if second != cached_second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._stamp = (second, text)
        return self.default_msec_format % (text, record.msecs)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files (the first and each one after a rollover) are
    created 0640 whatever the umask, through :func:`open_log_fd`."""

    def _open(self):  # type: ignore[no-untyped-def]
        return os.fdopen(
            open_log_fd(self.baseFilename), "a", encoding=self.encoding, errors=self.errors
        )


class BufferedRotatingFileHandler(PrivateRotatingFileHandler):
    """A rotating log that writes its lines in batches, from a thread of its own.

    A busy worker logs two lines per task; writing, flushing and checking for rollover once
    per line cost it more than running a small task. Here a line is formatted at once and
    written within BUFFERED_FLUSH_INTERVAL seconds, together with the lines logged since;
    WARNING and above are written at once. Lines still waiting are written at interpreter
    exit (`logging.shutdown`) but lost if the process is killed.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._pending: list[str] = []
        self._wake = threading.Event()
        threading.Thread(target=self._flush_loop, name="log-writer", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        # Handler.handle holds self.lock here.
        self._pending.append(line)
        if record.levelno >= logging.WARNING:
            self._write_pending()
        elif len(self._pending) == 1:
            self._wake.set()

    def flush(self) -> None:
        with self.lock:
            self._write_pending()

    def close(self) -> None:
        self.flush()
        super().close()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            if self.stream is None:
                self.stream = self._open()
            size, chunk = self.stream.tell(), []
            for line in lines:
                # Rotate between lines, as the stdlib handler does, so no file outgrows
                # maxBytes by more than one line.
                if self.maxBytes > 0 and size and size + len(line) >= self.maxBytes:
                    self.stream.write("".join(chunk))
                    self.doRollover()
                    size, chunk = 0, []
                chunk.append(line)
                size += len(line)
            self.stream.write("".join(chunk))
            self.stream.flush()
        except (OSError, ValueError) as exc:  # a full disk must not stop the worker
            sys.stderr.write(f"cannot write {self.baseFilename}: {exc}\n")

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(BUFFERED_FLUSH_INTERVAL)  # let the lines of a busy moment gather
            self.flush()


def rotating_handler(path: Path, buffered: bool = False) -> logging.Handler:
    """A handler for ``path``, rotated at MAX_BYTES; ``buffered`` writes lines in batches
    (for logs that get lines per task, see :class:`BufferedRotatingFileHandler`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler: logging.Handler
    if buffered:
        handler = BufferedRotatingFileHandler(path, MAX_BYTES, BACKUPS)
    else:
        handler = PrivateRotatingFileHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
    handler.setFormatter(LineFormatter())
    return handler


def configure_logging(path: Path, level: str = "INFO", stderr: bool = True) -> None:
    """Send the ``hivemind`` loggers to ``path`` (rotated) and, for daemons, to stderr."""
    root = logging.getLogger("hivemind")
    root.setLevel(level.upper())
    root.handlers.clear()
    root.addHandler(rotating_handler(path))
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(LineFormatter())
        root.addHandler(console)
    root.propagate = False
