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

or YAML (a ``.yaml``/``.yml`` file), where a host may also carry variables (what
`hivemind deploy` reads: ``node_id``, ``labels``, ``hivemind_home``, ``python``)::

    hosts:
      - root@10.0.0.1
    groups:
      workers:
        - hive@gpu-1
        - host: hive@gpu-2:2222
          node_id: gpu-2
          labels: [gpu]

A host listed under several groups is one host with several groups (and one set of vars).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from hivemind.errors import UsageError
from hivemind.remote.ssh import SSHTarget, parse_target

#: The per-host variables a YAML inventory may set, and the type each must have.
HOST_VARS: dict[str, type] = {"node_id": str, "labels": list, "hivemind_home": str, "python": str}


@dataclass
class InventoryHost:
    target: SSHTarget
    groups: list[str] = field(default_factory=list)
    #: Per-host settings (YAML inventories only): keys of :data:`HOST_VARS`.
    vars: dict[str, Any] = field(default_factory=dict)


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


def _host_vars(entry: dict[Any, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(target text, vars) of a ``{host: ..., node_id: ...}`` entry, each var type-checked."""
    target = entry.get("host")
    if not isinstance(target, str):
        raise UsageError(f"{where}: a host entry needs host: user@host[:port]")
    host_vars: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "host":
            continue
        expected = HOST_VARS.get(str(key))
        if expected is None:
            known = ", ".join(["host", *HOST_VARS])
            raise UsageError(f"{where}: unknown host variable {key!r} (known: {known})")
        if not isinstance(value, expected) or (
            expected is list and not all(isinstance(v, str) and v for v in value)
        ):
            kind = "a list of strings" if expected is list else "a string"
            raise UsageError(f"{where}: {key} must be {kind}")
        if expected is str and not value.strip():
            raise UsageError(f"{where}: {key} must not be empty")
        host_vars[str(key)] = list(value) if expected is list else value
    return target, host_vars


def parse_inventory_yaml(text: str, source: str = "<inventory>") -> Inventory:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        return Inventory([])
    if not isinstance(data, dict):
        raise UsageError(f"{source}: the top level must be a mapping with hosts and groups")
    unknown = set(data) - {"hosts", "groups"}
    if unknown:
        raise UsageError(
            f"{source}: unknown key {sorted(map(str, unknown))[0]!r} (use hosts and groups)"
        )
    groups = data.get("groups") or {}
    if not isinstance(groups, dict):
        raise UsageError(f"{source}: groups must be a mapping of group name to a list of hosts")
    sections: list[tuple[str | None, object]] = [(None, data.get("hosts") or [])]
    sections += [(str(name), entries) for name, entries in groups.items()]
    found: dict[SSHTarget, InventoryHost] = {}
    for group, entries in sections:
        where = f"{source}: groups.{group}" if group else f"{source}: hosts"
        if not isinstance(entries, list):
            raise UsageError(f"{where} must be a list of hosts")
        for number, entry in enumerate(entries):
            here = f"{where}[{number}]"
            if isinstance(entry, str):
                text_target, host_vars = entry, {}
            elif isinstance(entry, dict):
                text_target, host_vars = _host_vars(entry, here)
            else:
                raise UsageError(f"{here}: a host is user@host[:port] or a mapping with host:")
            try:
                target = parse_target(text_target)
            except UsageError as exc:
                raise UsageError(f"{here}: {exc}") from None
            _add(found, target, group)
            known = found[target].vars
            for key, value in host_vars.items():
                # One host, one set of vars: a second listing may repeat them, not change them.
                if key in known and known[key] != value:
                    raise UsageError(f"{here}: {target} has {key} {known[key]!r} already")
                known[key] = value
    return Inventory(list(found.values()))


def load_inventory(path: Path | str) -> Inventory:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read inventory {path}: {exc.strerror}") from None
    if path.suffix == ".toml":
        return parse_inventory_toml(text, str(path))
    if path.suffix in (".yaml", ".yml"):
        return parse_inventory_yaml(text, str(path))
    return parse_inventory_text(text, str(path))
