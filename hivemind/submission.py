"""Pure helpers for building submissions: argument parsing and --map item files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hivemind.errors import UsageError


def parse_arg(text: str) -> Any:
    """A ``--arg`` value: JSON when it parses (``3``, ``[1,2]``, ``"x"``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_items(path: Path) -> list[Any]:
    """One JSON value per non-blank line; a bad line is an error naming its line number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as exc:
            raise UsageError(f"{path}:{number}: not JSON: {exc.msg}") from None
    if not items:
        raise UsageError(f"{path} holds no items")
    return items
