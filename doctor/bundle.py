"""`hivemind doctor bundle`: one tar.gz to attach to a support request.

It holds the findings, the settings and config files, the end of every log, Redis INFO, the
versions and the process list. Secrets are redacted from every file that goes in (the signing
secret, worker tokens, passwords in Redis URLs, bearer tokens), and the result says what was.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import re
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil

from doctor.context import Context, Unavailable
from doctor.model import Report
from hivemind.config import Settings, find_config_file
from hivemind.paths import layout

#: Lines of each log kept.
LOG_TAIL_LINES = 500
DISTRIBUTION = "hivemind-platform"

_PATTERNS = {
    "password in a Redis URL": re.compile(r"(rediss?://[^:/@\s]*:)([^@\s]+)(@)"),
    "a password, secret or token setting": re.compile(
        r"(?i)((?:secret_key|worker_token|requirepass|password|token)\s*[=:]\s*[\"']?)"
        r"([^\"'\s,}]+)()"
    ),
    "bearer token": re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]{8,})()"),
}


@dataclass
class Redactor:
    """Replaces known secret values and secret-shaped text with ``***``, counting what it hid."""

    secrets: list[str]
    hidden: Counter[str] = field(default_factory=Counter)

    def __call__(self, name: str, text: str) -> str:
        for secret in self.secrets:
            if secret and secret in text:
                self.hidden[f"{name}: the signing secret or a worker token"] += text.count(secret)
                text = text.replace(secret, "***")
        for what, pattern in _PATTERNS.items():
            # Every pattern is (what comes before, the secret, what comes after).
            text, count = pattern.subn(lambda m: m.group(1) + "***" + m.group(3), text)
            if count:
                self.hidden[f"{name}: {what}"] += count
        return text


@dataclass(frozen=True)
class Bundle:
    path: Path
    members: list[str]
    #: "file: what" -> how many times it was hidden.
    redacted: dict[str, int]


def _known_secrets(settings: Settings) -> list[str]:
    values = [settings.secret_key, settings.worker_token]
    key_file = layout(settings.home).secret_key_file
    with contextlib.suppress(OSError):
        values.append(key_file.read_text().strip())
    tokens = layout(settings.home).worker_config
    for token_file in tokens.glob("*.token") if tokens.is_dir() else []:
        try:
            values.append(token_file.read_text().strip())
        except OSError:
            continue
    # Short values would redact ordinary words; real secrets are long.
    return [v for v in values if len(v) >= 8]


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 256 * 1024))
        data = fh.read().decode(errors="replace")
    return "\n".join(data.splitlines()[-lines:]) + "\n"


def _logs(settings: Settings) -> dict[str, Path]:
    home = layout(settings.home)
    found = {}
    for path in (home.nodepool_log, home.master_log, home.worker_log, home.task_execution_log):
        found[f"logs/{path.relative_to(home.root)}"] = path
    for folder in (
        home.node_pool / "logs",
        home.root / "master" / "logs",
        home.root / "worker" / "logs",
        home.redis_dir,
    ):
        for path in sorted(folder.glob("*.log")) if folder.is_dir() else []:
            found.setdefault(f"logs/{path.relative_to(home.root)}", path)
    return {name: path for name, path in found.items() if path.is_file()}


def _versions() -> dict[str, object]:
    packages = {}
    for name in ("hivemind-platform", "grpcio", "redis", "psutil", "paramiko", "sqlite-utils"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version,
        "platform": platform.platform(),
        "kernel": platform.release(),
        "packages": packages,
    }


def _processes() -> str:
    rows = ["PID     RSS_MB  CPU%  COMMAND"]
    for proc in psutil.process_iter(["pid", "memory_info", "cpu_percent", "cmdline", "name"]):
        info = proc.info
        rss = (info["memory_info"].rss / 2**20) if info["memory_info"] else 0.0
        command = " ".join(info["cmdline"] or []) or info["name"] or "?"
        rows.append(f"{info['pid']:<7} {rss:>6.1f}  {info['cpu_percent'] or 0:>4.1f}  {command}")
    return "\n".join(rows) + "\n"


def _redis_info(context: Context) -> str:
    try:
        info = context.redis_info()
    except Unavailable as missing:
        return f"# not collected: {missing}\n"
    return json.dumps(info, indent=1, sort_keys=True, default=str) + "\n"


def default_name() -> str:
    return time.strftime("hivemind-doctor-%Y%m%d-%H%M%S.tar.gz")


def make_bundle(
    settings: Settings, report: Report, output: Path, config: str | None = None
) -> Bundle:
    """Write the support bundle to ``output`` (a file, or a folder to put it in)."""
    if output.is_dir():
        output = output / default_name()
    context = Context(settings)
    redact = Redactor(_known_secrets(settings))
    files: dict[str, str] = {
        "findings.json": json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n",
        "settings.json": json.dumps(settings.redacted(), indent=2, default=str) + "\n",
        "redis-info.json": _redis_info(context),
        "versions.json": json.dumps(_versions(), indent=2) + "\n",
        "processes.txt": _processes(),
    }
    config_file = find_config_file(config)
    if config_file is not None:
        files[f"config/{config_file.name}"] = config_file.read_text(errors="replace")
    home = layout(settings.home)
    for folder in (home.master_config, home.worker_config):
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.is_file() and not path.name.endswith(".token"):
                files[f"config/{path.relative_to(home.root)}"] = path.read_text(errors="replace")
    for name, path in _logs(settings).items():
        try:
            files[name] = _tail(path)
        except OSError as exc:
            files[name] = f"# not collected: {exc}\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    with tarfile.open(tmp, "w:gz") as archive:
        for name, text in files.items():
            data = redact(name, text).encode()
            member = tarfile.TarInfo(f"hivemind-doctor/{name}")
            member.size, member.mtime, member.mode = len(data), int(time.time()), 0o600
            archive.addfile(member, io.BytesIO(data))
    tmp.chmod(0o600)
    tmp.replace(output)
    return Bundle(output, sorted(files), dict(redact.hidden))
