"""Reading and checking playbooks: YAML in, a :class:`~recovery.model.Playbook` out.

The YAML is composed into nodes first, so every mistake (an unknown key, a wrong type, an
action that does not exist, a Redis command off the allowlist, a glob escaping HIVEMIND_HOME,
a variable never declared) is rejected before anything runs, as ``file:line: reason``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from hivemind.errors import UsageError
from recovery.actions import ActionSpec, all_actions
from recovery.model import VARIABLE, Condition, Playbook, Step

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_STATUSES = ("ok", "warn", "fail", "skip", "error")
_PLAYBOOK_KEYS = {"name", "description", "hosts", "opt_in", "allow_shell", "vars", "steps"}
_STEP_KEYS = {"name", "when", "retries", "delay", "timeout", "postcondition", "ignore_errors"}


class PlaybookError(UsageError):
    """A playbook is malformed; the message starts with ``file:line:``."""


class _Reader:
    """Turns composed YAML nodes into checked values, naming file and line on error."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._construct = SafeConstructor()

    def error(self, node: yaml.Node | None, reason: str) -> PlaybookError:
        line = node.start_mark.line + 1 if node is not None else 1
        return PlaybookError(f"{self.file}:{line}: {reason}")

    def value(self, node: yaml.Node) -> Any:
        try:
            return self._construct.construct_object(node, deep=True)
        except ConstructorError as exc:
            raise self.error(node, str(exc.problem or exc)) from None

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """key -> (key node, value node); duplicate and non-string keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                raise self.error(key_node, f"{what}: keys must be strings, not {key!r}")
            if key in items:
                raise self.error(key_node, f"{what}: duplicate key {key!r}")
            items[key] = (key_node, value_node)
        return items

    def typed(self, node: yaml.Node, kind: type | tuple[type, ...], what: str) -> Any:
        value = self.value(node)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # YAML's true/false are ints to Python; a count is never a boolean.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(node, f"{what} must be {_kind_name(kind)}, not {value!r}")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value) if kinds == (float,) else value
        if not isinstance(value, kinds):
            raise self.error(node, f"{what} must be {_kind_name(kind)}, not {value!r}")
        return value

    def unknown(self, items: dict[str, tuple[yaml.Node, yaml.Node]], allowed: set[str]) -> None:
        for key, (key_node, _value) in items.items():
            if key not in allowed:
                raise self.error(
                    key_node, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})"
                )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping"}  # fmt: skip
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_playbook(text: str, file: str = "<playbook>") -> Playbook:
    reader = _Reader(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise PlaybookError(f"{file}:{line}: not valid YAML: {exc.problem or exc}") from None
    if root is None:
        raise PlaybookError(f"{file}:1: the playbook is empty")
    top = reader.mapping(root, "a playbook")
    reader.unknown(top, _PLAYBOOK_KEYS)
    for required in ("name", "description", "steps"):
        if required not in top:
            raise reader.error(root, f"the playbook has no {required!r}")
    name = reader.typed(top["name"][1], str, "name")
    if not _NAME.match(name):
        raise reader.error(top["name"][1], f"name {name!r}: use lowercase letters, digits and -")
    description = reader.typed(top["description"][1], str, "description")
    hosts = _hosts(reader, top.get("hosts"))
    opt_in = reader.typed(top["opt_in"][1], bool, "opt_in") if "opt_in" in top else False
    allow_shell = (
        reader.typed(top["allow_shell"][1], bool, "allow_shell") if "allow_shell" in top else False
    )
    variables = _variables(reader, top.get("vars"))
    steps_node = top["steps"][1]
    if not isinstance(steps_node, yaml.SequenceNode) or not steps_node.value:
        raise reader.error(steps_node, "steps must be a non-empty list")
    actions = all_actions()
    steps = tuple(
        _step(reader, node, actions, allow_shell, set(variables)) for node in steps_node.value
    )
    return Playbook(name, description, steps, hosts, opt_in, allow_shell, variables, text, file)


def _hosts(reader: _Reader, entry: tuple[yaml.Node, yaml.Node] | None) -> tuple[str, ...]:
    if entry is None:
        return ("all",)
    value = reader.value(entry[1])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise reader.error(entry[1], "hosts must be 'all' or a list of inventory groups")
    return tuple(value)


def _variables(reader: _Reader, entry: tuple[yaml.Node, yaml.Node] | None) -> dict[str, str | None]:
    if entry is None:
        return {}
    found: dict[str, str | None] = {}
    for key, (key_node, value_node) in reader.mapping(entry[1], "vars").items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise reader.error(key_node, f"variable name {key!r}: letters, digits and _ only")
        value = reader.value(value_node)
        if isinstance(value, (list, dict)):
            raise reader.error(value_node, f"variable {key}: a scalar or null (required)")
        found[key] = None if value is None else str(value)
    return found


def _step(
    reader: _Reader,
    node: yaml.Node,
    actions: dict[str, ActionSpec],
    allow_shell: bool,
    variables: set[str],
) -> Step:
    items = reader.mapping(node, "a step")
    where = f"{reader.file}:{node.start_mark.line + 1}"
    named = [k for k in items if k in actions]
    unknown = [k for k in items if k not in actions and k not in _STEP_KEYS]
    if unknown:
        key_node = items[unknown[0]][0]
        raise reader.error(
            key_node,
            f"unknown action or key {unknown[0]!r} (actions: {', '.join(actions)}; "
            f"step keys: {', '.join(sorted(_STEP_KEYS))})",
        )
    if len(named) != 1:
        raise reader.error(node, f"a step names exactly one action, found {named or 'none'}")
    if "name" not in items:
        raise reader.error(node, "the step has no 'name'")
    spec = actions[named[0]]
    if spec.shell and not allow_shell:
        raise reader.error(
            items[named[0]][0], "a shell step needs `allow_shell: true` in the playbook"
        )
    params = _params(reader, items[named[0]][1], spec, variables)

    def opt(key: str, kind: type | tuple[type, ...], default: Any, check: Callable[[Any], bool],
            rule: str) -> Any:  # fmt: skip
        if key not in items:
            return default
        value = reader.typed(items[key][1], kind, key)
        if not check(value):
            raise reader.error(items[key][1], f"{key} {rule}")
        return value

    return Step(
        name=reader.typed(items["name"][1], str, "name"),
        action=spec.name,
        params=params,
        when=_conditions(reader, items.get("when")),
        retries=opt("retries", int, 0, lambda v: 0 <= v <= 100, "must be 0-100"),
        delay=float(opt("delay", (int, float), 1.0, lambda v: 0 <= v <= 3600, "must be 0-3600 s")),
        timeout=float(
            opt("timeout", (int, float), 60.0, lambda v: 0 < v <= 86400, "must be 0-86400 s")
        ),
        postcondition=_check_ids(reader, items.get("postcondition")),
        ignore_errors=opt("ignore_errors", bool, False, lambda _v: True, ""),
        where=where,
    )


def _params(
    reader: _Reader, node: yaml.Node, spec: ActionSpec, variables: set[str]
) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode) and reader.value(node) is None:
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    else:
        items = reader.mapping(node, f"action {spec.name}")
    if spec.params:
        reader.unknown(items, set(spec.params))
    else:
        _no_params(reader, items, spec)
    params: dict[str, Any] = {}
    for name, param in spec.params.items():
        if name not in items:
            if param.required:
                raise reader.error(node, f"action {spec.name} needs {name!r}")
            continue
        value_node = items[name][1]
        value = reader.typed(value_node, param.kind, f"{spec.name}.{name}")
        if param.choices and value not in param.choices:
            choices = ", ".join(map(str, param.choices))
            raise reader.error(value_node, f"{spec.name}.{name} is {value!r}; one of {choices}")
        for text in value if isinstance(value, list) else [value]:
            for used in VARIABLE.findall(str(text)):
                if used not in variables:
                    raise reader.error(value_node, f"variable {used!r} is not declared in vars")
        params[name] = value
    if spec.validate is not None:
        try:
            spec.validate(params)
        except ValueError as exc:
            raise reader.error(node, f"{spec.name}: {exc}") from None
    return params


def _no_params(reader: _Reader, items: dict[str, Any], spec: ActionSpec) -> None:
    if items:
        key_node = next(iter(items.values()))[0]
        raise reader.error(key_node, f"action {spec.name} takes no parameters")


def _known_check_ids() -> set[str]:
    from doctor.registry import all_checks

    return {spec.id for spec in all_checks()}


def _check_ids(reader: _Reader, entry: tuple[yaml.Node, yaml.Node] | None) -> tuple[str, ...]:
    if entry is None:
        return ()
    value = reader.value(entry[1])
    ids = [value] if isinstance(value, str) else value
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise reader.error(entry[1], "postcondition must be a check id or a list of them")
    known = _known_check_ids()
    for check_id in ids:
        if check_id not in known:
            raise reader.error(entry[1], f"unknown doctor check {check_id!r}")
    return tuple(ids)


def _conditions(
    reader: _Reader, entry: tuple[yaml.Node, yaml.Node] | None
) -> tuple[Condition, ...]:
    if entry is None:
        return ()
    node = entry[1]
    nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
    known = _known_check_ids()
    conditions = []
    for item in nodes:
        fields = reader.mapping(item, "when")
        reader.unknown(fields, {"check", "status"})
        if "check" not in fields or "status" not in fields:
            raise reader.error(item, "when needs a check and a status")
        check_id = reader.typed(fields["check"][1], str, "when.check")
        if check_id not in known:
            raise reader.error(fields["check"][1], f"unknown doctor check {check_id!r}")
        status = reader.value(fields["status"][1])
        statuses = [status] if isinstance(status, str) else status
        if not isinstance(statuses, list) or not all(s in _STATUSES for s in statuses):
            raise reader.error(
                fields["status"][1], f"when.status: one or more of {', '.join(_STATUSES)}"
            )
        conditions.append(Condition(check_id, tuple(statuses)))
    return tuple(conditions)


# -- finding playbooks -----------------------------------------------------------------------
def shipped() -> dict[str, Traversable]:
    """The playbooks shipped in the wheel, by name."""
    folder = resources.files("playbooks")
    return {
        entry.name.removesuffix(".yaml"): entry
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def load_playbook(name_or_path: str) -> Playbook:
    """A shipped playbook by name, or a playbook file by path."""
    bundled = shipped()
    if name_or_path in bundled:
        entry = bundled[name_or_path]
        return parse_playbook(entry.read_text(encoding="utf-8"), f"playbooks/{entry.name}")
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read playbook {path}: {exc.strerror}") from None
        return parse_playbook(text, str(path))
    raise UsageError(
        f"no playbook named {name_or_path!r} (shipped: {', '.join(bundled)}; or give a file)"
    )
