"""HiveMind: a distributed computing platform shipped as a diagnostics-first ops toolkit."""

__version__ = "0.1.0"

_API = ("connect", "Executor", "wait", "as_completed")


def __getattr__(name: str) -> object:
    # The Python API on first use: `import hivemind` (every CLI call) stays light.
    if name in _API:
        from hivemind import api

        return getattr(api, name)
    raise AttributeError(f"module 'hivemind' has no attribute {name!r}")
