"""The webhook sender, run by every API replica (one consumer group shares the deliveries); each
attempt is recorded for ``GET .../jobs/{jobId}/deliveries``. See imgflow.core.webhooks for the
contract."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from typing import Any

from redis.exceptions import ResponseError

from imgflow.api.deps import AppState
from imgflow.api.expiring import Expiring
from imgflow.api.schemas import JobView
from imgflow.core.endpoints import Endpoint
from imgflow.core.fetch import FetchError, FetchFailed, post_checked
from imgflow.core.jobs import Job, utcnow
from imgflow.core.queue import create_group
from imgflow.core.retries import take_due
from imgflow.core.webhooks import (
    CALLBACK,
    FANOUT,
    SENDERS,
    Attempt,
    file_delivery,
    message_id,
    outstanding,
    record_attempt,
    sign,
    webhook_retry_key,
    webhooks_key,
)

log = logging.getLogger("imgflow.api.webhooks")
BLOCK_MS = 2000
RECLAIM_IDLE_MS = 60_000
BATCH = 100  # deliveries sent at once by one replica
ENDPOINTS_TTL_S = 2.0


async def send_forever(state: AppState) -> None:
    """Deliver filed webhooks; retry failures on the configured schedule; never give up the loop."""
    redis, settings = state.webhook_redis, state.settings
    consumer = f"api-{uuid.uuid4().hex[:8]}"
    # each tenant's endpoints, trusted for 2 s: one lookup per tenant, not per job
    endpoints: Expiring[list[Endpoint]] = Expiring(state.endpoints.of_tenant, ENDPOINTS_TTL_S)
    loop = asyncio.get_running_loop()
    ready, last_reclaim = False, loop.time()
    while True:
        try:
            if not ready:
                await create_group(redis, webhooks_key(settings), SENDERS)
                ready = True
            for member in await take_due(redis, webhook_retry_key(settings), time.time(), BATCH):
                due = json.loads(member)
                target = due.get("target", CALLBACK)
                await file_delivery(redis, settings, due["job_id"], due["type"], due["attempt"], target)
            entries: list[Any] = []
            if loop.time() - last_reclaim > RECLAIM_IDLE_MS / 6000:  # every 10 s: a dead sender's
                last_reclaim = loop.time()
                _, claimed, _ = await redis.xautoclaim(
                    webhooks_key(settings), SENDERS, consumer, RECLAIM_IDLE_MS, count=BATCH
                )
                entries += claimed or []
            fresh: Any = await redis.xreadgroup(
                SENDERS, consumer, {webhooks_key(settings): ">"}, count=BATCH, block=BLOCK_MS
            )
            entries += [entry for _, batch in fresh or [] for entry in batch]
            await asyncio.gather(
                *(_handle(state, endpoints, entry_id, fields) for entry_id, fields in entries)
            )
        except asyncio.CancelledError:
            raise
        except ResponseError as exc:
            ready = "NOGROUP" not in str(exc)  # Redis lost the group: create it again
            log.warning("webhook sender round failed: %s", exc)
            await asyncio.sleep(1)
        except Exception:
            log.warning("webhook sender round failed; retrying", exc_info=True)
            await asyncio.sleep(1)


async def _handle(
    state: AppState, endpoints: Expiring[list[Endpoint]], entry_id: bytes, fields: dict[bytes, bytes]
) -> None:
    """One stream entry: a finished job fanned out to its targets, or one more attempt of one."""
    redis, settings = state.webhook_redis, state.settings
    job_id, event_type = fields[b"job_id"].decode(), fields[b"type"].decode()
    attempt = int(fields.get(b"attempt", b"0"))
    target = fields.get(b"target", CALLBACK.encode()).decode()
    # a finished job does not change: its snapshot (set after the write that finished it) will do
    job = await state.store.view(job_id)
    if target == FANOUT:
        targets = []
        if job is not None:
            if job.callback_url and settings.webhook_secret:
                targets.append(CALLBACK)
            targets += [e.endpoint_id for e in await endpoints.get(job.tenant) if event_type in e.events]
        # the fan-out's own count becomes one per target
        await outstanding(redis, settings, job_id, len(targets) - 1)
        for each in targets:
            await _deliver(state, job, job_id, event_type, 0, each)
    else:
        await _deliver(state, job, job_id, event_type, attempt, target)
    await redis.xack(webhooks_key(settings), SENDERS, entry_id)
    await redis.xdel(webhooks_key(settings), entry_id)


async def _destination(state: AppState, job: Job, target: str) -> tuple[str, str] | None:
    """Where a target's deliveries go and the secret they are signed with; None if it is gone."""
    if target == CALLBACK:
        secret = state.settings.webhook_secret
        return (job.callback_url, secret) if job.callback_url and secret else None
    endpoint = await state.endpoints.get(target)
    if endpoint is None or endpoint.tenant != job.tenant:
        return None
    return endpoint.url, endpoint.secret


async def _deliver(
    state: AppState, job: Job | None, job_id: str, event_type: str, attempt: int, target: str
) -> None:
    """One attempt to one target; then the next is scheduled, or the delivery is over."""
    redis, settings = state.webhook_redis, state.settings
    destination = await _destination(state, job, target) if job is not None else None
    if job is None or destination is None:  # the job expired, the endpoint was deleted
        await outstanding(redis, settings, job_id, -1)
        return
    url, secret = destination
    body = json.dumps(
        {
            "type": event_type,
            "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
            "data": JobView.of(job).model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    ).encode()
    msg_id, now = message_id(job_id, event_type), int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, msg_id, now, body),
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
    at = utcnow().isoformat().replace("+00:00", "Z")
    await record_attempt(redis, settings, job_id, Attempt(at, attempt + 1, status, error, delivered, target))
    delays = settings.webhook_retry_delays
    if not delivered and retry and attempt < len(delays):
        delay = delays[attempt] * random.uniform(0.8, 1.2)
        member = json.dumps({"job_id": job_id, "type": event_type, "attempt": attempt + 1, "target": target})
        await redis.zadd(webhook_retry_key(settings), {member: time.time() + delay})
        return
    if not delivered:
        log.warning(
            "webhook %s of job %s to %s not delivered after %d attempts",
            event_type,
            job_id,
            target,
            attempt + 1,
        )
    await outstanding(redis, settings, job_id, -1)
