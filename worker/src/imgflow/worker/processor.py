"""One job, start to finish: claim it, make the thumbnail, store it, record the outcome.

A job ends ``completed`` or ``failed`` with a readable error, or ``cancelled`` when its
cancellation was asked for: that is looked at between steps (when the lease is taken, after a URL
source is fetched, between one output and the next, and in the round trip that records the job
completed: imgflow.core.lifecycle.complete), one Redis read each. The message is acknowledged only
once the job's outcome is stored: by the transition that ends the job (``Held``), else by the
caller when this returns. An exception from here means MongoDB, Redis or storage failed, not the
image: the message then stays pending and is delivered again.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import anyio
import pyvips
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from imgflow.core import jobkeys, lifecycle, logs
from imgflow.core.facts import SourceFacts
from imgflow.core.fetch import FetchFailed, FetchRefused, fetch_to_file
from imgflow.core.jobs import (
    Job,
    JobResult,
    JobStatus,
    UploadSource,
    UrlSource,
    VariantResult,
    output_key,
    utcnow,
)
from imgflow.core.outputs import ThumbnailSpec, as_made, refusal
from imgflow.core.probe import ImageInfo, ImageTooLarge, UnsupportedImage, probe_buffer
from imgflow.core.settings import Settings
from imgflow.core.storage import NotFound, Storage
from imgflow.core.store import JobStore
from imgflow.core.watermarks import watermark_key
from imgflow.worker import metrics
from imgflow.worker.memory import MB, MemoryBudget, OverBudget, job_memory_bytes
from imgflow.worker.pipeline import Thumbnail, make_thumbnails

log = logging.getLogger("imgflow.worker")


class BadSource(Exception):
    """The source is unusable: the job fails with this message, and retrying will not help."""


class CancelAsked(Exception):
    """The job's cancellation was asked for while its outputs were being made."""


class PassingFailure(Exception):
    """It did not work now, for a reason that may pass (a URL source timing out or answering 5xx,
    storage unreachable): the job is tried again after the next delay of ``retry_delays_s``."""


class Processor:
    """Runs jobs; has what imgflow.core.lifecycle's transitions use (settings, store, redis,
    storage)."""

    def __init__(self, settings: Settings, store: JobStore, storage: Storage, redis: Redis) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.redis = redis
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

    async def restore(self, job_id: str, carried: Job | None) -> Job | None:
        """A message whose job has no record: the database lost it (a crash took back the write
        behind a 202), unless the job was deleted on purpose. Retention deletes a job
        ``retention_s`` after it finished, so a job created less recently was lost: its record is
        inserted again from the message's copy, ``pending``, and returned to be run; with its
        original gone too it is recorded failed, saying why. Never dropped without a trace: each
        case is logged as a warning and counted."""
        recent = carried is not None and carried.created_at > utcnow() - timedelta(
            seconds=self.settings.retention_s
        )
        if carried is None or not recent:
            log.warning(
                "job %s has no record and its message %s; dropping the message",
                job_id,
                "no copy of it (an older publisher's)" if carried is None else "is older than retention",
            )
            metrics.RESTORED.labels("dropped").inc()
            return None
        # storage unreachable raises here, before anything is written: the message comes again
        original = not isinstance(carried.source, UploadSource) or await self._stored(carried.source.key)
        try:
            job = await lifecycle.restore(self, carried)
        except DuplicateKeyError:  # restored meanwhile by a worker holding a duplicate message
            return await self.store.get(job_id)
        if not original:
            log.warning("job %s had no record and its original is gone: recorded failed", job_id)
            metrics.RESTORED.labels("failed").inc()
            await self._fail(
                job, "The database lost this job's record and its original is gone: submit the image again."
            )
            return None
        log.warning("job %s had no record (the database lost it): restored from its message", job_id)
        metrics.RESTORED.labels("restored").inc()
        return job

    async def _stored(self, key: str) -> bool:
        try:
            await self.storage.stat(key)
        except NotFound:
            return False
        return True

    async def refuse(self, job: Job) -> None:
        """The job's options break the rules every path checks now (an earlier API let one
        through): fail it once, with why, as no retry could make it."""
        await self._fail(job, f"Invalid options, resubmit the job with valid ones: {job.invalid}")

    async def stop(self, job: Job, held: lifecycle.Held | None = None) -> None:
        """The job's cancellation was asked for: ``cancelled`` now, its outputs removed."""
        if await lifecycle.stop_cancelled(self, job, held=held):
            _cancelled()

    async def _stopped(self, job: Job, held: lifecycle.Held) -> bool:
        """Whether the job's cancellation was asked for; if so it is stopped here."""
        if not await jobkeys.cancel_requested(self.redis, self.settings, job.job_id):
            return False
        await self.stop(job, held)
        return True

    async def process(self, admitted: Job, held: lifecycle.Held) -> None:
        """Run the job its worker ``held`` (the lease, the message) and record how it ended."""
        logs.bind(jobId=admitted.job_id, tenant=admitted.tenant)
        job = await lifecycle.start(self, admitted, held.worker)
        if job is None:
            log.info("job %s is finished or unknown; dropping the message", admitted.job_id)
            return
        started = time.perf_counter()
        try:
            source = await self._source_bytes(job)
            # a fetch may take long; a stored original is read at once (the lease's look is fresh)
            if isinstance(job.source, UrlSource) and await self._stopped(job, held):
                return
            info = await anyio.to_thread.run_sync(self._probe, source)
            # an upload was checked at the door; a URL source is first seen here
            limits = self.settings.output_limits
            refused = refusal(job.outputs, info.format, info.displayed, info.pages, limits)
            if refused:
                raise BadSource(refused[1])
            specs = [as_made(spec, info.displayed) for spec in job.outputs]
            # Known before decoding: jobs wait until their memory fits beside the running ones.
            marks = await self._watermarks(job)
            async with self._memory.hold(
                job_memory_bytes(info, specs, len(source), quality=self.settings.jpeg_quality)
            ):
                thumbnails = await anyio.to_thread.run_sync(
                    self._thumbnails, source, info, job, specs, marks, limiter=self._limiter
                )
        except CancelAsked:
            await self.stop(job, held)
            return
        except OverBudget as exc:
            await self._fail(job, str(exc), held)
            return
        except BadSource as exc:
            await self._fail(job, str(exc), held)
            return
        except PassingFailure as exc:
            await self._retry_later(job, str(exc), "source")
            return
        made = []
        try:
            for index, (spec, thumbnail) in enumerate(zip(job.outputs, thumbnails, strict=True)):
                key = output_key(job.job_id, index, spec)
                await self.storage.save_bytes(key, thumbnail.data, thumbnail.format.media_type)
                made.append((spec.name, key, thumbnail))
        except Exception as exc:  # the backends raise OSError, PyMongoError, ...
            await self._retry_later(job, f"Could not store the thumbnail: {exc}", "storage")
            return
        _, first_key, first = made[0]
        result = JobResult(
            key=first_key,
            width=first.width,
            height=first.height,
            bytes=len(first.data),
            format=first.format,
            processed_at=utcnow(),
            variants=[
                VariantResult(
                    name=name,
                    key=key,
                    width=t.width,
                    height=t.height,
                    bytes=len(t.data),
                    format=t.format,
                    placeholder=t.placeholder,
                )
                for name, key, t in made
                if name is not None and job.variants
            ],
            placeholder=first.placeholder,
            source=SourceFacts.of(info),
        )
        done = await lifecycle.complete(self, job, result, held=held)
        if done is not None and done.status is JobStatus.cancelled:
            _cancelled()
        elif done is not None:
            log.info("job completed")
            metrics.FINISHED.labels("completed").inc()
            metrics.DURATION.observe((result.processed_at - job.created_at).total_seconds())
        metrics.PROCESSING.observe(time.perf_counter() - started)

    async def _source_bytes(self, job: Job) -> bytes:
        if isinstance(job.source, UrlSource):
            with tempfile.TemporaryDirectory(prefix="imgflow-fetch-") as tmp:
                dest = Path(tmp) / "source"
                try:
                    await fetch_to_file(job.source.url, dest, self.settings)
                except FetchFailed as exc:
                    raise (PassingFailure if exc.transient else BadSource)(str(exc)) from exc
                except FetchRefused as exc:
                    raise BadSource(str(exc)) from exc
                return await anyio.Path(dest).read_bytes()
        try:
            return await self.storage.read(job.source.key)
        except NotFound:
            raise BadSource("The uploaded original is gone from storage.") from None
        except Exception as exc:  # the backends raise OSError, PyMongoError, ...
            raise PassingFailure(f"Could not read the original from storage: {exc}") from exc

    async def _watermarks(self, job: Job) -> dict[str, bytes]:
        """The PNG of each watermark the job's outputs name (checked at the door; deleted since:
        the job fails)."""
        marks: dict[str, bytes] = {}
        for mark in {spec.watermark for spec in job.outputs if spec.watermark}:
            try:
                marks[mark] = await self.storage.read(watermark_key(mark))
            except NotFound:
                raise BadSource(f"The watermark {mark} was deleted after the job was accepted.") from None
            except Exception as exc:  # the backends raise OSError, PyMongoError, ...
                raise PassingFailure(f"Could not read the watermark from storage: {exc}") from exc
        return marks

    def _probe(self, data: bytes) -> ImageInfo:
        try:
            return probe_buffer(data, max_pixels=self.settings.max_pixels, max_side=self.settings.max_side)
        except (UnsupportedImage, ImageTooLarge) as exc:
            raise BadSource(str(exc)) from exc

    def _thumbnails(
        self, data: bytes, info: ImageInfo, job: Job, specs: list[ThumbnailSpec], marks: dict[str, bytes]
    ) -> list[Thumbnail]:
        try:
            s = self.settings
            return make_thumbnails(
                data,
                specs,
                max_pixels=s.max_pixels,
                max_side=s.max_side,
                quality=s.jpeg_quality,
                info=info,  # probed already (_probe): decoding is all that can fail here
                watermarks=marks,
                between=lambda: self._go_on(job),
            )
        except pyvips.Error as exc:
            raise BadSource(_vips_message(exc)) from exc

    def _go_on(self, job: Job) -> None:
        """In the thread making the outputs: raise CancelAsked if the job's cancellation was
        asked for."""
        if anyio.from_thread.run(jobkeys.cancel_requested, self.redis, self.settings, job.job_id):
            raise CancelAsked(job.job_id)

    async def _retry_later(self, job: Job, error: str, reason: str) -> None:
        if await lifecycle.retry_later(self, job, error) is JobStatus.failed:
            metrics.DEAD_LETTERS.inc()
            metrics.FINISHED.labels("failed").inc()
            metrics.DURATION.observe((utcnow() - job.created_at).total_seconds())
        else:
            metrics.RETRIES.labels(reason).inc()

    async def _fail(self, job: Job, error: str, held: lifecycle.Held | None = None) -> None:
        if await lifecycle.fail(self, job, error, held=held):
            log.info("job failed: %s", error)
            metrics.FINISHED.labels("failed").inc()
            metrics.DURATION.observe((utcnow() - job.created_at).total_seconds())


def _cancelled() -> None:
    log.info("job cancelled")
    metrics.FINISHED.labels("cancelled").inc()


def _vips_message(exc: pyvips.Error) -> str:
    """libvips' own words, minus its internal prefixes: 'The image could not be decoded: ...'."""
    lines = [line.strip() for line in str(exc.detail or exc.message).splitlines() if line.strip()]
    useful = [line.split(":", 1)[-1].strip() if line.startswith("Vips") else line for line in lines]
    return "The image could not be decoded: " + ("; ".join(dict.fromkeys(useful)) or "unknown libvips error")
