"""Timing and sizing defaults that are not user settings.

Settings a user may change live in :mod:`hivemind.config`; Redis key names in
:mod:`hivemind.keys`. What is here is tuned by measurement (see ``bench/README.md``) and
changed in code, each with the reason for its value.
"""

from __future__ import annotations

#: Priorities are clamped to this range; the score of a queued task is
#: ``(PRIORITY_MAX - priority) * PRIORITY_STRIDE + sequence``, exact in a double.
PRIORITY_MAX = 1000
PRIORITY_STRIDE = 2**40

#: Queued tasks one lease call inspects before giving up on finding one that fits.
LEASE_SCAN_LIMIT = 200
#: Most tasks one lease call hands out.
LEASE_BATCH_MAX = 256
#: How long the node pool trusts its reading of the live workers' ``--allow`` lists, by which
#: it refuses a function no worker would run before any task exists (seconds).
ALLOW_LISTS_TTL = 2.0
#: Functions judged per reading of those lists, at most (a bound on the memo).
ALLOW_JUDGED_MAX = 1024
#: ZSCAN batch size when a task is named by a prefix of its id (``hivemind task show 206a``).
TASK_PREFIX_SCAN_COUNT = 1000
#: A worker leases function tasks ahead, to wait in its pool's queue, up to this much expected
#: work per slot (by the mean duration of its recent calls), in seconds ...
PREFETCH_WORK_SECONDS = 0.5
#: ... and never more than this many per slot.
FUNCTION_PREFETCH_MAX_PER_SLOT = 64
#: A worker whose function calls take under this long on average, in seconds, waits up to
#: this long for a running task's outcome before it leases again, and sends the outcome with
#: the lease: one call to the node pool per quick task instead of two.
OUTCOME_CARRY_WAIT = 0.01
#: Longest long-poll a worker may ask for, in seconds.
LEASE_WAIT_MAX = 30.0
#: Threads a node pool answers calls on; a call that finds none free waits for one.
NODEPOOL_CALL_THREADS = 128
#: Lease streams a node pool holds open at once; each holds one of its call threads, and
#: workers past this many lease with one call each instead.
LEASE_STREAMS_MAX = 64
#: LeaseTasks calls that may wait for work at once; each also holds a call thread. Past this
#: many, a call looks once and tells its worker to ask again after about its own wait
#: (``LeaseReply.poll_again_after``): with thousands of idle workers, long polls would
#: otherwise take every thread, and heartbeats would wait behind them until workers were
#: marked lost. Streams and long polls together leave 32 threads for every other call.
LONG_POLLS_MAX = 32
#: Seconds a worker keeps one lease stream (its deadline); it opens the next one before a
#: long poll could outlast it. Also the longest a worker waits on a node pool that hangs.
LEASE_STREAM_LIFETIME = 300.0
#: Seconds a worker or client sends with one call each after the node pool refused it a
#: stream (it has none, or holds as many as it allows).
STREAM_RETRY = 60.0
#: Submit streams a node pool holds open at once (each holds a call thread); a client opens
#: one from its second submit on, so `hivemind submit` and other one-off calls never do.
SUBMIT_STREAMS_MAX = 16
#: Seconds a client keeps one submit stream; a submit that waits longer goes as a call.
#: Also the longest a client's submit waits on a node pool that hangs.
SUBMIT_STREAM_LIFETIME = 120.0
#: Longest a WaitTasks call, or a SubmitTasks call that waits, blocks before it replies with
#: the tasks as they are, in seconds; a client waiting longer calls again.
TASK_WAIT_MAX = 300.0
#: Seconds `hivemind submit --wait` waits inside the submit call itself (quick tasks come back
#: with it) before it shows a progress bar and waits with WaitTasks.
SUBMIT_QUICK_WAIT = 2.0
#: Seconds past its timeout after which the node pool itself marks a RUNNING task TIMEOUT
#: (its worker should have stopped it and reported long before).
TIMEOUT_GRACE = 30.0
#: Seconds between housekeeping passes (expired leases, lost workers, schedulability, archive).
REAPER_INTERVAL = 1.0
#: Milliseconds the housekeeping lock lives unless its node pool renews it (every pass): with
#: several node pools on one Redis, one housekeeps, and another takes over this long after
#: it stops without letting go (a stopping node pool lets go at once).
HOUSEKEEPING_LOCK_MS = 3000
#: Seconds a Redis command keeps being retried through Sentinel, to outlast a failover
#: (Sentinel's down-after time plus its election; a few seconds with `hivemind up --ha`).
REDIS_FAILOVER_SECONDS = 15.0
#: Milliseconds without an answer before a Sentinel calls the primary down: `up --ha` (one
#: machine, loopback) and the installed units (real hosts, real networks). Not less: on a
#: loaded 2-core machine a new primary once missed 1 s of PINGs and was failed over again.
SENTINEL_DOWN_AFTER_MS_LOCAL = 2000
SENTINEL_DOWN_AFTER_MS = 5000
#: Sentinel's failover timeout (ms): how long before a stalled failover is tried again.
SENTINEL_FAILOVER_TIMEOUT_MS = 10000
#: Seconds a replica may lag before the primary stops counting it for
#: ``min-replicas-to-write`` (and so refuses writes when none is left).
MIN_REPLICAS_MAX_LAG = 10
#: Finished tasks the node pool archives to SQLite per slice, and the pause between slices.
#: The archive is CPU work in the node pool's own process: calls in flight wait for the GIL
#: while a slice runs, and a task's own scripts wait in Redis while a slice's script runs.
#: On the bench VM, one 240-task slice a second made 18 of the 20 slowest of 2,000 idle
#: round trips (12-34 ms); slices of 20 with 2 ms pauses took p99 from 12-16 to 9-10 ms.
ARCHIVE_SLICE = 20
ARCHIVE_PAUSE = 0.002
#: Seconds one archive pass runs at most before the archiver looks again whether its node
#: pool still holds the housekeeping lock; a backlog is archived pass after pass.
ARCHIVE_PASS_SECONDS = 0.5
#: A worker with no heartbeat for this many intervals is marked ``lost``. The housekeeper
#: looks once per interval (sooner when a worker joins or is forgotten), so it is marked
#: within one interval more.
WORKER_LOST_AFTER_INTERVALS = 3
#: Seconds an ``offline`` or ``lost`` worker stays listed before it is forgotten.
WORKER_FORGET_AFTER = 24 * 3600
#: Failed logins are counted per source address (the client's, as the master forwards it, or
#: the gRPC peer's): for each username it tries, and across all of them (password spraying).
#: An address's counts are forgotten this many seconds after its last failed login.
LOGIN_FAILURE_WINDOW = 900
#: Failures one address may make for one username before its next try waits
#: LOGIN_BACKOFF_FIRST seconds, twice as long after each further failure, up to
#: LOGIN_BACKOFF_MAX. Only that address waits: the user signs in from any other at once ...
LOGIN_USER_FAILURES_FREE = 5
#: ... and failures one address may make across all usernames before all its logins wait so.
LOGIN_ADDRESS_FAILURES_FREE = 10
LOGIN_BACKOFF_FIRST = 1.0
LOGIN_BACKOFF_MAX = 300.0
#: Failures for one username from all addresses together past which each of its logins is
#: slowed by LOGIN_SLOWDOWN_STEP seconds per further failure, up to LOGIN_SLOWDOWN_MAX: a
#: small bounded delay against many addresses guessing one password, never a refusal.
LOGIN_SLOWDOWN_AFTER = 20
LOGIN_SLOWDOWN_STEP = 0.05
LOGIN_SLOWDOWN_MAX = 1.0
#: Seconds a node pool trusts a user's role and disabled flag before it reads them again;
#: changes made through it show at once, changes by other processes within this time.
USER_RECHECK = 1.0
#: Seconds a node pool trusts that a user's tokens were not revoked (by a password change)
#: before it reads the user's token generation again; revocations through it show at once.
USER_TOKEN_RECHECK = USER_RECHECK
#: The same for a worker's tokens (`hivemind worker-token NODE --revoke`).
WORKER_TOKEN_RECHECK = 5.0
#: Verified tokens a node pool remembers, so a worker's token is checked once (cleared when full).
VERIFIED_TOKENS_MAX = 20_000
#: Notices of ended tasks a node pool keeps for its waiters; one older than that makes a
#: waiter re-read every task it waits for.
FINISHED_NOTICES_KEPT = 4096
#: Hashes of just-ended tasks a node pool keeps, so that their waiters reply without reading
#: them from Redis again (about 1 KB each).
FINISHED_RECORDS_KEPT = 4096
#: Seconds between a waiting long poll's looks at the queue when nothing wakes it, and how
#: long a node pool trusts that the queue is still empty when nothing was queued through it
#: since it saw the queue empty (a long poll then skips its first look). Either way, work
#: queued by other processes (a restore, the doctor's repairs) shows within this time.
QUEUE_EMPTY_TRUST = 1.0
#: Bytes per gRPC message when streaming bundles, results, checkpoints and logs.
CHUNK_SIZE = 1024 * 1024
#: Log chunks kept per task in Redis (the whole log is archived to disk when it ends).
TASK_LOG_MAX_CHUNKS = 20_000
#: Seconds a per-minute finished counter is kept: the dashboard charts the last hour.
STATS_MINUTE_TTL = 2 * 3600
#: Minutes of throughput GetStats reports.
STATS_MINUTES = 60
#: Tasks one SubmitTasks call may carry.
SUBMIT_BATCH_MAX = 10_000
#: Seconds between the master's looks at its CA and certificate files, by which it follows a
#: CA rotation without a restart (two small files read, so often is cheap).
TRUST_RECHECK = 1.0
