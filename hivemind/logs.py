"""Log files: the guide's paths, rotated so they never fill the disk."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 20 * 1024 * 1024
BACKUPS = 5


def rotating_handler(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def configure_logging(path: Path, level: str = "INFO", stderr: bool = True) -> None:
    """Send the ``hivemind`` loggers to ``path`` (rotated) and, for daemons, to stderr."""
    root = logging.getLogger("hivemind")
    root.setLevel(level.upper())
    root.handlers.clear()
    root.addHandler(rotating_handler(path))
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(console)
    root.propagate = False
