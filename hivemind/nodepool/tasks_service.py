"""TaskService: what users do with tasks: upload, submit, look, cancel, wait, logs, results."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from hivemind import keys, tuning
from hivemind.auth import Identity
from hivemind.errors import HivemindError
from hivemind.function_names import missing_function, module_allowed, split_function_name
from hivemind.nodepool.blobs import DataTooLarge
from hivemind.nodepool.core import NodePoolState, serve_exchanges
from hivemind.nodepool.views import KIND_NAMES, task_message
from hivemind.proto import hivemind_pb2 as pb
from hivemind.proto import hivemind_pb2_grpc as pb_grpc
from hivemind.states import TaskState, is_terminal
from hivemind.taskstore import Lease, NewTask

LABEL = re.compile(r"^[\w.\-]{1,64}$")
MAX_RETRIES = 100
MAX_TIMEOUT = 7 * 24 * 3600.0
#: What counts as a task id prefix: four characters or more, and no glob characters.
TASK_ID_PREFIX = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
#: Candidates named when a prefix is ambiguous.
PREFIX_CANDIDATES = 10


#: A task's record and its attempt history, as the reading helpers return them.
Found = tuple[dict[str, str], list[dict[str, Any]]]


class SpecError(ValueError):
    #: The status the submit is refused with.
    code = grpc.StatusCode.INVALID_ARGUMENT


class BundleNotFound(SpecError):
    """A bundle that is not there or that the caller did not upload: one answer for both,
    so that nobody learns which hashes exist (nor runs another user's code by its hash)."""

    code = grpc.StatusCode.NOT_FOUND


class FunctionRefused(SpecError):
    """A function no live worker would run: refused before any task exists."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class TaskService(pb_grpc.TaskServiceServicer):
    def __init__(self, state: NodePoolState) -> None:
        self.state = state
        # (read at, live workers' --allow lists, function -> refusal): the lists are read at
        # most every ALLOW_LISTS_TTL, and each function is judged once per reading.
        self._allow_view: tuple[float, dict[str, tuple[str, ...] | None], dict[str, str]] = (
            -math.inf,
            {},
            {},
        )

    # -- uploads and submission ------------------------------------------------------------
    def UploadBundle(
        self, request_iterator: Iterable[pb.BundleChunk], context: grpc.ServicerContext
    ) -> pb.BundleRef:
        identity = self.state.require_user(context)
        blobs = self.state.blobs
        try:
            temp, digest, size = blobs.receive(chunk.data for chunk in request_iterator)
        except DataTooLarge as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if size == 0:
            blobs.discard(temp)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the bundle is empty")
        blobs.keep(temp, "bundles", digest)
        # Content-addressed, so two users' identical uploads share one file; each of them
        # is recorded, and only they may run it.
        self.state.redis.sadd(keys.bundle_uploaders_key(digest), identity.subject)
        return pb.BundleRef(bundle_id=digest, size=size)

    def SubmitTasks(
        self, request: pb.SubmitRequest, context: grpc.ServicerContext
    ) -> pb.SubmitReply:
        identity = self.state.require_user(context)
        if not request.tasks:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no tasks to submit")
        if len(request.tasks) > tuning.SUBMIT_BATCH_MAX:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {tuning.SUBMIT_BATCH_MAX} tasks per call, got {len(request.tasks)}",
            )
        try:
            bundles = self._usable_bundles(identity, request.tasks)
            tasks = [
                self._validate(identity, i, spec, bundles) for i, spec in enumerate(request.tasks)
            ]
        except SpecError as exc:
            context.abort(exc.code, str(exc))
        seen = self.state.finished.generation
        ids = self._queue(tasks)
        if request.wait <= 0:
            return pb.SubmitReply(task_ids=ids)
        # Nothing is finished yet at `seen`: only what ends from here on needs reading.
        records: dict[str, Found] = {}
        self._await_finished(identity, ids, records, seen, request.wait, context)
        return pb.SubmitReply(task_ids=ids, tasks=[task_message(*records[i]) for i in ids])

    def SubmitStream(
        self, requests: Iterator[pb.SubmitRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SubmitReply]:
        state = self.state
        yield from serve_exchanges(
            state.submit_streams, state.stopping, requests, context, self.SubmitTasks
        )

    def _queue(self, tasks: list[NewTask]) -> list[str]:
        """Queue the tasks and wake lease calls for them. Work that any worker can take goes
        straight to the longest-waiting lease call, in the submit's own round trip to Redis."""
        queued = self.state.queued
        plain = self._plain_count(tasks)
        waiter = None if plain is None else queued.claim()
        while waiter is not None and self.state.is_leaving(waiter.ask.worker):
            queued.hand(waiter, [])  # a stopping worker: its call returns empty
            waiter = queued.claim()
        if plain is None or waiter is None:
            ids = self.state.tasks.submit(tasks)
            queued.notify(plain)
            return ids
        seen = queued.generation
        leases: list[Lease] = []
        try:
            ids, round_ = self.state.tasks.submit_and_lease(tasks, waiter.ask)
            leases = round_.leases
        finally:
            queued.hand(waiter, leases)
        # Left empty, the queue needs no look from the worker when it reports this task's end.
        queued.notify(plain - len(leases), seen if round_.queue_empty else None)
        return ids

    @staticmethod
    def _plain_count(tasks: list[NewTask]) -> int | None:
        """How many lease calls to wake: one per task that any worker can take, or all of
        them (None) when a task has requirements or is a bundle, which only some can take."""
        if any(t.constrained or t.kind != "FUNCTION" for t in tasks):
            return None
        return len(tasks)

    def _usable_bundles(self, identity: Identity, specs: Iterable[pb.TaskSpec]) -> set[str]:
        """The bundles named in ``specs`` that the caller may run: those it uploaded (an
        admin: every one) that are still on disk. One round trip to Redis for them all; none
        for a submit of functions only."""
        wanted = sorted(
            {s.bundle_id for s in specs if KIND_NAMES.get(s.kind) == "BUNDLE" and s.bundle_id}
        )
        wanted = [b for b in wanted if self._blob_exists(b)]
        if not wanted or identity.is_admin:
            return set(wanted)
        pipe = self.state.redis.pipeline(transaction=False)
        for bundle_id in wanted:
            pipe.sismember(keys.bundle_uploaders_key(bundle_id), identity.subject)
        return {b for b, mine in zip(wanted, pipe.execute(), strict=True) if mine}

    def _validate(
        self, identity: Identity, index: int, spec: pb.TaskSpec, bundles: set[str]
    ) -> NewTask:
        where = f"task {index}"
        settings = self.state.settings
        kind = KIND_NAMES.get(spec.kind)
        payload: dict[str, Any] = {}
        if kind == "BUNDLE":
            if spec.bundle_id not in bundles:
                raise BundleNotFound(
                    f"{where}: no bundle {spec.bundle_id!r} uploaded by you; upload it first"
                )
            payload["bundle_id"] = spec.bundle_id
        elif kind == "FUNCTION":
            if split_function_name(spec.function) is None:
                raise SpecError(f"{where}: function must look like module:function")
            refusal = self._function_refusal(spec.function)
            if refusal:
                raise FunctionRefused(f"{where}: {refusal}")
            args_json = spec.args_json or "[]"
            if len(args_json) > settings.max_task_data_size:
                raise SpecError(f"{where}: arguments are over MAX_TASK_DATA_SIZE")
            try:
                args = json.loads(args_json)
            except ValueError as exc:
                raise SpecError(f"{where}: args_json is not JSON: {exc}") from None
            if not isinstance(args, list):
                raise SpecError(f"{where}: args_json must be a JSON array")
            payload.update(function=spec.function, args_json=args_json)
        else:
            raise SpecError(f"{where}: kind must be BUNDLE or FUNCTION")
        timeout = spec.timeout or settings.task_timeout
        if not 0 < timeout <= MAX_TIMEOUT:
            raise SpecError(f"{where}: timeout must be between 0 and {MAX_TIMEOUT:.0f} s")
        retries = settings.default_retries if spec.retries < 0 else spec.retries
        if retries > MAX_RETRIES:
            raise SpecError(f"{where}: retries must be at most {MAX_RETRIES}")
        req = spec.requirements
        if req.cpu < 0 or req.memory_mb < 0 or req.gpu < 0:
            raise SpecError(f"{where}: requirements cannot be negative")
        for label in req.labels:
            if not LABEL.match(label):
                raise SpecError(f"{where}: label {label!r} is not a plain word")
        if len(spec.name) > 200:
            raise SpecError(f"{where}: name is over 200 characters")
        return NewTask(
            owner=identity.subject,
            name=spec.name or spec.function or "bundle",
            kind=kind,
            spec=payload,
            timeout=timeout,
            retries=retries,
            priority=spec.priority,
            req_cpu=req.cpu,
            req_memory_mb=req.memory_mb,
            req_gpu=req.gpu,
            req_labels=tuple(sorted(set(req.labels))),
        )

    def _function_refusal(self, function: str) -> str:
        """Why no worker would run ``function`` ("" when one may), judged once per reading of
        the live workers' allow lists."""
        refusal, fresh = self._judged(function, refresh=False)
        if refusal and not fresh:
            # A refusal is rare and final for the caller: judge it again on a fresh reading,
            # so that a worker that registered a moment ago counts.
            refusal, _ = self._judged(function, refresh=True)
        return refusal

    def _judged(self, function: str, refresh: bool) -> tuple[str, bool]:
        read_at, allow_lists, judged = self._allow_view
        fresh = refresh or time.monotonic() - read_at > tuning.ALLOW_LISTS_TTL
        if fresh:
            allow_lists, judged = self.state.worker_records.live_allow_lists(), {}
            self._allow_view = (time.monotonic(), allow_lists, judged)
        elif function in judged:
            return judged[function], False
        refusal = function_refusal(function, allow_lists)
        if len(judged) < tuning.ALLOW_JUDGED_MAX:
            judged[function] = refusal
        return refusal, fresh

    def _blob_exists(self, bundle_id: str) -> bool:
        try:
            return self.state.blobs.exists("bundles", bundle_id)
        except HivemindError:  # a malformed id
            return False

    # -- reading -----------------------------------------------------------------------------
    def _records(self, task_ids: list[str], with_history: bool = True) -> list[Found | None]:
        """Each task's hash (and history) in one round trip; the archive for expired ones."""
        pipe = self.state.redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(keys.task_key(task_id))
            if with_history:
                pipe.lrange(keys.task_history_key(task_id), 0, -1)
        replies = pipe.execute()
        step = 2 if with_history else 1
        found: list[Found | None] = []
        for i, task_id in enumerate(task_ids):
            record = replies[step * i]
            if record:
                history = replies[step * i + 1] if with_history else []
                found.append((record, [json.loads(h) for h in history]))
            else:
                archived = self.state.users.archived_task(task_id)
                if archived is not None and not with_history:
                    archived = (archived[0], [])
                found.append(archived)
        return found

    def _visible_many(
        self,
        identity: Identity,
        task_ids: list[str],
        context: grpc.ServicerContext,
        with_history: bool = True,
    ) -> list[Found]:
        visible = []
        found_all = self._records(task_ids, with_history)
        for task_id, found in zip(task_ids, found_all, strict=True):
            # Someone else's task is reported as missing, so ids of others cannot be probed.
            if not task_id or found is None or not _may_see(identity, found[0]):
                context.abort(grpc.StatusCode.NOT_FOUND, f"no task {task_id!r}")
            visible.append(found)
        return visible

    def _resolve(
        self, identity: Identity, task_id: str, context: grpc.ServicerContext
    ) -> tuple[str, Found]:
        """The caller's task, by its id or by a unique prefix of it (as git takes commits):
        its full id and its record."""
        found = self._records([task_id])[0] if task_id else None
        if found is None or not _may_see(identity, found[0]):
            full_id = self._by_prefix(identity, task_id, context)
            found = self._records([full_id])[0] if full_id != task_id else None
            # Someone else's task is reported as missing, so ids of others cannot be probed.
            if found is None or not _may_see(identity, found[0]):
                context.abort(grpc.StatusCode.NOT_FOUND, f"no task {task_id!r}")
            task_id = full_id
        return task_id, found

    def _visible(self, identity: Identity, task_id: str, context: grpc.ServicerContext) -> Found:
        return self._resolve(identity, task_id, context)[1]

    def _by_prefix(self, identity: Identity, prefix: str, context: grpc.ServicerContext) -> str:
        """The one id among the caller's tasks (an admin's: everyone's) that starts with
        ``prefix``; NOT_FOUND for none, INVALID_ARGUMENT naming the candidates for several."""
        if not TASK_ID_PREFIX.match(prefix):
            return prefix  # too short or odd to be a prefix: reported as no such task
        owner = None if identity.is_admin else identity.subject
        index = keys.TASKS_ALL if owner is None else keys.owner_tasks_key(owner)
        matches = {
            task_id
            for task_id, _score in self.state.redis.zscan_iter(
                index, match=f"{prefix}*", count=tuning.TASK_PREFIX_SCAN_COUNT
            )
        }
        matches.update(
            self.state.users.archived_ids_with_prefix(prefix, owner, PREFIX_CANDIDATES + 1)
        )
        if len(matches) == 1:
            return matches.pop()
        if not matches:
            return prefix
        shown = sorted(matches)[:PREFIX_CANDIDATES]
        more = f" and {len(matches) - len(shown)} more" if len(matches) > len(shown) else ""
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"task id {prefix!r} is ambiguous: it starts {len(matches)} tasks "
            f"({', '.join(shown)}{more}); give more of the id",
        )
        raise AssertionError("unreachable")  # context.abort raises

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.Task:
        identity = self.state.require_user(context)
        return task_message(*self._visible(identity, request.task_id, context))

    def ListTasks(self, request: pb.ListTasksRequest, context: grpc.ServicerContext) -> pb.TaskList:
        identity = self.state.require_user(context)
        if request.all_users and not identity.is_admin:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only an admin lists all users' tasks")
        if request.status and request.status not in TaskState.__members__:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown status {request.status!r}")
        limit = request.limit or 100
        owner = None if request.all_users else identity.subject
        index = keys.TASKS_ALL if owner is None else keys.owner_tasks_key(owner)
        records: dict[str, dict[str, str]] = {}
        # Live tasks from Redis, newest first, then the archive for what has expired.
        start = 0
        # Without a status filter nearly every id is a hit: read only as many as are shown.
        batch = 4 * limit if request.status else limit
        while len(records) < limit:
            ids = self.state.redis.zrevrange(index, start, start + batch - 1)
            if not ids:
                break
            start += len(ids)
            pipe = self.state.redis.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(keys.task_key(task_id))
            gone = []
            for task_id, record in zip(ids, pipe.execute(), strict=True):
                if not record:
                    gone.append(task_id)
                elif not request.status or record.get("status") == request.status:
                    records[task_id] = record
            if gone:
                self.state.redis.zrem(index, *gone)
        if len(records) < limit:
            for record in self.state.users.archived_tasks(owner, request.status, limit):
                records.setdefault(record["id"], record)
        ordered = sorted(records.values(), key=lambda r: float(r.get("created_at") or 0))
        return pb.TaskList(tasks=[task_message(r) for r in reversed(ordered[-limit:])])

    def CancelTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.Task:
        identity = self.state.require_user(context)
        task_id, _found = self._resolve(identity, request.task_id, context)
        ok, detail = self.state.tasks.cancel(task_id)
        if not ok:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, detail)
        if detail == "CANCELLED":  # was queued; a running one ends when its worker reports
            self.state.metrics.tasks_finished.labels("CANCELLED").inc()
        self.state.finished.notify([task_id])
        return task_message(*self._visible(identity, task_id, context))

    def WaitTasks(self, request: pb.WaitRequest, context: grpc.ServicerContext) -> pb.TaskList:
        identity = self.state.require_user(context)
        ids = list(request.task_ids)
        seen = self.state.finished.generation
        records = self._ended_records(identity, ids, context)
        first = request.first_completed
        self._await_finished(identity, ids, records, seen, request.timeout, context, first)
        if first:
            ended = [
                i
                for i in dict.fromkeys(ids)
                if i in records and is_terminal(records[i][0].get("status", ""))
            ]
            return pb.TaskList(tasks=[task_message(*records[i]) for i in ended])
        return pb.TaskList(tasks=[task_message(*records[i]) for i in ids])

    def _ended_records(
        self, identity: Identity, task_ids: list[str], context: grpc.ServicerContext
    ) -> dict[str, Found]:
        """The records of the tasks that have ended (refusing tasks the caller may not see).

        A batch's waiter asks for a thousand tasks at a time, most still running: of those
        only the owner is read. Tasks that ended in this process lately come from memory.
        Histories are left out: a waiter wants outcomes; `GetTask` has the whole story.
        """
        known = self.state.finished.records(task_ids)
        for task_id, record in known.items():
            if not _may_see(identity, record):
                context.abort(grpc.StatusCode.NOT_FOUND, f"no task {task_id!r}")
        unknown = [i for i in task_ids if i not in known]
        owner = None if identity.is_admin else identity.subject
        ended, foreign = self.state.tasks.ended_among(unknown, owner)
        if foreign:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no task {foreign[0]!r}")
        records: dict[str, Found] = {i: (r, []) for i, r in known.items()}
        found = self._visible_many(identity, ended, context, False)
        records.update(zip(ended, found, strict=True))
        return records

    def _await_finished(
        self,
        identity: Identity,
        ids: list[str],
        records: dict[str, Found],
        seen: int,
        timeout: float,
        context: grpc.ServicerContext,
        first_completed: bool = False,
    ) -> None:
        """Fill ``records`` with every task of ``ids`` once all have finished (with
        ``first_completed``, once one has), or as they are when ``timeout`` passes.

        ``records`` holds what was read at finished-generation ``seen``; a task missing from
        it, or not terminal there, is waited for.
        """
        deadline = time.monotonic() + max(0.0, min(timeout, tuning.TASK_WAIT_MAX))
        finished = self.state.finished
        pending = {
            i for i in ids if i not in records or not is_terminal(records[i][0].get("status", ""))
        }
        distinct = len(set(ids))  # ids may repeat: one has ended once fewer are pending
        last_full_read = time.monotonic()
        while pending:
            seen, changed = finished.since(seen)
            # Re-read only what may have ended and came without its hash; everything once a
            # second, for changes made by other processes (a restored backup, the doctor's fixes).
            if changed is None or time.monotonic() - last_full_read >= 1.0:
                # Statuses first: a batch's waiter has a thousand tasks, most still running.
                check, _foreign = self.state.tasks.ended_among(list(pending), None)
                last_full_read = time.monotonic()
            else:
                check = []
                for task_id in pending & changed.keys():
                    record = changed[task_id]
                    if record is not None and _may_see(identity, record):
                        records[task_id] = (record, [])
                        pending.discard(task_id)
                    else:  # unknown, or not the caller's: read it (and refuse it) as usual
                        check.append(task_id)
            if check:
                fresh = self._visible_many(identity, check, context, False)
                for task_id, found in zip(check, fresh, strict=True):
                    if is_terminal(found[0].get("status", "")):
                        records[task_id] = found
                        pending.discard(task_id)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0 or not context.is_active():
                break
            if first_completed and len(pending) < distinct:
                return  # the rest are not replied
            finished.wait(seen, min(remaining, 1.0))
        if first_completed:
            return
        if pending:  # the time is up: these are replied as they are now
            check = list(pending)
            fresh = self._visible_many(identity, check, context, False)
            records.update(zip(check, fresh, strict=True))

    def StreamLog(
        self, request: pb.LogRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LogChunk]:
        identity = self.state.require_user(context)
        task_id, _found = self._resolve(identity, request.task_id, context)
        index = max(0, request.offset)
        log_key = keys.task_log_key(task_id)
        while context.is_active():
            seen = self.state.logs.generation
            pipe = self.state.redis.pipeline(transaction=False)
            pipe.lrange(log_key, index, -1)
            pipe.hget(keys.task_key(task_id), "status")
            chunks, status = pipe.execute()
            if status is None and not chunks:
                # Expired from Redis: the archived log on disk has it all.
                text = self.state.blobs.read_log(task_id) or ""
                for i, piece in enumerate(text.splitlines(keepends=True)[index:]):
                    yield pb.LogChunk(index=index + i, text=piece)
                return
            for chunk in chunks:
                yield pb.LogChunk(index=index, text=chunk)
                index += 1
            if not request.follow or (status is not None and is_terminal(status)):
                if not chunks:
                    return
                continue
            self.state.logs.wait(seen, 1.0)

    def FetchResult(
        self, request: pb.TaskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DataChunk]:
        identity = self.state.require_user(context)
        task_id, (record, _) = self._resolve(identity, request.task_id, context)
        if record.get("has_result_archive") != "1":
            context.abort(grpc.StatusCode.NOT_FOUND, "this task has no result archive")
        blob_id = f"{task_id}-{record.get('attempt', '0')}"
        if not self.state.blobs.exists("results", blob_id):
            context.abort(grpc.StatusCode.DATA_LOSS, "the result archive is missing on disk")
        for chunk in self.state.blobs.read_chunks("results", blob_id):
            yield pb.DataChunk(data=chunk)

    # -- the cluster at a glance -------------------------------------------------------------
    def GetStats(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ClusterStats:
        self.state.identify(context)
        now = time.time()
        this_minute = int(now // 60)
        minutes = range(this_minute - tuning.STATS_MINUTES + 1, this_minute + 1)
        pipe = self.state.redis.pipeline(transaction=False)
        pipe.llen(keys.TASK_QUEUE)
        pipe.zcard(keys.LEASES)
        pipe.hgetall(keys.STATS_FINISHED)
        for minute in minutes:
            pipe.hgetall(keys.stats_minute_key(minute))
        queued, running, totals, *per_minute = pipe.execute()
        return pb.ClusterStats(
            at=now,
            queued=queued,
            running=running,
            finished_total={status: int(n) for status, n in totals.items()},
            finished_per_minute=[sum(int(n) for n in m.values()) for m in per_minute],
        )


def function_refusal(function: str, allow_lists: dict[str, tuple[str, ...] | None]) -> str:
    """Why no worker would run ``function`` ("" when one may): every live worker says what it
    allows (``allow_lists``, node id -> modules, None for a worker that does not say) and none
    allows its module; or its module, found here without being imported, has no such name."""
    module, attribute = split_function_name(function) or ("", "")
    known = [allowed for allowed in allow_lists.values() if allowed is not None]
    # No live worker, or one that does not say: the task may yet find a worker; queue it.
    everyone_says = bool(known) and len(known) == len(allow_lists)
    if everyone_says and not any(module_allowed(module, allowed) for allowed in known):
        offered = sorted({name for allowed in known for name in allowed})
        return (
            f"no live worker runs functions of module {module!r}: the {len(known)} live "
            f"worker(s) allow {', '.join(offered) or 'none'}; start one with "
            f"`hivemind worker --allow {module}`"
        )
    return missing_function(module, attribute) or ""


def _may_see(identity: Identity, record: dict[str, str]) -> bool:
    return record.get("owner") == identity.subject or identity.is_admin
