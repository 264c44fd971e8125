"""The no-op task of each peer that bench/throughput.py runs next to HiveMind.

Imported by the benchmark's client and by the peers' worker processes, which find it
through ``PYTHONPATH`` set to the repository root. Every peer talks to the benchmark's own
Redis server, named by ``HIVEMIND_BENCH_REDIS_URL`` (``redis://127.0.0.1:PORT``; the
benchmark sets it), each in its own database:

- Celery: broker and result backend in db 2 (``celery -A bench.peer_tasks:celery_app``).
- RQ: db 3; workers import :func:`rq_noop` as ``bench.peer_tasks.rq_noop``.
- Dramatiq: broker and ``Results`` backend in db 4 (``dramatiq bench.peer_tasks``).
- Dask: no Redis; its own scheduler process, workers import :func:`dask_noop`.

A framework that is not installed leaves its names as ``None``.
"""

from __future__ import annotations

import os
from typing import Any

CELERY_DB = 2
RQ_DB = 3
DRAMATIQ_DB = 4
#: The name of the peers' queue where a framework lets us choose one.
QUEUE = "bench"


def redis_url(db: int) -> str:
    base = os.environ.get("HIVEMIND_BENCH_REDIS_URL", "")
    if not base:
        raise RuntimeError(
            "HIVEMIND_BENCH_REDIS_URL is not set; bench/throughput.py sets it for the workers"
        )
    return f"{base.rstrip('/')}/{db}"


def rq_noop() -> None:
    """RQ's task: any importable function will do."""
    return None


def dask_noop(_item: object = None) -> None:
    """Dask's task (``Client.map`` passes each item); its workers import it from here."""
    return None


celery_app: Any = None
celery_noop: Any = None
dramatiq_noop: Any = None

try:
    from celery import Celery
except ImportError:  # reported by the benchmark before it starts anything
    pass
else:
    celery_app = Celery("bench", broker=redis_url(CELERY_DB), backend=redis_url(CELERY_DB))
    celery_app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=False,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @celery_app.task(name="bench.noop")
    def _celery_noop() -> None:
        return None

    celery_noop = _celery_noop

try:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends.redis import RedisBackend
except ImportError:
    pass
else:
    _broker = RedisBroker(url=redis_url(DRAMATIQ_DB))
    _broker.add_middleware(Results(backend=RedisBackend(url=redis_url(DRAMATIQ_DB))))
    dramatiq.set_broker(_broker)

    @dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
    def _dramatiq_noop() -> None:
        return None

    dramatiq_noop = _dramatiq_noop
