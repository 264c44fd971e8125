"""The CLI's stored login: one token per node pool address, in a file only its owner reads."""

from __future__ import annotations

import json
import os
from pathlib import Path


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hivemind" / "credentials.json"


def _load(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def load_token(address: str) -> str:
    return _load(credentials_path()).get(address, "")


def _write(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def save_token(address: str, token: str) -> Path:
    path = credentials_path()
    data = _load(path)
    data[address] = token
    _write(path, data)
    return path


def forget_token(address: str) -> bool:
    path = credentials_path()
    data = _load(path)
    if data.pop(address, None) is None:
        return False
    _write(path, data)
    return True
