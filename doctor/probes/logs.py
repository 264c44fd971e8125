"""HiveMind's log lines (``hivemind.logs.LOG_FORMAT``) read back as records, and the recent
ones that look like trouble grouped the way the guide greps for them.

A line is ``2026-11-28 01:55:52,123 ERROR hivemind.worker: message``; the supervisor writes
``--- 2026-11-28 01:55:52 starting …``. Lines without a time (a traceback, a crash's stderr)
belong to the record above them. Times are local, as ``logging`` writes them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

_STAMPED = re.compile(
    r"^(?:--- )?(?P<stamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:,(?P<ms>\d{3}))?"
    r"(?: (?P<level>[A-Z]+) (?P<logger>[\w.\-]+):)?"
)
#: The guide's greps (日誌分析: error|exception|failed, timeout|connection, memory|disk), most
#: specific first: "ConnectionError" is about the connection before it is an error.
PATTERNS = ("memory", "disk", "timeout", "connection", "exception", "failed", "error")
_PATTERN_RES = {name: re.compile(name, re.IGNORECASE) for name in PATTERNS}
_PATTERN_RES["timeout"] = re.compile(r"time(d)?[ _-]?out|deadline exceeded", re.IGNORECASE)
#: Levels that are the platform narrating normal work ("connection established").
QUIET_LEVELS = frozenset({"DEBUG", "INFO"})


@dataclass
class LogRecord:
    at: float
    level: str
    line: str
    more: list[str] = field(default_factory=list)

    @property
    def telling_text(self) -> str:
        """The line and, for a traceback, its last line (the exception): the source lines in
        between quote code (``timeout=timeout``), not what went wrong."""
        return "\n".join([self.line, *self.more[-1:]])


def _stamp(line: str) -> tuple[float, str] | None:
    match = _STAMPED.match(line)
    if not match:
        return None
    try:
        at = datetime.strptime(match["stamp"], "%Y-%m-%d %H:%M:%S").timestamp()
    except ValueError:
        return None
    return at + int(match["ms"] or 0) / 1000, match["level"] or (
        "INFO" if line[:4] == "--- " else ""
    )


def recent_records(text: str, since: float) -> list[LogRecord]:
    """Records stamped at or after ``since``. Reads back from the end and stops at the first
    older stamp, so a 20 MiB log costs only its last hour."""
    lines = text.splitlines()
    start = 0
    for index in range(len(lines) - 1, -1, -1):
        stamped = _stamp(lines[index])
        if stamped is not None and stamped[0] < since:
            start = index + 1
            break
    records: list[LogRecord] = []
    for line in lines[start:]:
        stamped = _stamp(line)
        if stamped is not None:
            records.append(LogRecord(stamped[0], stamped[1], line))
        elif records and line.strip():
            records[-1].more.append(line)
    return records


def trouble_pattern(record: LogRecord) -> str | None:
    """The first of :data:`PATTERNS` the record matches; None for quiet levels."""
    if record.level in QUIET_LEVELS:
        return None
    text = record.telling_text
    return next((name for name in PATTERNS if _PATTERN_RES[name].search(text)), None)


@dataclass
class ErrorGroup:
    log: str
    pattern: str
    count: int
    first: str
    last: str
    first_at: float
    last_at: float
    #: Most records of this group in one minute.
    peak_per_minute: int


def group_errors(log: str, records: list[LogRecord]) -> tuple[list[ErrorGroup], int]:
    """Groups by pattern (largest first) and the log's busiest minute, in matching records."""
    groups: dict[str, ErrorGroup] = {}
    per_minute: dict[str, Counter[int]] = {}
    all_minutes: Counter[int] = Counter()
    for record in records:
        pattern = trouble_pattern(record)
        if pattern is None:
            continue
        minute = int(record.at // 60)
        all_minutes[minute] += 1
        per_minute.setdefault(pattern, Counter())[minute] += 1
        group = groups.get(pattern)
        if group is None:
            groups[pattern] = ErrorGroup(
                log, pattern, 1, record.line, record.line, record.at, record.at, 0
            )
        else:
            group.count += 1
            group.last, group.last_at = record.line, record.at
    for pattern, group in groups.items():
        group.peak_per_minute = max(per_minute[pattern].values())
    ordered = sorted(groups.values(), key=lambda g: (-g.count, PATTERNS.index(g.pattern)))
    return ordered, max(all_minutes.values(), default=0)
