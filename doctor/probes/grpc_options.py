"""gRPC channel options: is keepalive on, with what timing (the guide's §4 values)?"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: The guide's keepalive options (4 節點間通訊失敗: 優化網路配置).
GUIDE_KEEPALIVE: dict[str, int] = {
    "grpc.keepalive_time_ms": 30000,
    "grpc.keepalive_timeout_ms": 5000,
    "grpc.http2.max_pings_without_data": 0,
}
#: gRPC's "never" for keepalive_time_ms (INT_MAX), its default for client channels.
KEEPALIVE_NEVER = 2**31 - 1


@dataclass(frozen=True)
class Keepalive:
    time_ms: int | None
    timeout_ms: int | None
    permit_without_calls: bool

    @property
    def enabled(self) -> bool:
        return self.time_ms is not None and 0 < self.time_ms < KEEPALIVE_NEVER


def keepalive_of(options: Iterable[tuple[str, Any]]) -> Keepalive:
    """The keepalive settings of a channel's option list (later options override earlier)."""
    values = dict(options)

    def number(name: str) -> int | None:
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return int(value)

    return Keepalive(
        time_ms=number("grpc.keepalive_time_ms"),
        timeout_ms=number("grpc.keepalive_timeout_ms"),
        permit_without_calls=bool(values.get("grpc.keepalive_permit_without_calls")),
    )


def guide_options_text() -> str:
    return ", ".join(f"('{name}', {value})" for name, value in GUIDE_KEEPALIVE.items())
