"""The process table from ``ps -ww -eo pid=,ppid=,rss=,args=`` (what ``ps aux --sort=-%mem``
sorts)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

KIB = 1024
#: -ww: full command lines; without it ps cuts them at the terminal's width ($COLUMNS).
PS_ARGV = ("ps", "-ww", "-eo", "pid=,ppid=,rss=,args=")


@dataclass(frozen=True)
class ProcessRow:
    pid: int
    ppid: int
    rss: int
    command: str


def parse_ps(text: str) -> list[ProcessRow]:
    rows = []
    for line in text.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3:
            continue
        try:
            pid, ppid, rss_kib = int(parts[0]), int(parts[1]), int(parts[2])
        except ValueError:
            continue
        command = parts[3] if len(parts) > 3 else ""
        rows.append(ProcessRow(pid, ppid, rss_kib * KIB, command))
    return rows


def top_by_rss(rows: Iterable[ProcessRow], count: int) -> list[ProcessRow]:
    return sorted(rows, key=lambda row: (-row.rss, row.pid))[:count]


def descendants(rows: Iterable[ProcessRow], roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them (a worker's task processes are its children)."""
    children: dict[int, list[int]] = {}
    for row in rows:
        children.setdefault(row.ppid, []).append(row.pid)
    found: set[int] = set()
    todo = [pid for pid in roots]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo += children.get(pid, [])
    return found
