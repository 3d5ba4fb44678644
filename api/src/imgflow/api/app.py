"""The FastAPI application: connections at start-up, the routes, and the background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from imgflow.api import openapi, problems
from imgflow.api.background import reconciler, webhook_sender
from imgflow.api.bodylimit import BoundedBodies
from imgflow.api.deps import AppState, key_cache
from imgflow.api.middleware import Observe
from imgflow.api.pools import feed_redis, request_redis, webhook_redis
from imgflow.api.ratelimit import RateLimiter
from imgflow.api.routes import router
from imgflow.api.signed_urls import UrlSigner
from imgflow.core.backends import Backends
from imgflow.core.endpoints import EndpointStore
from imgflow.core.events import ChangeFeed
from imgflow.core.keys import KeyStore
from imgflow.core.probe import configure_libvips
from imgflow.core.queue import ensure_group
from imgflow.core.readiness import Readiness, prepare_storage
from imgflow.core.settings import AuthMode, Settings, get_settings
from imgflow.core.tenant_secrets import TenantSecrets
from imgflow.core.watermarks import WatermarkStore

log = logging.getLogger("imgflow.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_libvips()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backends = Backends.open(settings, redis=request_redis(settings))
        db, redis = backends.db, backends.redis
        keys = KeyStore(db)
        state = AppState(
            settings=settings,
            mongo=backends.mongo,
            store=backends.store,
            storage=backends.storage,
            broker=backends.broker,
            redis=redis,
            webhook_redis=webhook_redis(settings),
            feed=ChangeFeed(feed_redis(settings), settings),
            readiness=Readiness(settings, "imgflow-api-ready", log),
            keys=keys,
            endpoints=EndpointStore(db),
            tenant_secrets=TenantSecrets(db),
            signer=UrlSigner(settings, TenantSecrets(db, "url_secrets"), backends.storage),
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
            asyncio.create_task(reconciler.reconcile_forever(state)),
            asyncio.create_task(webhook_sender.send_forever(state)),
            asyncio.create_task(state.feed.run()),
            # Both storage clients are made now, in the background: the first upload does not pay
            # for making them, and a storage that does not answer delays no start (the startup
            # probe's budget). /readyz asks the storage through its own.
            asyncio.create_task(prepare_storage(state.storage, log)),
            asyncio.create_task(state.readiness.prepare()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.webhook_redis.aclose()
            await state.feed.aclose()
            await state.readiness.aclose()
            await backends.aclose()

    app = FastAPI(
        title="imgflow",
        version="0.1.0",
        summary="Asynchronous image processing: upload, get a job id, fetch the thumbnail.",
        lifespan=lifespan,
    )
    problems.install(app)
    openapi.install(app, settings)
    app.add_middleware(BoundedBodies, settings=settings)
    app.add_middleware(Observe)  # added last, runs first: it sees BoundedBodies' answers too
    app.include_router(router)

    return app
