"""Requirement lines of a distribution's metadata (``Requires-Dist``, PEP 508), read without
``packaging`` (which HiveMind does not depend on): name, extras, version specifiers and the
markers that matter on one host (``python_version``, ``sys_platform``, ``extra``)."""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass

_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?\s*"
    r"(?:\((?P<paren>[^)]*)\)|(?P<specs>[^;]*))?\s*(?:;\s*(?P<marker>.*))?$"
)
_SPECIFIER = re.compile(r"^\s*(?P<op>~=|===|==|!=|<=|>=|<|>)\s*(?P<version>[^\s,]+)\s*$")
_MARKER = re.compile(
    r"""^\s*(?P<var>[a-z_]+)\s*(?P<op>==|!=|<=|>=|<|>|not in|in)\s*["'](?P<value>[^"']*)["']\s*$"""
)
_OPERATORS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}


@dataclass(frozen=True)
class Specifier:
    op: str
    version: str


@dataclass(frozen=True)
class Requirement:
    name: str
    extras: tuple[str, ...]
    specifiers: tuple[Specifier, ...]
    marker: str

    @property
    def text(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return self.name + extras + ",".join(f"{s.op}{s.version}" for s in self.specifiers)


def normalize(name: str) -> str:
    """PEP 503 name: ``Sqlite_Utils`` -> ``sqlite-utils``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(line: str) -> Requirement:
    match = _REQUIREMENT.match(line)
    if not match:
        raise ValueError(f"not a requirement: {line!r}")
    specs_text = match["paren"] or match["specs"] or ""
    specifiers = []
    for part in specs_text.split(","):
        if not part.strip():
            continue
        spec = _SPECIFIER.match(part)
        if not spec:
            raise ValueError(f"unreadable version specifier {part!r} in {line!r}")
        specifiers.append(Specifier(spec["op"], spec["version"]))
    extras = tuple(x.strip() for x in (match["extras"] or "").split(",") if x.strip())
    return Requirement(match["name"], extras, tuple(specifiers), (match["marker"] or "").strip())


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a version: ``1.85.1rc1`` -> (1, 85, 1); ``*`` parts end it."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        numbers.append(int(digits.group()))
        if digits.end() != len(part):
            break  # 1rc1: the pre-release tail does not count
    return tuple(numbers)


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def satisfies(version: str, specifier: Specifier) -> bool:
    have, want = _padded(release(version), release(specifier.version))
    if specifier.op in ("==", "!=") and specifier.version.endswith(".*"):
        prefix = release(specifier.version)
        same = release(version)[: len(prefix)] == prefix
        return same if specifier.op == "==" else not same
    if specifier.op == "~=":
        prefix = release(specifier.version)[:-1]
        return have >= want and release(version)[: len(prefix)] == prefix
    if specifier.op == "===":
        return version == specifier.version
    return bool(_OPERATORS[specifier.op](have, want))


def unmet(version: str, requirement: Requirement) -> list[Specifier]:
    return [spec for spec in requirement.specifiers if not satisfies(version, spec)]


def wrong_major(version: str, failed: list[Specifier]) -> bool:
    """True when a failed specifier is about another major version (1.x where >=2 is needed)."""
    major = release(version)[:1]
    return any(release(spec.version)[:1] != major for spec in failed)


def marker_applies(marker: str, extras: frozenset[str] = frozenset()) -> bool:
    """Whether ``marker`` holds here. ``and``/``or`` of simple comparisons are understood; a
    clause about anything else is taken to hold (better to check a package than skip it)."""
    if not marker:
        return True
    return any(
        all(_clause(clause, extras) for clause in re.split(r"\s+and\s+", alternative))
        for alternative in re.split(r"\s+or\s+", marker.strip("() "))
    )


def _clause(clause: str, extras: frozenset[str]) -> bool:
    match = _MARKER.match(clause.strip("() "))
    if not match:
        return True
    var, op, value = match["var"], match["op"], match["value"]
    if var == "extra":
        return (value in extras) == (op == "==")
    here = {
        "python_version": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "python_full_version": ".".join(str(x) for x in sys.version_info[:3]),
        "sys_platform": sys.platform,
        "os_name": os.name,
        "platform_system": platform.system(),
    }.get(var)
    if here is None:
        return True
    if op in ("in", "not in"):
        return (here in value) == (op == "in")
    if var.startswith("python"):
        return satisfies(here, Specifier(op, value))
    return bool(_OPERATORS.get(op, _OPERATORS["=="])(here, value))
