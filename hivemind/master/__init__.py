"""The master: the web console and JSON REST API on MASTER_HOST:MASTER_PORT.

Every page and API call talks to the node pool over gRPC with the signed-in user's token;
the master keeps no task state of its own. :func:`create_app` builds the ASGI app,
:func:`hivemind.master.server.serve` runs it (``hivemind master``).
"""

from __future__ import annotations

from hivemind.master.app import create_app

__all__ = ["create_app"]
