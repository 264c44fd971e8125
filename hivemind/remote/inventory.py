"""Inventory files: the hosts a doctor run or a playbook goes to, optionally in groups.

Plain text, one host a line, ``#`` comments, ``[group]`` headers::

    # the node pool
    [nodepool]
    root@10.0.0.1:22
    [workers]
    hive@gpu-1
    hive@gpu-2:2222

or TOML (a ``.toml`` file)::

    hosts = ["root@10.0.0.1"]            # hosts in no group
    [groups]
    workers = ["hive@gpu-1", "hive@gpu-2:2222"]

A host listed under several groups is one host with several groups.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from hivemind.errors import UsageError
from hivemind.remote.ssh import SSHTarget, parse_target


@dataclass
class InventoryHost:
    target: SSHTarget
    groups: list[str] = field(default_factory=list)


@dataclass
class Inventory:
    hosts: list[InventoryHost]

    def targets(self, group: str | None = None) -> list[SSHTarget]:
        """Every host, or those of ``group``, in file order."""
        return [h.target for h in self.hosts if group is None or group in h.groups]

    @property
    def groups(self) -> list[str]:
        seen: dict[str, None] = {}
        for host in self.hosts:
            seen.update(dict.fromkeys(host.groups))
        return list(seen)


def _add(found: dict[SSHTarget, InventoryHost], target: SSHTarget, group: str | None) -> None:
    host = found.setdefault(target, InventoryHost(target))
    if group and group not in host.groups:
        host.groups.append(group)


def parse_inventory_text(text: str, source: str = "<inventory>") -> Inventory:
    found: dict[SSHTarget, InventoryHost] = {}
    group: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or not line[1:-1].strip():
                raise UsageError(f"{source}:{number}: a group header is written [name]")
            group = line[1:-1].strip()
            continue
        try:
            _add(found, parse_target(line), group)
        except UsageError as exc:
            raise UsageError(f"{source}:{number}: {exc}") from None
    return Inventory(list(found.values()))


def parse_inventory_toml(text: str, source: str = "<inventory>") -> Inventory:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(data) - {"hosts", "groups"}
    if unknown:
        raise UsageError(f"{source}: unknown key {sorted(unknown)[0]!r} (use hosts and groups)")
    found: dict[SSHTarget, InventoryHost] = {}
    sections: list[tuple[str | None, object]] = [(None, data.get("hosts", []))]
    groups = data.get("groups", {})
    if not isinstance(groups, dict):
        raise UsageError(f"{source}: groups must be a table of lists")
    sections += list(groups.items())
    for group, entries in sections:
        where = f"{source}: groups.{group}" if group else f"{source}: hosts"
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise UsageError(f"{where} must be a list of user@host[:port] strings")
        for entry in entries:
            try:
                _add(found, parse_target(entry), group)
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
    return Inventory(list(found.values()))


def load_inventory(path: Path | str) -> Inventory:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read inventory {path}: {exc.strerror}") from None
    if path.suffix == ".toml":
        return parse_inventory_toml(text, str(path))
    return parse_inventory_text(text, str(path))
