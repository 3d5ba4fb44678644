"""The worker process: takes jobs from the stream by fair share (``imgflow.core.schedule``) and feeds
the ``Processor``; the FastStream app around it runs its life (start, graceful shutdown, /healthz).

Delivery is at-least-once: a message is acknowledged only after its job is recorded ``completed``
or ``failed``. ``worker_concurrency`` slots each take the next job ``schedule.take`` gives this
worker; one more loop takes over messages a dead worker left unacknowledged for ``claim_idle_ms``
(``schedule.reclaim``).

While it runs, the worker keeps its in-flight messages fresh (so nobody reclaims live work) and
publishes its in-flight count for the operator. On SIGTERM it stops taking, gives running jobs
``graceful_timeout_s`` to finish, then puts whatever it still holds back on the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faststream.redis.parser.binary import BinaryMessageFormatV1
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from imgflow.core import jobkeys, lifecycle, schedule
from imgflow.core.backends import Backends
from imgflow.core.jobs import Job, JobStatus
from imgflow.core.probe import configure_libvips
from imgflow.core.queue import (
    DATA,
    JobMessage,
    ensure_group,
    inflight_key,
    inflight_ttl_s,
    worker_key,
)
from imgflow.core.settings import Settings
from imgflow.core.tenant_metrics import TopTenants
from imgflow.worker import metrics
from imgflow.worker.gate import Gate
from imgflow.worker.processor import Processor

log = logging.getLogger("imgflow.worker")
HEARTBEAT_S = 2.0
# The record the operator costs the pod by goes out at once when the worker goes from idle to busy
# or back, but at most once per RECORD_GAP_S (the operator reads the records twice a second): a
# worker flipping between idle and busy on every short job would otherwise beat on every job.
RECORD_GAP_S = 0.5
RETRY_PUMP_S = 0.5
# An idle slot asks again after 10 ms, then twice as long each time up to 100 ms, one idle slot at
# a time: a new job waits at most that long on an idle service. (A blocking XREAD would wake it
# sooner, but the API's followers are told apart from workers by reading with XREAD.)
IDLE_POLL_S = (0.01, 0.1)
STOP_STEP_S = 3.0  # each step of a stop after the drain; see Worker.stop
START_RETRY_MAX_S = 10.0


def consumer_name() -> str:
    """Unique per process: a container restarted in its pod (after an OOM kill, say) must not pass
    for the one that died, or the attempt rule could not blame the image that killed it. The
    heartbeat names the pod, for the operator."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(self, settings: Settings) -> None:
        configure_libvips()
        self.settings = settings
        self.consumer = consumer_name()
        self.backends = Backends.open(settings, graceful_timeout=settings.graceful_timeout_s)
        self.redis, self.store, self.broker = self.backends.redis, self.backends.store, self.backends.broker
        self.processor = Processor(settings, self.store, self.backends.storage, self.redis)
        # message ids being handled (for XCLAIM and give-back) -> when their handling began
        self.inflight: dict[bytes, float] = {}
        self.running: set[str] = set()  # ids of the jobs being processed
        self.gate = Gate()
        self._idle = asyncio.Lock()  # held by the idle slot asking for work (_slot)
        self.top_tenants = TopTenants(settings, (metrics.COST_SERVED, metrics.WAITED))
        self.stopping = False
        self.restart = False  # set when the worker stops only to start again (its group vanished)
        # How the worker asks its server to shut down gracefully (__main__ sets the server's own;
        # a signal would be re-raised by uvicorn and end the process instead of restarting it).
        self.request_stop: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)
        self._heartbeat: asyncio.Task[None] | None = None
        # Set when the worker goes from idle to busy or back: the beat then goes out at once, so
        # the operator's deletion cost does not keep a scale-down choosing by a stale record.
        self._busy_changed = asyncio.Event()
        self._retries: asyncio.Task[None] | None = None
        # Set before the background loops are cancelled: a loop ends at its next turn even if a
        # client library turned the cancellation into an error its handler caught.
        self._closing = False
        self._takers: list[asyncio.Task[None]] = []  # the slots and the reclaiming loop
        self.group_lost = False  # a slot found the consumer group gone (Redis lost its data)

    async def _slot(self) -> None:
        """Take and handle jobs one after another until the worker stops. A slot done with a job
        asks for the next at once; idle slots wait for the next entry to arrive, asking one at a
        time (``_idle``): with several idle, the others would only hear "none" too."""
        while not self.stopping and not self.group_lost:
            taken = await self._take()
            pause = IDLE_POLL_S[0]
            while taken is None and not self.stopping and not self.group_lost:
                async with self._idle:
                    await asyncio.sleep(pause)
                    taken = await self._take()
                pause = min(pause * 2, IDLE_POLL_S[1])
            if taken is not None:
                await self._waited(taken)
                await self._handle_entry(taken, reclaimed=False)

    async def _take(self) -> schedule.Taken | None:
        """The next entry for this worker, or None (none now, or Redis failed: logged, and a
        second's wait); the consumer group gone sets ``group_lost``."""
        try:
            return await schedule.take(self.redis, self.settings, self.consumer)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                self.group_lost = True
                return None
            log.error("could not take a job: %s", exc)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            log.warning("could not take a job (Redis down?)", exc_info=True)
        await asyncio.sleep(1.0)
        return None

    async def _reclaim(self) -> None:
        """Take over, one at a time, the messages dead workers left unacknowledged."""
        while not self.stopping:
            try:
                found = await schedule.reclaim(self.redis, self.settings, self.consumer)
            except Exception:
                log.warning("could not reclaim messages (Redis down?)", exc_info=True)
                found = None
            if found is None:
                await asyncio.sleep(HEARTBEAT_S)
                continue
            metrics.RECLAIMED.inc()
            await self._handle_entry(found, reclaimed=True)

    async def _waited(self, taken: schedule.Taken) -> None:
        """Record how long the entry waited for a worker (its id is its queueing time, in ms)."""
        tenant = taken.fields.get(b"tenant", b"default").decode()
        queued_ms = int(taken.entry_id.split(b"-")[0])
        with contextlib.suppress(RedisError):  # the ranking is read again next time
            await self.top_tenants.refresh(self.redis)
        waited_s = max(0.0, time.time() - queued_ms / 1000)
        metrics.WAITED.labels(self.top_tenants.label(tenant)).observe(waited_s)

    async def _handle_entry(self, taken: schedule.Taken, *, reclaimed: bool) -> None:
        """Handle one entry; what goes wrong is logged and the entry left unacknowledged (it is
        reclaimed after this worker is gone, as a handler's error left it before)."""
        data = taken.fields.get(DATA)
        body: Any = None
        if data is not None:
            with contextlib.suppress(ValueError):
                body = json.loads(BinaryMessageFormatV1.parse(data)[0])
        try:
            await self.handle(body, taken.entry_id, reclaimed=reclaimed)
        except Exception:
            log.exception("could not handle message %r", taken.entry_id)

    async def _ack(self, entry_id: bytes) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.settings.stream, self.settings.consumer_group, entry_id)
            schedule.done(pipe, self.settings, [entry_id])
            await pipe.execute()

    async def handle(self, body: Any, entry_id: bytes, *, reclaimed: bool) -> None:
        try:
            message = JobMessage.model_validate(body)
        except ValidationError:
            log.error("dropping a message that is not a job (v1): %r", body)
            await self._ack(entry_id)
            return
        job_id = message.job_id
        if job_id in self.running:
            log.info("job %s is being processed here; dropping a duplicate message", job_id)
            await self._ack(entry_id)
            return
        # the lease, with the job listed among this worker's in flight
        took = await jobkeys.take_lease(self.redis, self.settings, job_id, self.consumer, force=reclaimed)
        if took is jobkeys.Took.held:
            log.info("job %s is held by a live worker; dropping a duplicate message", job_id)
            await self._ack(entry_id)
            return
        held = lifecycle.Held(self.consumer, entry_id)
        self.inflight[entry_id] = time.monotonic()
        if len(self.inflight) == 1:
            self._busy_changed.set()
        self.running.add(job_id)
        metrics.INFLIGHT.set(len(self.inflight))
        stored = False
        try:
            job = await self._admit(message, reclaimed)  # read under the lease: current
            if job is not None and took is jobkeys.Took.cancelling:
                await self.processor.stop(job, held)
                job = None
            if job is not None:
                async with self.gate.alone() if job.isolate else self.gate.shared():
                    await self.processor.process(job, held)
                metrics.COST_SERVED.labels(self.top_tenants.label(job.tenant)).inc(job.cost)
            stored = True  # the outcome is in MongoDB: the message may go
        finally:
            self.running.discard(job_id)
            self.inflight.pop(entry_id, None)
            if not self.inflight:
                self._busy_changed.set()
            metrics.INFLIGHT.set(len(self.inflight))
            if not held.released:  # no transition ended the job here, or its pipeline failed
                await self._let_go(job_id, held, acknowledge=stored)

    async def _let_go(self, job_id: str, held: lifecycle.Held, *, acknowledge: bool) -> None:
        """One round trip. Redis down: the message stays pending (delivered again, its job found
        finished), the lease expires by itself, and a finished job's stale entry record is never
        looked at (lost_jobs asks about unfinished jobs only)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                lifecycle.let_go(pipe, self.settings, job_id, held, acknowledge=acknowledge)
                await pipe.execute()
        except Exception:
            log.warning("job %s: could not let go of message %r", job_id, held.entry_id, exc_info=True)

    async def _admit(self, message: JobMessage, reclaimed: bool) -> Job | None:
        """The job to run for this message, with what its last worker's end says about it; None
        when there is nothing to run (finished, a duplicate, or failed here). A job with no record
        is restored from the message (``Processor.restore``).

        The attempt rule: a job is blamed for a worker's death only when that worker died while
        processing it and nothing else. Died holding other jobs too: nobody can tell which one
        killed it, so the job is not blamed but runs alone from now on, where blame is certain.
        """
        job_id = message.job_id
        job = await self.store.get(job_id) or await self.processor.restore(job_id, message.job)
        if job is None or job.status.finished:
            log.info("job %s is finished; dropping the message", job_id)
            return None
        if job.invalid:  # stored by an API that let an invalid option through: cannot be made
            await self.processor.refuse(job)
            return None
        previous = job.worker if job.status is JobStatus.processing else None
        if previous is not None and previous != self.consumer:
            # A reclaimed message's holder was silent for claim_idle_ms (a live one keeps its
            # messages fresh): it is gone. A fresh message for a job another worker is on is a
            # duplicate (republished) while that worker lives.
            if not reclaimed and await self.redis.exists(worker_key(self.settings, previous)):
                log.info("job %s is being processed by %s; dropping a duplicate message", job_id, previous)
                return None
            members = await self.redis.smembers(inflight_key(self.settings, previous))
            held = {m.decode() if isinstance(m, bytes) else m for m in members}
            if held == {job_id}:
                job = job.model_copy(update={"crashes": job.crashes + 1})
            else:
                job = job.model_copy(update={"isolate": True})
            log.warning(
                "job %s: its worker %s stopped holding %s", job_id, previous, sorted(held) or "unknown jobs"
            )
        if job.crashes >= self.settings.max_attempts:
            await self.processor.give_up(job)
            return None
        return job

    async def prepare(self) -> None:
        """Before the subscribers start: the consumer group must see jobs already waiting. A worker
        started while Redis is down waits for it (with backoff) instead of exiting."""
        delay = 0.5
        while True:
            try:
                await ensure_group(self.redis, self.settings)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("Redis is not reachable (%s); trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_RETRY_MAX_S)

    async def start(self) -> None:
        try:
            await self.store.ensure_indexes()
        except Exception:  # MongoDB down at start: jobs wait in the stream until it is back
            log.warning("could not create indexes now; continuing", exc_info=True)
        self._heartbeat = asyncio.create_task(self._beat())
        self._retries = asyncio.create_task(self._publish_due_retries())
        slots = [self._slot() for _ in range(self.settings.worker_concurrency)]
        self._takers = [asyncio.create_task(work) for work in (*slots, self._reclaim())]

    async def draining(self) -> None:
        """SIGTERM received: no slot takes another job (``stop`` waits for the running ones)."""
        self.stopping = True

    async def _beat(self) -> None:
        s = self.settings
        key = worker_key(s, self.consumer)
        pod = os.environ.get("POD_NAME") or socket.gethostname()
        next_full = 0.0
        while not self._closing:
            self._busy_changed.clear()
            now = time.monotonic()
            # only the record between two full beats: leases and claims need one per HEARTBEAT_S
            full = now >= next_full
            # the operator ranks pods for removal by how long their oldest job has run
            # (imgflow.operator.podcost)
            beat = {
                "pod": pod,
                "inflight": len(self.inflight),
                "running_s": int(now - min(self.inflight.values(), default=now)),
            }
            try:
                await self.redis.set(key, json.dumps(beat), ex=10)
                if full:
                    next_full = now + HEARTBEAT_S
                    await self._keep_holding()
            except Exception:
                log.warning("heartbeat failed (Redis down?)", exc_info=True)
            if self._closing:
                return
            if not self.stopping and self.group_lost:
                # The consumer group vanished with Redis's data. The worker drains and starts
                # again in place (see __main__), recreating the group; no supervisor needed.
                log.error("a subscriber stopped (consumer group gone?); restarting")
                self.stopping = self.restart = True
                self.request_stop()
            await asyncio.sleep(RECORD_GAP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._busy_changed.wait(), max(0.0, next_full - time.monotonic()))

    async def _keep_holding(self) -> None:
        """What a live worker renews each HEARTBEAT_S: its in-flight set, its jobs' leases, and its
        messages' idle time."""
        s = self.settings
        await self.redis.expire(inflight_key(s, self.consumer), inflight_ttl_s(s))
        await jobkeys.keep_leases(self.redis, s, set(self.running), self.consumer)
        if self.inflight:
            # XCLAIM to ourselves resets the idle time: a long job is not mistaken for a dead one
            await self.redis.xclaim(
                s.stream, s.consumer_group, self.consumer, 0, list(self.inflight), justid=True
            )

    async def _publish_due_retries(self) -> None:
        """Every worker publishes the retries that are due (each taken by one worker only)."""
        while not self._closing:
            await asyncio.sleep(RETRY_PUMP_S)
            try:
                await lifecycle.publish_due_retries(self.store, self.redis, self.settings)
            except Exception:
                log.warning("could not publish due retries (Redis down?)", exc_info=True)

    async def stop(self) -> None:
        """Stopping: give running jobs ``graceful_timeout_s``, return unfinished messages to the
        stream, then close. Each step after the drain has ``STOP_STEP_S``: what has not ended
        then (a task deaf to cancellation, a connection that does not close, a helper thread in a
        lookup) ends with the process, which must stop by itself within the pod's grace period."""
        self.stopping = True  # no slot takes another job
        stuck: list[str] = []
        if self._takers:
            _, late = await asyncio.wait(self._takers, timeout=self.settings.graceful_timeout_s)
            for task in late:
                task.cancel()
            stuck += await _within(asyncio.gather(*self._takers, return_exceptions=True), "job slots")
        self._closing = True
        for loop in (self._heartbeat, self._retries):
            if loop is not None:
                loop.cancel()
        loops = [t for t in (self._heartbeat, self._retries) if t is not None]
        if loops:
            stuck += await _within(
                asyncio.gather(*loops, return_exceptions=True), "background loops", watched=loops
            )
        stuck += await _within(self._leave(), "giving messages back")
        stuck += await _within(self.backends.aclose(), "closing connections")
        # asyncio.run waits without a limit for its executor's threads (a DNS lookup, say)
        stuck += await _within(asyncio.get_running_loop().shutdown_default_executor(), "helper threads")
        if stuck and not self.restart:
            log.warning(
                "stopping: %s did not end in %.0f s; ending the process", ", ".join(stuck), STOP_STEP_S
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(0)  # nothing is held any more: the messages are back on the stream

    async def _leave(self) -> None:
        try:
            returned = await self._give_back()
            if returned:
                log.info("returned %d unfinished message(s) to the stream", returned)
            await self.redis.delete(worker_key(self.settings, self.consumer))
        except Exception:
            log.warning("could not return unfinished messages; they will be reclaimed", exc_info=True)

    async def _give_back(self) -> int:
        s = self.settings
        pending = await self.redis.xpending_range(
            s.stream, s.consumer_group, min="-", max="+", count=1000, consumername=self.consumer
        )
        for entry in pending:
            await lifecycle.give_back(self.processor, self.consumer, entry["message_id"])
        return len(pending)


async def _within(step: Awaitable[Any], what: str, watched: Sequence[asyncio.Future[Any]] = ()) -> list[str]:
    """Await ``step`` for at most ``STOP_STEP_S``, without relying on it to heed cancellation;
    ``[what]`` (its stack, or the stacks of the ``watched`` tasks it waits for, logged) if it has
    not ended by then, else ``[]``."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=STOP_STEP_S)
    if done:
        return []
    stacks = [line for t in (watched or [task]) if not t.done() for line in _stack(t)]
    log.warning("stopping: %s still running: %s", what, "".join(stacks))
    return [what]


def _stack(task: asyncio.Future[Any]) -> list[str]:
    """Where ``task`` waits: its chain of awaits, innermost last (``Task.get_stack`` gives only
    the outermost frame of a suspended task)."""
    if not isinstance(task, asyncio.Task):
        return []
    lines: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(lines) < 40:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            lines.append(f"\n  {awaited!r}")
            break
        lines.append(f"\n  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return lines
