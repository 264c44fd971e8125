"""What crosses to a worker: the function by its import path, the arguments as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from hivemind.api.errors import NotShippable, ValueTooLarge


def function_path(function: Callable[..., Any] | str) -> str:
    """``module:qualname`` for a function a worker can import; a string is taken as one."""
    if isinstance(function, str):
        if ":" not in function:
            raise NotShippable(f"{function!r} is not a 'module:function' path")
        return function
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    if not module or not name or "<" in name or module == "__main__":
        what = "a lambda" if name == "<lambda>" else f"{name or function!r}"
        raise NotShippable(
            f"{what} cannot be sent to a worker: functions go by their import path, so define "
            "it at module level in a module the workers can import (and `--allow`); lambdas, "
            "closures and functions of __main__ have no such path"
        )
    return f"{module}:{name}"


def encode_args(args: Sequence[Any], limit: int) -> str:
    """The arguments as JSON, or ValueTooLarge/TypeError before anything is sent."""
    try:
        text = json.dumps(list(args), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task arguments must be JSON values: {exc}") from None
    if len(text.encode()) > limit:
        raise ValueTooLarge(
            f"the arguments are {len(text.encode()):,} bytes as JSON, over "
            f"MAX_TASK_DATA_SIZE ({limit:,}): pass a path or a key to the data instead"
        )
    return text
