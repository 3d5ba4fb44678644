"""The FastAPI application: connections at start-up, routes, health, metrics, and the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from imgflow.api import (
    admin,
    endpoints_routes,
    keys_routes,
    metrics,
    problems,
    progress,
    watermarks_routes,
    webhooks,
)
from imgflow.api.auth import key_cache
from imgflow.api.bodylimit import BoundedBodies
from imgflow.api.middleware import Observe
from imgflow.api.pools import feed_redis, request_redis, webhook_redis
from imgflow.api.ratelimit import RateLimiter
from imgflow.api.readiness import Readiness
from imgflow.api.routes import router
from imgflow.api.state import AppState
from imgflow.core.endpoints import EndpointStore
from imgflow.core.events import ChangeFeed
from imgflow.core.keys import KeyStore
from imgflow.core.probe import configure_libvips
from imgflow.core.queue import ensure_group, make_broker, tidy_queue
from imgflow.core.retention import Swept, sweep_expired, sweep_orphans
from imgflow.core.settings import AuthMode, Settings, get_settings
from imgflow.core.snapshots import Snapshots
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.core.submit import requeue_lost
from imgflow.core.watermarks import WatermarkStore

log = logging.getLogger("imgflow.api")


async def _reconcile_forever(state: AppState) -> None:
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
                if loop.time() - last_walk >= settings.requeue_after_s / 2:
                    last_walk = loop.time()
                    await requeue_lost(state.store, state.broker, state.redis, settings)
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_libvips()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        mongo = connect(settings)
        db = mongo[settings.mongodb_database]
        redis = request_redis(settings)
        keys = KeyStore(db)
        state = AppState(
            settings=settings,
            mongo=mongo,
            store=JobStore(db, Snapshots(redis, settings)),
            storage=make_storage(settings, db),
            broker=make_broker(settings),
            redis=redis,
            webhook_redis=webhook_redis(settings),
            feed=ChangeFeed(feed_redis(settings), settings),
            readiness=Readiness(settings),
            keys=keys,
            endpoints=EndpointStore(db),
            watermarks=WatermarkStore(db),
            key_cache=key_cache(keys, settings.key_cache_s),
            limiter=RateLimiter(redis, settings.stream),
        )
        if settings.auth is AuthMode.off:
            log.warning(
                "IMGFLOW_AUTH=off: anyone who can reach this API can submit and read every job; "
                "use it on a trusted network only"
            )
        elif not settings.admin_key:
            log.info("no IMGFLOW_ADMIN_KEY: only keys already stored can call the API")
        try:
            await state.store.ensure_indexes()
            await keys.ensure_indexes()
            await state.endpoints.ensure_indexes()
            await state.watermarks.ensure_indexes()
        except Exception:
            log.warning("could not create indexes now (MongoDB down?); /readyz will say so", exc_info=True)
        try:
            await ensure_group(state.redis, settings)
        except Exception:
            log.warning("could not create the consumer group now (Redis down?)", exc_info=True)
        await state.broker.connect()
        app.state.imgflow = state
        tasks = [
            asyncio.create_task(_reconcile_forever(state)),
            asyncio.create_task(webhooks.send_forever(state)),
            asyncio.create_task(state.feed.run()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.broker.stop()
            await state.storage.aclose()
            await state.redis.aclose()
            await state.webhook_redis.aclose()
            await state.feed.aclose()
            await state.readiness.aclose()
            await mongo.close()

    app = FastAPI(
        title="imgflow",
        version="0.1.0",
        summary="Asynchronous image processing: upload, get a job id, fetch the thumbnail.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.add_middleware(BoundedBodies, settings=settings)
    app.add_middleware(Observe)  # added last, runs first: it sees BoundedBodies' answers too
    app.include_router(router)
    app.include_router(admin.router)
    app.include_router(keys_routes.router)
    app.include_router(endpoints_routes.router)
    app.include_router(watermarks_routes.router)
    app.include_router(progress.router)
    app.include_router(webhooks.router)

    @app.get("/healthz", tags=["operations"], operation_id="healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], operation_id="readyz", summary="MongoDB and Redis reachable")
    async def readyz() -> JSONResponse:
        state: AppState = app.state.imgflow
        checks = await state.readiness.checks()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
        )

    @app.get("/metrics", tags=["operations"], operation_id="metrics", summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
