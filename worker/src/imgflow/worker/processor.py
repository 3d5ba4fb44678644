"""One job, start to finish: claim it, make the thumbnail, store it, record the outcome.

A job ends ``completed`` or ``failed`` with a readable error; the caller acknowledges the message
only when this returns. An exception from here means MongoDB, Redis or storage failed, not the
image: the message then stays pending and is delivered again.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import anyio
import pyvips

from imgflow.core.fetch import FetchFailed, FetchRefused, fetch_to_file
from imgflow.core.jobs import Job, JobResult, UrlSource, thumbnail_key, utcnow
from imgflow.core.probe import ImageInfo, ImageTooLarge, UnsupportedImage, probe_buffer
from imgflow.core.settings import Settings
from imgflow.core.storage import NotFound, Storage
from imgflow.core.store import JobStore
from imgflow.worker import metrics
from imgflow.worker.memory import MB, MemoryBudget, OverBudget, job_memory_bytes
from imgflow.worker.pipeline import Thumbnail, make_thumbnail

log = logging.getLogger("imgflow.worker")


class BadSource(Exception):
    """The source is unusable: the job fails with this message, and retrying will not help."""


class Processor:
    def __init__(self, settings: Settings, store: JobStore, storage: Storage) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        # libvips releases the GIL, so threads run pipelines truly in parallel.
        self._limiter = anyio.CapacityLimiter(settings.worker_concurrency)
        self._memory = MemoryBudget(settings.worker_memory_mb * MB)

    async def give_up(self, job: Job) -> None:
        """The job's image killed its worker ``max_attempts`` times: fail it instead of a fourth."""
        await self._fail(
            job,
            f"Gave up: the worker processing this image (and nothing else) stopped {job.crashes} times "
            "before finishing it.",
        )

    async def process(self, admitted: Job, worker: str) -> None:
        job = await self.store.start(admitted, worker)
        if job is None:
            log.info("job %s is finished or unknown; dropping the message", admitted.job_id)
            return
        started = time.perf_counter()
        try:
            source = await self._source_bytes(job)
            info = await anyio.to_thread.run_sync(self._probe, source)
            # Known before decoding: jobs wait until their memory fits beside the running ones.
            async with self._memory.hold(job_memory_bytes(info, job.spec, len(source))):
                thumbnail = await anyio.to_thread.run_sync(
                    self._thumbnail, source, info, job, limiter=self._limiter
                )
        except OverBudget as exc:
            await self._fail(job, str(exc))
            return
        except BadSource as exc:
            await self._fail(job, str(exc))
            return
        key = thumbnail_key(job.job_id, thumbnail.format)
        await self.storage.save_bytes(key, thumbnail.data, thumbnail.format.media_type)
        result = JobResult(
            key=key,
            width=thumbnail.width,
            height=thumbnail.height,
            bytes=len(thumbnail.data),
            format=thumbnail.format,
            processed_at=utcnow(),
        )
        if await self.store.complete(job.job_id, result):
            metrics.FINISHED.labels("completed").inc()
            metrics.DURATION.observe((result.processed_at - job.created_at).total_seconds())
        metrics.PROCESSING.observe(time.perf_counter() - started)

    async def _source_bytes(self, job: Job) -> bytes:
        if isinstance(job.source, UrlSource):
            with tempfile.TemporaryDirectory(prefix="imgflow-fetch-") as tmp:
                dest = Path(tmp) / "source"
                try:
                    await fetch_to_file(job.source.url, dest, self.settings)
                except (FetchRefused, FetchFailed) as exc:
                    raise BadSource(str(exc)) from exc
                return await anyio.Path(dest).read_bytes()
        try:
            return await self.storage.read(job.source.key)
        except NotFound:
            raise BadSource("The uploaded original is gone from storage.") from None

    def _probe(self, data: bytes) -> ImageInfo:
        try:
            return probe_buffer(data, max_pixels=self.settings.max_pixels, max_side=self.settings.max_side)
        except (UnsupportedImage, ImageTooLarge) as exc:
            raise BadSource(str(exc)) from exc

    def _thumbnail(self, data: bytes, info: ImageInfo, job: Job) -> Thumbnail:
        try:
            s = self.settings
            return make_thumbnail(
                data,
                job.spec,
                max_pixels=s.max_pixels,
                max_side=s.max_side,
                quality=s.jpeg_quality,
                info=info,
            )
        except (UnsupportedImage, ImageTooLarge) as exc:
            raise BadSource(str(exc)) from exc
        except pyvips.Error as exc:
            raise BadSource(_vips_message(exc)) from exc

    async def _fail(self, job: Job, error: str) -> None:
        log.info("job %s failed: %s", job.job_id, error)
        if await self.store.fail(job.job_id, error, crashes=job.crashes):
            metrics.FINISHED.labels("failed").inc()
            metrics.DURATION.observe((utcnow() - job.created_at).total_seconds())


def _vips_message(exc: pyvips.Error) -> str:
    """libvips' own words, minus its internal prefixes: 'The image could not be decoded: ...'."""
    lines = [line.strip() for line in str(exc.detail or exc.message).splitlines() if line.strip()]
    useful = [line.split(":", 1)[-1].strip() if line.startswith("Vips") else line for line in lines]
    return "The image could not be decoded: " + ("; ".join(dict.fromkeys(useful)) or "unknown libvips error")
