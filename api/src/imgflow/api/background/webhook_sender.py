"""The webhook sender, run by every API replica (one consumer group shares the deliveries); each
attempt is recorded for ``GET .../jobs/{jobId}/deliveries``. See imgflow.core.webhooks for the
contract.

Tenants are kept apart: each stream entry is handled in a task of its own, so the sender reads on
while earlier entries wait for slow receivers; a fan-out's targets are sent side by side; at most
``webhook_tenant_concurrency`` requests of one tenant and ``webhook_endpoint_concurrency`` to one
target are under way at once per replica, and an entry of a tenant that already has that many
deliveries in hand goes back to the retry schedule for DEFER_S (not counted as an attempt). So a
tenant whose endpoints never answer holds a bounded share of the sender, never the whole of it.

An entry stays pending (unacknowledged) while it is handled; the replica claims its entries in
hand again every REFRESH_S, so only a dead replica's entries become idle long enough
(``reclaim_idle_ms``) for another to take them over and send them again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from imgflow.api import metrics
from imgflow.api.deps import AppState
from imgflow.api.expiring import Expiring
from imgflow.api.routes.webhooks import EndpointView
from imgflow.api.schemas import JobView
from imgflow.core.endpoints import Endpoint
from imgflow.core.fetch import FetchError, FetchFailed, post_checked
from imgflow.core.jobs import Job, utcnow
from imgflow.core.logs import bind
from imgflow.core.queue import create_group
from imgflow.core.retries import take_due
from imgflow.core.settings import Settings
from imgflow.core.webhooks import (
    CALLBACK,
    ENDPOINT_DISABLED,
    FANOUT,
    SENDERS,
    Attempt,
    failures_key,
    file_delivery,
    file_endpoint_event,
    message_id,
    outstanding,
    record_attempt,
    sign,
    webhook_retry_key,
    webhooks_key,
)

log = logging.getLogger("imgflow.api.webhooks")
BLOCK_MS = 2000
IN_HAND = 200  # entries one replica holds at once (sending, or waiting for their turn)
REFRESH_S = 10.0  # how often a replica claims its entries in hand again
RECLAIM_EVERY_S = 10.0
DEFER_S = 1.0  # a busy tenant's entry comes back after this
ENDPOINTS_TTL_S = 2.0


def reclaim_idle_ms(settings: Settings) -> int:
    """Idle time after which another replica takes an entry over: above the refresh and above the
    longest attempt (a host name lookup, then the receiver's time to answer) with room to spare,
    so an entry whose replica is alive, however slow its receivers, is never sent twice."""
    longest_attempt_s = settings.dns_timeout_s + settings.webhook_timeout_s
    return int(1000 * max(60.0, 2 * (REFRESH_S + longest_attempt_s)))


class KeyedLimit:
    """At most ``limit`` holders per key at once; a key's semaphore lives while it has users."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._semaphores: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        semaphore, users = self._semaphores.get(key, (asyncio.Semaphore(self._limit), 0))
        self._semaphores[key] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._semaphores[key]
            if users == 1:
                del self._semaphores[key]
            else:
                self._semaphores[key] = (semaphore, users - 1)


class Sender:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.redis, self.settings = state.webhook_redis, state.settings
        self.stream = webhooks_key(self.settings)
        self.consumer = f"api-{uuid.uuid4().hex[:8]}"
        # each tenant's endpoints, trusted for 2 s: one lookup per tenant, not per job
        self.endpoints: Expiring[list[Endpoint]] = Expiring(state.endpoints.of_tenant, ENDPOINTS_TTL_S)
        self.in_hand: dict[bytes, asyncio.Task[None]] = {}
        self.load: Counter[str] = Counter()  # deliveries in hand per tenant
        self.tenant_limit = KeyedLimit(self.settings.webhook_tenant_concurrency)
        self.target_limit = KeyedLimit(self.settings.webhook_endpoint_concurrency)

    async def run(self) -> None:
        """Deliver filed webhooks; retry failures on the configured schedule; never give up the loop."""
        loop = asyncio.get_running_loop()
        ready, last_reclaim, last_refresh = False, loop.time(), loop.time()
        try:
            while True:
                try:
                    if not ready:
                        await create_group(self.redis, self.stream, SENDERS)
                        ready = True
                    await self._file_due_retries()
                    if loop.time() - last_refresh > REFRESH_S:
                        last_refresh = loop.time()
                        await self._refresh()
                    if loop.time() - last_reclaim > RECLAIM_EVERY_S:  # a dead sender's entries
                        last_reclaim = loop.time()
                        _, claimed, _ = await self.redis.xautoclaim(
                            self.stream, SENDERS, self.consumer, reclaim_idle_ms(self.settings), count=100
                        )
                        self._start(claimed or [])
                    room = IN_HAND - len(self.in_hand)
                    if room <= 0:
                        await asyncio.wait(
                            list(self.in_hand.values()),
                            timeout=BLOCK_MS / 1000,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        continue
                    fresh: Any = await self.redis.xreadgroup(
                        SENDERS, self.consumer, {self.stream: ">"}, count=room, block=BLOCK_MS
                    )
                    self._start([entry for _, batch in fresh or [] for entry in batch])
                except asyncio.CancelledError:
                    raise
                except ResponseError as exc:
                    ready = "NOGROUP" not in str(exc)  # Redis lost the group: create it again
                    log.warning("webhook sender round failed: %s", exc)
                    await asyncio.sleep(1)
                except Exception:
                    log.warning("webhook sender round failed; retrying", exc_info=True)
                    await asyncio.sleep(1)
        finally:
            for task in self.in_hand.values():
                task.cancel()

    async def _file_due_retries(self) -> None:
        for member in await take_due(self.redis, webhook_retry_key(self.settings), time.time(), 100):
            due = json.loads(member)
            target = due.get("target", CALLBACK)
            if "endpoint_id" in due:
                await file_endpoint_event(
                    self.redis, self.settings, due["endpoint_id"], due["type"], due["attempt"], target
                )
            else:
                await file_delivery(
                    self.redis, self.settings, due["job_id"], due["type"], due["attempt"], target
                )

    async def _refresh(self) -> None:
        """Claim the entries in hand again: their idle time starts over, no other replica takes them."""
        if self.in_hand:
            await self.redis.xclaim(self.stream, SENDERS, self.consumer, 0, list(self.in_hand), justid=True)

    def _start(self, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            if entry_id in self.in_hand:
                continue
            self.in_hand[entry_id] = asyncio.create_task(self._handle_once(entry_id, fields))

    async def _handle_once(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            await self._handle(entry_id, fields)
        except Exception:  # left pending: reclaimed once idle, by this replica or another
            log.warning("webhook delivery failed; it will be tried again", exc_info=True)
        finally:
            self.in_hand.pop(entry_id, None)

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """One stream entry: a finished job fanned out to its targets, or one more attempt of one
        (an endpoint's event: ``_endpoint_event``)."""
        redis, settings = self.redis, self.settings
        if b"endpoint_id" in fields:
            await self._endpoint_event(fields)
            await redis.xack(self.stream, SENDERS, entry_id)
            await redis.xdel(self.stream, entry_id)
            return
        job_id, event_type = fields[b"job_id"].decode(), fields[b"type"].decode()
        attempt = int(fields.get(b"attempt", b"0"))
        target = fields.get(b"target", CALLBACK.encode()).decode()
        # a finished job does not change: its snapshot (set after the write that finished it) will do
        job = await self.state.store.view(job_id)
        if job is not None:
            bind(jobId=job_id, tenant=job.tenant)  # this task's lines are about this job
        if job is not None and self.load[job.tenant] >= settings.webhook_tenant_concurrency:
            member = json.dumps({"job_id": job_id, "type": event_type, "attempt": attempt, "target": target})
            await redis.zadd(webhook_retry_key(settings), {member: time.time() + DEFER_S})
        elif target == FANOUT:
            targets = []
            if job is not None:
                if job.callback_url and settings.webhook_secret:
                    targets.append(CALLBACK)
                targets += [
                    e.endpoint_id
                    for e in await self.endpoints.get(job.tenant)
                    if event_type in e.events and e.disabled_at is None
                ]
            # the fan-out's own count becomes one per target
            await outstanding(redis, settings, job_id, len(targets) - 1)
            await asyncio.gather(*(self._deliver(job, job_id, event_type, 0, each) for each in targets))
        else:
            await self._deliver(job, job_id, event_type, attempt, target)
        await redis.xack(self.stream, SENDERS, entry_id)
        await redis.xdel(self.stream, entry_id)

    async def _endpoint_event(self, fields: dict[bytes, bytes]) -> None:
        """An event about an endpoint, sent to its tenant's other endpoints that subscribed to it
        (those enabled when it is fanned out), with the same limits, signing and retries as a
        job's; nothing if the endpoint was deleted since."""
        endpoint_id, event_type = fields[b"endpoint_id"].decode(), fields[b"type"].decode()
        attempt, target = int(fields.get(b"attempt", b"0")), fields[b"target"].decode()
        subject = await self.state.endpoints.get(endpoint_id)
        if subject is None:
            return
        bind(tenant=subject.tenant)
        if target != FANOUT:
            await self._send_endpoint_event(subject, event_type, attempt, target)
            return
        targets = [
            e.endpoint_id
            for e in await self.state.endpoints.of_tenant(subject.tenant)
            if e.endpoint_id != endpoint_id and event_type in e.events and e.disabled_at is None
        ]
        await asyncio.gather(*(self._send_endpoint_event(subject, event_type, 0, each) for each in targets))

    async def _send_endpoint_event(
        self, subject: Endpoint, event_type: str, attempt: int, target: str
    ) -> None:
        endpoint = await self.state.endpoints.get(target)
        if endpoint is None or endpoint.tenant != subject.tenant or endpoint.disabled_at is not None:
            return
        data = EndpointView.of(subject).model_dump(mode="json", by_alias=True, exclude_none=True)
        body = _body(event_type, subject.tenant, data)
        async with self.target_limit.hold(target), self.tenant_limit.hold(subject.tenant):
            sent = await self._post(
                endpoint.url, [endpoint.secret], message_id(subject.endpoint_id, event_type), body
            )
        retry = {"endpoint_id": subject.endpoint_id, "type": event_type, "target": target}
        if not await self._afterwards(subject.tenant, target, sent, attempt, retry) and not sent.delivered:
            log.warning(
                "webhook %s of endpoint %s to %s not delivered", event_type, subject.endpoint_id, target
            )

    async def _destination(self, job: Job, target: str) -> tuple[str, list[str]] | None:
        """Where a target's deliveries go and the secrets they are signed with; None if it is gone."""
        if target == CALLBACK:
            if not job.callback_url or not self.settings.webhook_secret:
                return None
            secret = await self.state.tenant_secrets.current(job.tenant)
            return job.callback_url, secret.signing(utcnow())
        endpoint = await self.state.endpoints.get(target)
        if endpoint is None or endpoint.tenant != job.tenant or endpoint.disabled_at is not None:
            return None
        return endpoint.url, [endpoint.secret]

    async def _deliver(
        self, job: Job | None, job_id: str, event_type: str, attempt: int, target: str
    ) -> None:
        """One attempt to one target, in its tenant's and its target's turn; then the next is
        scheduled, or the delivery is over."""
        if job is None:  # the job expired
            await outstanding(self.redis, self.settings, job_id, -1)
            return
        self.load[job.tenant] += 1
        try:
            turn = target if target != CALLBACK else f"{job.tenant} {job.callback_url}"
            async with self.target_limit.hold(turn), self.tenant_limit.hold(job.tenant):
                await self._attempt(job, event_type, attempt, target)
        finally:
            self.load[job.tenant] -= 1
            if self.load[job.tenant] <= 0:
                del self.load[job.tenant]

    async def _attempt(self, job: Job, event_type: str, attempt: int, target: str) -> None:
        redis, settings, job_id = self.redis, self.settings, job.job_id
        destination = await self._destination(job, target)
        if destination is None:  # the endpoint was deleted or disabled
            await outstanding(redis, settings, job_id, -1)
            return
        url, secrets = destination
        signed = await self.state.signer.sign(job, settings.url_base)  # a path without IMGFLOW_URL_BASE
        data = JobView.of(job, signed).model_dump(mode="json", by_alias=True, exclude_none=True)
        sent = await self._post(
            url, secrets, message_id(job_id, event_type), _body(event_type, job.tenant, data)
        )
        at = utcnow().isoformat().replace("+00:00", "Z")
        await record_attempt(
            redis, settings, job_id, Attempt(at, attempt + 1, sent.status, sent.error, sent.delivered, target)
        )
        retry = {"job_id": job_id, "type": event_type, "target": target}
        if await self._afterwards(job.tenant, target, sent, attempt, retry):
            return
        if not sent.delivered:
            log.warning(
                "webhook %s of job %s to %s not delivered after %d attempts",
                event_type,
                job_id,
                target,
                attempt + 1,
            )
        await outstanding(redis, settings, job_id, -1)

    async def _post(self, url: str, secrets: list[str], msg_id: str, body: bytes) -> Sent:
        """One signed POST; what came of it."""
        settings, now = self.settings, int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": " ".join(sign(secret, msg_id, now, body) for secret in secrets),
        }
        status: int | None = None
        error: str | None = None
        retry = True
        try:
            status = await post_checked(url, body, headers, settings, timeout_s=settings.webhook_timeout_s)
        except FetchFailed as exc:
            error, retry = str(exc), exc.transient
        except FetchError as exc:  # refused now (the name points inside since): no retry helps
            error, retry = str(exc), False
        delivered = status is not None and 200 <= status < 300
        if status is not None and not delivered:
            error = f"{url} answered HTTP {status}."
        return Sent(status, error, delivered, retry)

    async def _afterwards(
        self, tenant: str, target: str, sent: Sent, attempt: int, retry: dict[str, str]
    ) -> bool:
        """After an attempt: count it (an endpoint's failures in a row too), and schedule the next
        if it failed and may be tried again; whether one is scheduled."""
        retry_allowed = sent.retry
        if target != CALLBACK and await self._count_failure(tenant, target, failed=not sent.delivered):
            retry_allowed = False  # it was disabled: no more tries
        delays = self.settings.webhook_retry_delays
        again = not sent.delivered and retry_allowed and attempt < len(delays)
        outcome = "delivered" if sent.delivered else "failed" if again else "given_up"
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        if again:
            delay = delays[attempt] * random.uniform(0.8, 1.2)
            member = json.dumps({**retry, "attempt": attempt + 1})
            await self.redis.zadd(webhook_retry_key(self.settings), {member: time.time() + delay})
        return again

    async def _count_failure(self, tenant: str, endpoint_id: str, *, failed: bool) -> bool:
        """Count the endpoint's failed attempts in a row (a success starts over); at
        ``webhook_disable_after`` it is disabled. Whether it is now disabled."""
        key = failures_key(self.settings)
        if not failed:
            await self.redis.hdel(key, endpoint_id)
            return False
        in_a_row = await self.redis.hincrby(key, endpoint_id, 1)
        limit = self.settings.webhook_disable_after
        if in_a_row < limit:
            return False
        reason = f"{in_a_row} attempts in a row failed"
        if await self.state.endpoints.disable(endpoint_id, reason):
            log.warning("webhook endpoint %s of tenant %s disabled: %s", endpoint_id, tenant, reason)
            await file_endpoint_event(self.redis, self.settings, endpoint_id, ENDPOINT_DISABLED)
        await self.redis.hdel(key, endpoint_id)
        self.endpoints.forget(tenant)
        return True


@dataclass(frozen=True)
class Sent:
    """What came of one POST."""

    status: int | None  # None: no answer
    error: str | None
    delivered: bool
    retry: bool  # whether another attempt may help


def _body(event_type: str, tenant: str, data: dict[str, Any]) -> bytes:
    timestamp = utcnow().isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": timestamp, "tenant": tenant, "data": data}).encode()


async def send_forever(state: AppState) -> None:
    await Sender(state).run()
