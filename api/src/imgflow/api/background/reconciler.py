"""The reconciler, run by every API replica, one at a time by a Redis lock per round: park the
stream's new entries in their tenants' lanes, republish jobs the queue lost, tidy the stream, and
delete expired jobs and orphaned files."""

from __future__ import annotations

import asyncio
import logging

from imgflow.api import metrics
from imgflow.api.deps import AppState
from imgflow.core import schedule
from imgflow.core.queue import tidy_queue
from imgflow.core.retention import Swept, sweep_expired, sweep_orphans
from imgflow.core.submit import requeue_lost

log = logging.getLogger("imgflow.api")


async def reconcile_forever(state: AppState) -> None:
    """Republish jobs the queue lost and tidy the stream; one API replica at a time, by a Redis
    lock per round. A walk over the waiting jobs runs at most every ``requeue_after_s / 2``: a job
    whose message is lost is published again within about 1.5x ``requeue_after_s``."""
    settings = state.settings
    lock = f"{settings.stream}:reconciler"
    loop = asyncio.get_running_loop()
    last_walk = -settings.requeue_after_s
    last_orphans = loop.time()  # not at start: a fresh replica need not list all storage at once
    while True:
        await asyncio.sleep(settings.reconcile_interval_s)
        try:
            if await state.redis.set(lock, "1", nx=True, ex=max(1, int(settings.reconcile_interval_s))):
                # with no worker taking, nothing else puts the waiting jobs in their tenant's lane,
                # where the metrics (imgflow.core.tenant_metrics) count them
                await schedule.park(state.redis, settings)
                if loop.time() - last_walk >= settings.requeue_after_s / 2:
                    last_walk = loop.time()
                    await requeue_lost(state.store, state.redis, settings)
                tidied = await tidy_queue(state.redis, settings)
                if tidied.consumers_removed:
                    log.info("removed %d consumer(s) of workers that are gone", tidied.consumers_removed)
                swept = await sweep_expired(state.store, state.storage, state.redis, settings)
                _count(swept, "expired")
                # listing all storage costs: at most four times per grace period
                if loop.time() - last_orphans >= settings.orphan_grace_s / 4:
                    last_orphans = loop.time()
                    _count(await sweep_orphans(state.store, state.storage, settings), "orphan")
        except Exception:  # a down Redis or MongoDB must not end the loop
            log.warning("reconciler round failed; retrying next round", exc_info=True)


def _count(swept: Swept, why: str) -> None:
    if swept.jobs or swept.objects:
        log.info("%s: deleted %d job(s), %d file(s), %d bytes", why, swept.jobs, swept.objects, swept.bytes)
    metrics.EXPIRED.inc(swept.jobs)
    metrics.DELETED_OBJECTS.labels(why).inc(swept.objects)
    metrics.DELETED_BYTES.labels(why).inc(swept.bytes)
