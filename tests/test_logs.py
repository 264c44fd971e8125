"""The buffered task log: batched writes that still reach the file promptly and rotate."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hivemind.logs import BUFFERED_FLUSH_INTERVAL, rotating_handler


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"hivemind.test.{name}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_lines_reach_the_file_within_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "task_execution.log"
    handler = rotating_handler(path, buffered=True)
    log = _logger("interval", handler)
    for i in range(100):
        log.info("task t%d attempt 1 succeeded", i)
    deadline = time.monotonic() + BUFFERED_FLUSH_INTERVAL + 2
    while time.monotonic() < deadline and path.read_text().count("succeeded") < 100:
        time.sleep(0.02)
    lines = path.read_text().splitlines()
    assert len(lines) == 100
    assert lines[0].endswith("INFO hivemind.test.interval: task t0 attempt 1 succeeded")
    handler.close()


def test_warnings_are_written_at_once_and_close_writes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "task_execution.log"
    handler = rotating_handler(path, buffered=True)
    log = _logger("warn", handler)
    log.info("queued line")
    log.warning("worker process died")
    # The warning goes out at once, with the line logged before it, in order.
    assert [line.split(": ", 1)[1] for line in path.read_text().splitlines()] == [
        "queued line",
        "worker process died",
    ]
    log.info("last line")
    handler.close()
    assert path.read_text().splitlines()[-1].endswith("last line")


def test_the_buffered_log_rotates(tmp_path: Path) -> None:
    path = tmp_path / "task_execution.log"
    handler = rotating_handler(path, buffered=True)
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    handler.maxBytes = 2000
    log = _logger("rotate", handler)
    for i in range(200):
        log.info("line %03d %s", i, "x" * 40)
        if i % 20 == 19:
            handler.flush()
    handler.close()
    assert (tmp_path / "task_execution.log.1").exists()
    assert path.stat().st_size <= 2000
    assert "line 199" in path.read_text()
