"""HiveMind: a distributed computing platform shipped as a diagnostics-first ops toolkit."""

__version__ = "0.1.0"
