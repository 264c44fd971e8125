"""The catalog of checks: each ``doctor/checks`` module registers its checks with ``@check``.

Ids are stable (``category.name``, as in the guide's CHECKS.md); the catalog keeps the order of
registration, which is the order of the report.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable

from doctor.model import CheckFunction, CheckSpec
from hivemind.errors import UsageError

_CATALOG: dict[str, CheckSpec] = {}


def check(
    check_id: str, *, title: str, guide: str, fixable: bool = False, host_probe: bool = False
) -> Callable[[CheckFunction], CheckFunction]:
    """Register ``function`` as the check ``check_id``."""

    def register(function: CheckFunction) -> CheckFunction:
        if check_id in _CATALOG and _CATALOG[check_id].function is not function:
            raise ValueError(f"doctor check {check_id} is registered twice")
        _CATALOG[check_id] = CheckSpec(check_id, title, guide, function, fixable, host_probe)
        return function

    return register


def all_checks() -> list[CheckSpec]:
    """Every check, after importing every module of :mod:`doctor.checks`."""
    import doctor.checks as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    order = {category: index for index, category in enumerate(CATEGORY_ORDER)}
    return sorted(_CATALOG.values(), key=lambda spec: order.get(spec.category, len(order)))


#: Categories in the order of the guide: is it up, is the host fine, is the cluster fine.
CATEGORY_ORDER = (
    "ports",
    "process",
    "firewall",
    "network",
    "redis",
    "nodepool",
    "sqlite",
    "resources",
    "workers",
    "tasks",
    "data",
    "deps",
    "logs",
    "security",
    "backup",
)


def select(
    specs: Iterable[CheckSpec], only: Iterable[str] = (), skip: Iterable[str] = ()
) -> list[CheckSpec]:
    """The checks named by ``only`` (ids or categories; all when empty) minus those in ``skip``.

    An unknown id or category is a usage error, so a typo never silently runs nothing.
    """
    specs = list(specs)
    known = {spec.id for spec in specs} | {spec.category for spec in specs}
    only, skip = list(only), list(skip)
    unknown = sorted({name for name in [*only, *skip] if name not in known})
    if unknown:
        raise UsageError(
            f"unknown doctor check or category: {', '.join(unknown)} (see `hivemind doctor list`)"
        )

    def named(spec: CheckSpec, names: list[str]) -> bool:
        return spec.id in names or spec.category in names

    return [spec for spec in specs if (not only or named(spec, only)) and not named(spec, skip)]
