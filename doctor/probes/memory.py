"""Memory and swap from ``/proc/meminfo`` (what ``free -h`` prints)."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True)
class MemoryState:
    total: int
    available: int
    swap_total: int
    swap_free: int

    @property
    def available_percent(self) -> float:
        return 100.0 * self.available / self.total if self.total else 0.0

    @property
    def swap_used(self) -> int:
        return max(0, self.swap_total - self.swap_free)

    @property
    def swap_used_percent(self) -> float:
        return 100.0 * self.swap_used / self.swap_total if self.swap_total else 0.0


def parse_meminfo_fields(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by field name (``MemTotal`` …)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        unit = parts[1].lower() if len(parts) > 1 else ""
        fields[name.strip()] = value * KIB if unit == "kb" else value
    return fields


def parse_meminfo(text: str) -> MemoryState:
    """The figures the checks need; ValueError when ``MemTotal`` is missing."""
    fields = parse_meminfo_fields(text)
    if "MemTotal" not in fields:
        raise ValueError("no MemTotal line in /proc/meminfo")
    # Kernels before 3.14 lack MemAvailable; free + reclaimable page cache is what it estimates.
    available = fields.get("MemAvailable")
    if available is None:
        available = fields.get("MemFree", 0) + fields.get("Cached", 0) + fields.get("Buffers", 0)
    return MemoryState(
        total=fields["MemTotal"],
        available=available,
        swap_total=fields.get("SwapTotal", 0),
        swap_free=fields.get("SwapFree", 0),
    )


def human_bytes(count: float) -> str:
    """``1.5 GiB``: the units ``free -h`` and ``df -h`` use."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns
