"""The fixed, documented set of actions a playbook step may name.

Each action module registers its actions with :func:`action`: the parameters it takes (checked
when the playbook is loaded, before anything runs), an optional validator for what a type
cannot say (the Redis allowlist, the HIVEMIND_HOME glob guard), and the function that does it.

An action is idempotent: it reads the state first and changes only what is not already as
asked, returning :class:`Outcome` with ``changed`` False when there was nothing to do. Under
``--dry-run`` (``ctx.dry_run``) it only reads, and says what it would do.
"""

from __future__ import annotations

import importlib
import pkgutil
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hivemind.config import Settings
from hivemind.paths import HomeLayout, layout
from hivemind.remote import LocalRunner, Runner


@dataclass(frozen=True)
class Param:
    kind: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] = ()
    doc: str = ""


@dataclass
class Outcome:
    changed: bool
    message: str
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    """What an action works with on the host it runs on."""

    settings: Settings
    timeout: float = 60.0
    dry_run: bool = False
    runner: Runner = field(default_factory=LocalRunner)
    emit: Callable[[str], None] = lambda _line: None
    host: str = field(default_factory=socket.gethostname)

    @property
    def home(self) -> HomeLayout:
        return layout(self.settings.home)

    def doctor(self, only: Iterable[str] = ()) -> Any:
        """A doctor report of the named checks (all when empty), read fresh."""
        from doctor import DEFAULT_CHECK_TIMEOUT, run_doctor

        timeout = min(self.timeout, DEFAULT_CHECK_TIMEOUT)
        return run_doctor(self.settings, list(only), timeout=timeout)


ActionFunction = Callable[[StepContext, dict[str, Any]], Outcome]
Validator = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ActionSpec:
    name: str
    summary: str
    params: dict[str, Param]
    function: ActionFunction
    #: Raises ValueError(reason) for what the parameter types cannot express.
    validate: Validator | None = None
    #: A shell step: allowed only in a playbook that says ``allow_shell: true``.
    shell: bool = False


_ACTIONS: dict[str, ActionSpec] = {}


def action(
    name: str,
    summary: str,
    params: dict[str, Param] | None = None,
    *,
    validate: Validator | None = None,
    shell: bool = False,
) -> Callable[[ActionFunction], ActionFunction]:
    def register(function: ActionFunction) -> ActionFunction:
        _ACTIONS[name] = ActionSpec(name, summary, params or {}, function, validate, shell)
        return function

    return register


def all_actions() -> dict[str, ActionSpec]:
    """Every action, after importing every module of this package."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_ACTIONS.items()))


def with_defaults(spec: ActionSpec, params: dict[str, Any]) -> dict[str, Any]:
    merged = {name: p.default for name, p in spec.params.items() if not p.required}
    merged.update(params)
    return merged
