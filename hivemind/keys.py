"""Every Redis key HiveMind uses (tuning constants live in :mod:`hivemind.tuning`).

The guide's key names are kept so that its ``redis-cli`` commands work verbatim:

========================  ======  ==========================================================
key                       type    holds
========================  ======  ==========================================================
``worker_nodes``          hash    node id -> JSON summary of that worker
``worker:<id>``           hash    ``status``, ``last_heartbeat``, resources and metrics
``task_queue``            list    ids of QUEUED tasks, in submit order
``task:<id>``             hash    ``status``, ``error_message``, ``start_time``,
                                  ``last_update``, ``progress``, ``worker``, ``owner``,
                                  ``attempt`` and the task's spec
========================  ======  ==========================================================

HiveMind's own keys:

=============================  ======  =====================================================
``worker:<id>:tasks``          set     ids of the tasks leased to that worker
``task:<id>:log``              list    log chunks, in order
``task:<id>:history``          list    JSON attempt events (leased, requeued, finished …)
``queue:owners``               zset    owners with queued tasks; score = priority rank, then
                                       round-robin ticket (lowest is served next)
``queue:owner:<owner>``        zset    that owner's queued task ids; score = priority rank,
                                       then submit sequence
``queue:seq``                  string  submit sequence counter
``queue:rr``                   string  round-robin ticket counter
``leases``                     zset    RUNNING task id -> lease expiry (unix ms)
``tasks:all``                  zset    task id -> created (unix ms), for admin listings
``tasks:owner:<owner>``        zset    task id -> created (unix ms), for a user's listing
``tasks:constrained``          set     QUEUED tasks with requirements, checked for
                                       schedulability by the reaper
``tasks:archive_pending``      set     finished tasks not yet archived to SQLite
``deadlines``                  zset    RUNNING task id -> start + timeout + grace (unix ms)
``login_failures:ip:<addr>``   hash    failed logins from one address: ``n`` and ``last`` (unix
                                       s) for the address, ``n:<username>`` and
                                       ``last:<username>`` for each username (expires)
``login_failures:<username>``  string  failed logins for that user from any address (expires)
``stats:finished``             hash    terminal status -> tasks that ended so (counters)
``stats:finished:<minute>``    hash    the same for one minute (unix s // 60); expires
``bundle:<hash>:uploaders``    set     users who uploaded that bundle: only they (and admins)
                                       may submit tasks that run it
``join:<sha256>``              string  an unused join token's grant (JSON: labels, node id),
                                       keyed by the SHA-256 of its secret; expires with it
``housekeeping:lock``          string  the node pool that runs housekeeping now (its
                                       instance id); expires unless it renews it
``nodepool:events``           pubsub  channel: what one node pool tells the others (work
                                       queued, tasks ended, logs written), to wake their
                                       long polls (:mod:`hivemind.nodepool.relay`)
=============================  ======  =====================================================
"""

from __future__ import annotations

WORKER_NODES = "worker_nodes"
TASK_QUEUE = "task_queue"
QUEUE_OWNERS = "queue:owners"
QUEUE_SEQ = "queue:seq"
QUEUE_RR = "queue:rr"
LEASES = "leases"
TASKS_ALL = "tasks:all"
TASKS_CONSTRAINED = "tasks:constrained"
TASKS_ARCHIVE_PENDING = "tasks:archive_pending"
DEADLINES = "deadlines"
STATS_FINISHED = "stats:finished"
HOUSEKEEPING_LOCK = "housekeeping:lock"
NODEPOOL_EVENTS = "nodepool:events"

# Prefixes, for the Lua scripts that build keys from ids.
WORKER_PREFIX = "worker:"
TASK_PREFIX = "task:"
QUEUE_OWNER_PREFIX = "queue:owner:"
TASKS_OWNER_PREFIX = "tasks:owner:"
STATS_MINUTE_PREFIX = "stats:finished:"
#: Suffixes after a task's or worker's key, for the Lua scripts that build keys from ids.
TASK_LOG_SUFFIX = ":log"
TASK_HISTORY_SUFFIX = ":history"
WORKER_TASKS_SUFFIX = ":tasks"
#: ``bundle:<hash>:uploaders``: who uploaded a bundle (see :func:`bundle_uploaders_key`).
BUNDLE_PREFIX = "bundle:"


def bundle_uploaders_key(bundle_id: str) -> str:
    """Users who uploaded the bundle ``bundle_id`` (its sha256): a bundle is visible to them
    and to admins only, so nobody runs another user's code by knowing its hash."""
    return f"{BUNDLE_PREFIX}{bundle_id}:uploaders"


def stats_minute_key(minute: int) -> str:
    """Counts of tasks that ended in one minute (``minute`` is unix seconds // 60)."""
    return f"{STATS_MINUTE_PREFIX}{minute}"


def worker_key(node_id: str) -> str:
    return f"{WORKER_PREFIX}{node_id}"


def worker_tasks_key(node_id: str) -> str:
    return f"{WORKER_PREFIX}{node_id}{WORKER_TASKS_SUFFIX}"


def task_key(task_id: str) -> str:
    return f"{TASK_PREFIX}{task_id}"


def task_log_key(task_id: str) -> str:
    return f"{TASK_PREFIX}{task_id}{TASK_LOG_SUFFIX}"


def task_history_key(task_id: str) -> str:
    return f"{TASK_PREFIX}{task_id}{TASK_HISTORY_SUFFIX}"


def owner_queue_key(owner: str) -> str:
    return f"{QUEUE_OWNER_PREFIX}{owner}"


def owner_tasks_key(owner: str) -> str:
    return f"{TASKS_OWNER_PREFIX}{owner}"


def join_key(secret_digest: str) -> str:
    """An unused join token's grant; taken (GETDEL) by the one enrolment it allows."""
    return f"join:{secret_digest}"


def login_failures_key(username: str) -> str:
    """Failed logins for ``username`` from every address together (a bounded slowdown)."""
    return f"login_failures:{username}"


def login_address_failures_key(address: str) -> str:
    """Failed logins from ``address``, in all and per username (they make it wait)."""
    return f"login_failures:ip:{address}"


#: What a backup holds: every key of the cluster's state, as KEYS patterns (exact names match
#: themselves). Left out on purpose: ``login_failures:*``, a rate-limit window, and
#: ``housekeeping:lock``, which names a running process, and the ``nodepool:events``
#: channel, which holds nothing: none is the cluster's state.
BACKUP_KEY_PATTERNS: tuple[str, ...] = (
    WORKER_NODES,
    TASK_QUEUE,
    QUEUE_OWNERS,
    QUEUE_SEQ,
    QUEUE_RR,
    LEASES,
    TASKS_ALL,
    TASKS_CONSTRAINED,
    TASKS_ARCHIVE_PENDING,
    DEADLINES,
    STATS_FINISHED,
    STATS_MINUTE_PREFIX + "*",
    WORKER_PREFIX + "*",
    TASK_PREFIX + "*",
    QUEUE_OWNER_PREFIX + "*",
    TASKS_OWNER_PREFIX + "*",
    BUNDLE_PREFIX + "*",
)
