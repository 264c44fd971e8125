"""Pickled calls: a lambda, a closure or any function by value (cloudpickle), for sessions
opened with ``hivemind.connect(pickle=True)``.

Running one means running whatever code its submitter sent, so a worker takes pickled calls
only when it was started with ``--allow hivemind.pickled``: a trust decision about every user
who may submit to the cluster. A worker without it refuses them as it refuses any module it
does not allow, and the node pool refuses them at submit while no live worker allows them.
Arguments and the result travel pickled too, as base64 inside the task's JSON.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

#: The function a pickled call runs as, on the worker.
FUNCTION = "hivemind.pickled:call"
#: The key of a pickled result in the task's JSON result.
RESULT_KEY = "hivemind.pickled"


def _cloudpickle() -> Any:
    try:
        import cloudpickle
    except ImportError:
        raise ImportError(
            "pickled calls need the cloudpickle package on the submitting host and the "
            "workers: pip install 'hivemind[pickle]'"
        ) from None
    return cloudpickle


def dumps(value: Any) -> str:
    return base64.b64encode(_cloudpickle().dumps(value)).decode()


def loads(text: str) -> Any:
    import pickle

    _cloudpickle()  # what cloudpickle's payloads need to rebuild functions
    return pickle.loads(base64.b64decode(text))


def encode_call(function: Callable[..., Any], args: Sequence[Any]) -> str:
    """The one argument of a pickled call: the function and its arguments."""
    return dumps((function, tuple(args)))


def call(payload: str) -> dict[str, str]:
    """On the worker: run the pickled call; its result, pickled."""
    function, args = loads(payload)
    return {RESULT_KEY: dumps(function(*args))}


def decode_result(value: Any) -> Any:
    """A pickled call's result as the submitter's value (others are returned as they are)."""
    if isinstance(value, dict) and set(value) == {RESULT_KEY}:
        return loads(value[RESULT_KEY])
    return value
