"""One home for a job's life (imgflow.core.lifecycle): each transition writes exactly its MongoDB
fields and its Redis keys, in one MongoDB write and one Redis pipeline (plus, for a change to a
stored job, the snapshot's drop before the write), on the real servers; and no other module writes
a job's status or the keys that go with it (a scan of the sources).
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from redis.asyncio import Connection, ConnectionPool, Redis

from imgflow.core import jobkeys, lifecycle, quota
from imgflow.core.errors import QueueUnavailable
from imgflow.core.jobkeys import lease_key
from imgflow.core.jobs import Job, JobResult, JobStatus, UploadSource, original_key, output_key, utcnow
from imgflow.core.outputs import OutputFormat
from imgflow.core.queue import create_group, entries_key, inflight_key, worker_key
from imgflow.core.retention import job_keys
from imgflow.core.retries import retry_key
from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.snapshots import Snapshots
from imgflow.core.storage import NotFound, Storage, make_storage
from imgflow.core.store import Document, JobStore
from imgflow.harness import images

ROOT = Path(__file__).resolve().parents[1]
WORKER = "worker-1"
WRITES = {"insert", "update", "findAndModify", "delete"}


class RoundTrips(Connection):
    """A Redis connection that counts what it sends: a command, a pipeline or a script is one."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        await super().send_packed_command(command, check_health)


class JobCommands(monitoring.CommandListener):
    """The commands sent about the jobs collection, by name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command.get(event.command_name) == "jobs":
            self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@dataclass
class Parts:
    settings: Settings
    store: JobStore
    redis: Redis
    storage: Storage
    db: Any
    commands: JobCommands

    async def redis_state(self) -> dict[str, Any]:
        """Every key of this test's stream prefix with its content."""
        state: dict[str, Any] = {}
        async for raw in self.redis.scan_iter(match=f"{self.settings.stream}*"):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            kind = await self.redis.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "string":
                state[key] = await self.redis.get(key)
            elif kind == "hash":
                state[key] = await self.redis.hgetall(key)
            elif kind == "zset":
                state[key] = await self.redis.zrange(key, 0, -1)
            elif kind == "stream":
                state[key] = await self.redis.xrange(key)
            elif kind == "set":
                state[key] = await self.redis.smembers(key)
            else:
                state[key] = await self.redis.lrange(key, 0, -1)
        return state

    async def document(self, job_id: str) -> Document:
        return await self.db["jobs"].find_one({"_id": job_id}) or {}

    @contextlib.asynccontextmanager
    async def writes(self, job_id: str) -> AsyncIterator[Written]:
        """What the block wrote: Redis keys (by name, the prefix and the job id replaced), the
        job's fields, the MongoDB commands and the Redis round trips."""
        keys_before, doc_before = await self.redis_state(), await self.document(job_id)
        self.commands.names.clear()
        RoundTrips.sent = 0
        written = Written()
        yield written
        written.round_trips, written.commands = RoundTrips.sent, list(self.commands.names)
        keys_after, doc_after = await self.redis_state(), await self.document(job_id)
        changed = {
            k for k in keys_before.keys() | keys_after.keys() if keys_before.get(k) != keys_after.get(k)
        }
        written.keys = {
            "stream"
            if k == self.settings.stream
            else k.removeprefix(self.settings.stream + ":").replace(job_id, "<id>")
            for k in changed
        }
        written.fields = {
            f for f in doc_before.keys() | doc_after.keys() if doc_before.get(f) != doc_after.get(f)
        }


@dataclass
class Written:
    keys: set[str] | None = None
    fields: set[str] | None = None
    commands: list[str] | None = None
    round_trips: int = 0


@pytest.fixture
async def parts(fresh_settings: Settings, tmp_path: Path) -> AsyncIterator[Parts]:
    settings = fresh_settings.model_copy(
        update={
            "storage_backend": StorageBackend.local,
            "storage_dir": tmp_path / "stored",
            "retry_delays_s": "30",  # one retry, then the dead letters
            "tenant_max_unfinished": 5,
        }
    )
    commands = JobCommands()
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongodb_url, tz_aware=True, event_listeners=[commands]
    )
    pool = ConnectionPool.from_url(settings.redis_url, connection_class=RoundTrips)
    redis = Redis(connection_pool=pool)
    db = mongo[settings.mongodb_database]
    await redis.ping()  # the connection's own set-up is not a transition's
    await db["jobs"].find_one({})
    store = JobStore(db, Snapshots(redis, settings))
    try:
        yield Parts(settings, store, redis, make_storage(settings, db), db, commands)
    finally:
        await redis.aclose()
        await mongo.close()


def new_job() -> Job:
    job_id = "0b6d" + "0" * 28
    return Job(
        job_id=job_id,
        user_id="alice",
        tenant="acme",
        source=UploadSource(key=original_key(job_id)),
        callback_url="https://example.com/hook",
    )


RESULT = JobResult(
    key="thumbnail", width=1, height=1, bytes=1, format=OutputFormat.jpeg, processed_at=utcnow()
)


async def test_each_transition_writes_its_fields_and_keys_in_one_round_trip(
    parts: Parts, tmp_path: Path
) -> None:
    b = parts
    original = tmp_path / "photo.jpg"
    original.write_bytes(images.jpeg(64, 48))
    job = new_job()

    async with b.writes(job.job_id) as w:
        await lifecycle.accept(b, job, original=original, media_type="image/jpeg", take_place=True)
    assert w.commands == ["insert"]
    assert w.keys == {"tenant:acme:unfinished", "job:<id>", "events:<id>", "stream", "entries"}
    assert w.round_trips == 2  # the place (it decides whether to go on), then the rest at once
    assert w.fields is not None and {"status", "tenant", "source"} <= w.fields
    assert (await b.storage.stat(original_key(job.job_id))).size == original.stat().st_size

    await create_group(b.redis, b.settings.stream, b.settings.consumer_group)
    read: Any = await b.redis.xreadgroup(b.settings.consumer_group, WORKER, {b.settings.stream: ">"}, count=1)
    message_id: bytes = read[0][1][0][0]

    async with b.writes(job.job_id) as w:
        started = await lifecycle.start(b, job, WORKER)
    assert started is not None and started.status is JobStatus.processing
    assert w.commands == ["findAndModify"]
    assert w.fields == {"status", "worker", "attempts", "updated_at"}
    assert w.keys == {"job:<id>", "events:<id>"}
    assert w.round_trips == 2  # the snapshot dropped before the write, set (and announced) after

    async with b.writes(job.job_id) as w:
        assert await lifecycle.retry_later(b, started, "timed out") is JobStatus.pending
    assert w.commands == ["findAndModify"]
    assert w.fields == {"status", "error", "retries", "next_attempt_at", "updated_at"}
    assert w.keys == {"job:<id>", "events:<id>", "retry"}
    assert w.round_trips == 2

    started = await lifecycle.start(b, (await b.store.get(job.job_id)) or job, WORKER)
    assert started is not None
    async with b.writes(job.job_id) as w:
        await lifecycle.give_back(b, WORKER, message_id)
    assert w.commands == ["find", "findAndModify"]  # read whose it is, then the one write
    assert w.fields == {"status", "attempts", "given_back", "updated_at"}
    assert w.keys == {"job:<id>", "events:<id>", "stream", "entries"}
    assert w.round_trips == 3  # the message read, the snapshot dropped, then the rest at once
    assert not await b.redis.xpending_range(
        b.settings.stream, b.settings.consumer_group, min="-", max="+", count=10, consumername=WORKER
    )

    started = await lifecycle.start(b, (await b.store.get(job.job_id)) or job, WORKER)
    assert started is not None and started.retries == 1
    async with b.writes(job.job_id) as w:
        assert await lifecycle.retry_later(b, started, "timed out again") is JobStatus.failed
    assert w.commands == ["findAndModify"]
    assert w.fields == {"status", "error", "expires_at", "updated_at"}
    assert w.keys == {
        "job:<id>",
        "events:<id>",
        "tenant:acme:unfinished",
        "webhooks",
        "webhooks:outstanding",
        "dead",
    }
    assert w.round_trips == 2
    assert await quota.count(b.redis, b.settings, "acme") == 0

    failed = await b.store.get(job.job_id)
    assert failed is not None
    async with b.writes(job.job_id) as w:
        revived = await lifecycle.revive(b, failed)
    assert revived is not None and revived.status is JobStatus.pending
    assert w.commands == ["findAndModify"]
    assert w.fields == {"status", "error", "retries", "updated_at"}
    assert w.keys == {"dead", "job:<id>", "events:<id>", "stream", "entries"}
    # the dead letters read and removed (one page), the snapshot dropped, then the rest at once
    assert w.round_trips == 4

    started = await lifecycle.start(b, revived, WORKER)
    assert started is not None
    async with b.writes(job.job_id) as w:
        done = await lifecycle.complete(b, started, RESULT)
    assert done is not None and done.status is JobStatus.completed
    assert w.commands == ["findAndModify"]
    assert w.fields == {"status", "result", "expires_at", "updated_at"}
    # no place held since the revive (an operator's retry takes none), so the cap's set is unchanged
    assert w.keys == {"job:<id>", "events:<id>", "webhooks", "webhooks:outstanding"}
    assert w.round_trips == 2

    async with b.writes(job.job_id) as w:
        await lifecycle.remove(b.store, b.redis, b.settings, job.job_id)
    assert w.commands == ["delete"]
    assert w.fields is not None and "status" in w.fields  # the whole document went
    assert w.keys == {"job:<id>", "events:<id>"}
    assert w.round_trips == 1

    async with b.writes(job.job_id) as w:
        restored = await lifecycle.restore(b, job)
    assert restored.status is JobStatus.pending
    assert w.commands == ["insert"]
    assert w.keys == {"job:<id>"}
    assert w.round_trips == 1


async def test_a_refused_message_leaves_nothing_accepted(parts: Parts, tmp_path: Path) -> None:
    b = parts
    original = tmp_path / "photo.jpg"
    original.write_bytes(images.jpeg(64, 48))
    job = new_job()
    # the stream's key holds something that is not a stream: Redis refuses the XADD
    await b.redis.set(b.settings.stream, "not a stream")
    with pytest.raises(QueueUnavailable):
        await lifecycle.accept(b, job, original=original, media_type="image/jpeg", take_place=True)
    assert await b.store.get(job.job_id) is None
    assert await Snapshots(b.redis, b.settings).get(job.job_id) is None
    assert await quota.count(b.redis, b.settings, "acme") == 0
    with pytest.raises(NotFound):
        await b.storage.stat(original_key(job.job_id))


async def test_cancel_writes_at_once_or_leaves_a_held_job_to_its_worker(parts: Parts, tmp_path: Path) -> None:
    b = parts
    original = tmp_path / "photo.jpg"
    original.write_bytes(images.jpeg(64, 48))
    job = new_job()
    await lifecycle.accept(b, job, original=original, media_type="image/jpeg", take_place=True)

    # a live worker holds it: only the mark, which that worker reads at its next step
    await b.redis.set(lease_key(b.settings, job.job_id), WORKER)
    await b.redis.set(worker_key(b.settings, WORKER), "{}", ex=60)
    async with b.writes(job.job_id) as w:
        asked = await lifecycle.cancel(b, job)
    assert asked is not None and asked.status is JobStatus.pending
    assert w.commands == [] and w.keys == {"cancel:<id>"} and w.round_trips == 1
    assert await jobkeys.cancel_requested(b.redis, b.settings, job.job_id)

    # its worker stops it: the same writes as a cancel at once
    started = await lifecycle.start(b, job, WORKER)
    assert started is not None
    await b.storage.save_bytes(output_key(job.job_id, 0, job.spec), b"made", "image/jpeg")
    async with b.writes(job.job_id) as w:
        stopped = await lifecycle.stop_cancelled(b, started)
    assert stopped is not None and stopped.status is JobStatus.cancelled
    assert w.commands == ["findAndModify"]
    assert w.fields == {"status", "expires_at", "updated_at"}
    assert w.keys == {"job:<id>", "events:<id>", "tenant:acme:unfinished", "webhooks", "webhooks:outstanding"}
    assert w.round_trips == 2  # the snapshot dropped, then the rest at once
    with pytest.raises(NotFound):
        await b.storage.stat(output_key(job.job_id, 0, job.spec))
    assert await b.storage.stat(original_key(job.job_id))  # kept until it expires (keep_originals)
    assert await quota.count(b.redis, b.settings, "acme") == 0

    # nothing more to cancel: no write, and a worker holding it again drops nothing of another's
    async with b.writes(job.job_id) as w:
        assert await lifecycle.stop_cancelled(b, started) is None
        await b.redis.delete(lease_key(b.settings, job.job_id))
        assert await lifecycle.cancel(b, stopped) is None
    assert w.commands == ["findAndModify", "findAndModify"] and w.fields == set()

    # nobody holds a job waiting for its retry: cancelled at once, its retry unscheduled
    waiting = new_job().model_copy(update={"job_id": "0b6e" + "0" * 28})
    await lifecycle.accept(b, waiting, take_place=True)
    started = await lifecycle.start(b, waiting, WORKER)
    assert started is not None
    await lifecycle.retry_later(b, started, "timed out")
    async with b.writes(waiting.job_id) as w:
        done = await lifecycle.cancel(b, started)
    assert done is not None and done.status is JobStatus.cancelled
    assert w.commands == ["findAndModify"]
    assert w.keys == {
        "cancel:<id>",
        "job:<id>",
        "events:<id>",
        "tenant:acme:unfinished",
        "retry",
        "webhooks",
        "webhooks:outstanding",
    }
    assert w.round_trips == 3  # the mark (and whether a worker holds it), the snapshot, the rest
    assert await b.redis.zscore(retry_key(b.settings), waiting.job_id) is None


async def test_reuse_completes_a_new_job_from_an_identical_finished_ones_outputs(
    parts: Parts, tmp_path: Path
) -> None:
    b = parts
    original = tmp_path / "photo.jpg"
    original.write_bytes(images.jpeg(64, 48))
    origin = new_job().model_copy(update={"reuse_key": "same-bytes-same-options"})
    await lifecycle.accept(b, origin, original=original, media_type="image/jpeg", take_place=True)
    started = await lifecycle.start(b, origin, WORKER)
    assert started is not None
    made = await lifecycle.complete(b, started, RESULT)
    assert made is not None and made.expires_at is not None
    offered = await b.store.offered("same-bytes-same-options")  # completing offered its outputs
    assert offered is not None and offered.job_id == origin.job_id and offered.reusable(utcnow())

    twin_id = "0b6f" + "0" * 28
    twin = new_job().model_copy(
        update={
            "job_id": twin_id,
            "source": UploadSource(key=original_key(twin_id)),
            "reuse_key": "same-bytes-same-options",
        }
    )
    # the twin expires after its origin would have
    later = replace(b, settings=b.settings.model_copy(update={"retention_s": 2 * b.settings.retention_s}))
    async with b.writes(twin_id) as w:
        done = await lifecycle.reuse(later, twin, offered)
    assert done is not None and done.status is JobStatus.completed and done.result is not None
    assert done.result.reused_from == origin.job_id and done.result.keys == RESULT.keys
    assert done.expires_at is not None
    assert done.attempts == 0 and done.worker is None
    # the origin kept until the twin expires, then the twin inserted finished
    assert w.commands == ["findAndModify", "insert"]
    assert w.keys == {
        f"job:{origin.job_id}",  # the origin's snapshot dropped: it changed
        "job:<id>",
        "events:<id>",
        "webhooks",
        "webhooks:outstanding",
    }
    assert w.round_trips == 2  # the origin's snapshot dropped before the write, then the rest at once
    assert await quota.count(b.redis, b.settings, "acme") == 0  # no place taken: it never waited

    # the retention sweep passes the origin by while the twin uses its files, and deletes neither
    # the files with the twin
    kept = await b.store.get(origin.job_id)
    assert kept is not None and kept.shared_until == done.expires_at
    after_origin = made.expires_at + timedelta(seconds=1)
    assert not {origin.job_id, twin_id} & {j.job_id for j in await b.store.expired(after_origin)}
    after_both = done.expires_at + timedelta(seconds=1)
    assert {origin.job_id, twin_id} <= {j.job_id for j in await b.store.expired(after_both)}
    assert job_keys(done) == [original_key(twin_id)]
    assert set(RESULT.keys) <= set(job_keys(kept))

    # an origin gone (or expired) meanwhile: nothing written, the caller accepts the job as usual
    await lifecycle.remove(b.store, b.redis, b.settings, origin.job_id)
    third = twin.model_copy(update={"job_id": "0b70" + "0" * 28})
    assert await lifecycle.reuse(b, third, offered) is None
    assert await b.store.get(third.job_id) is None


async def test_a_held_jobs_end_lets_go_of_its_message_and_reads_its_cancellation_last(
    parts: Parts, tmp_path: Path
) -> None:
    """The transition that ends a job a worker holds acknowledges its message and gives up its lease
    in its own pipeline; a cancellation asked for while the outputs were being stored ends the job
    cancelled instead of completed, with no output left."""
    b = parts
    s = b.settings
    original = tmp_path / "photo.jpg"
    original.write_bytes(images.jpeg(64, 48))
    await create_group(b.redis, s.stream, s.consumer_group)
    await b.redis.set(worker_key(s, WORKER), "{}", ex=60)  # the worker is alive
    for job_id, cancelled in (("0b71" + "0" * 28, False), ("0b72" + "0" * 28, True)):
        job = new_job().model_copy(
            update={"job_id": job_id, "source": UploadSource(key=original_key(job_id))}
        )
        await lifecycle.accept(b, job, original=original, media_type="image/jpeg", take_place=True)
        read: Any = await b.redis.xreadgroup(s.consumer_group, WORKER, {s.stream: ">"}, count=1)
        took = await jobkeys.take_lease(b.redis, s, job_id, WORKER, force=False)
        assert took is jobkeys.Took.taken
        assert await b.redis.sismember(inflight_key(s, WORKER), job_id)  # listed with the lease
        started = await lifecycle.start(b, job, WORKER)
        assert started is not None
        await b.storage.save_bytes(output_key(job_id, 0, job.spec), b"made", "image/jpeg")
        if cancelled:  # held by a live worker: only marked
            assert await lifecycle.cancel(b, started) is started
        held = lifecycle.Held(WORKER, read[0][1][0][0])
        async with b.writes(job_id) as w:
            done = await lifecycle.complete(b, started, RESULT, held=held)
        assert done is not None and held.released
        assert w.commands == ["findAndModify"]
        if cancelled:
            assert done.status is JobStatus.cancelled and "result" not in (w.fields or set())
            assert w.round_trips == 3  # the mark read, the snapshot again, then the rest at once
            with pytest.raises(NotFound):
                await b.storage.stat(output_key(job_id, 0, job.spec))
        else:
            assert done.status is JobStatus.completed and "result" in (w.fields or set())
            assert w.round_trips == 2  # the mark read with the snapshot's lapse, then the rest at once
            assert await b.storage.stat(output_key(job_id, 0, job.spec))
        assert not await b.redis.xpending_range(
            s.stream, s.consumer_group, min="-", max="+", count=10, consumername=WORKER
        )
        assert await b.redis.get(lease_key(s, job_id)) is None
        assert not await b.redis.sismember(inflight_key(s, WORKER), job_id)
        assert await b.redis.hget(entries_key(s), job_id) is None


# What only imgflow.core.lifecycle may use: the functions that write a job's side-effect keys ...
WRITERS = {
    "imgflow.core.quota": {"unfinished_key"},
    "imgflow.core.jobkeys": {
        "announce",
        "file_finished",
        "take_place",
        "free_places",
        "free_place",
        "publish",
        "requeue",
        "forget_entry",
        "put_snapshot",
        "forget_snapshots",
        "age_snapshot",
        "age_snapshots",
        "ask_cancel",
    },
    "imgflow.core.queue": {"entries_key"},
    "imgflow.core.retries": {"retry_key", "dead_letter_key", "remove_dead_letters", "take_due_retries"},
}
# ... a JobStore's writes, and a Snapshots' ...
STORE_WRITES = {
    "insert",
    "delete",
    "start",
    "complete",
    "fail",
    "wait_for_retry",
    "revive",
    "release",
    "cancel",
    "share",
    "offer",
}
SNAPSHOT_WRITES = {"put", "forget"}
# ... in these modules (where each is defined)
ALLOWED = {"imgflow.core.lifecycle", *WRITERS, "imgflow.core.store", "imgflow.core.snapshots"}
SOURCES = [ROOT / member / "src" for member in ("core", "api", "worker", "operator")]


def modules() -> Iterator[tuple[str, Path]]:
    for src in SOURCES:
        for path in sorted(src.rglob("*.py")):
            name = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
            yield name, path


def writes_outside_lifecycle(name: str, source: str) -> list[str]:
    """Where ``source`` (module ``name``) writes a job's status or side-effect keys itself."""
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name -> writer module
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in WRITERS:
                    aliases[alias.asname or alias.name] = full
                elif alias.name in WRITERS.get(node.module, ()):
                    found.append(f"line {node.lineno}: imports {full}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in WRITERS:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if module and node.attr in WRITERS[module]:
                found.append(f"line {node.lineno}: uses {module}.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value).lower()
            if node.func.attr in STORE_WRITES and receiver.endswith("store"):
                found.append(f"line {node.lineno}: {ast.unparse(node.func)}(...) writes a job")
            if node.func.attr in SNAPSHOT_WRITES and "snapshot" in receiver:
                found.append(f"line {node.lineno}: {ast.unparse(node.func)}(...) writes a snapshot")
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if "$set" in keys and "status" in ast.unparse(node):
                found.append(f"line {node.lineno}: sets a status in MongoDB")
    return found


def test_only_lifecycle_writes_a_jobs_status_and_its_keys() -> None:
    scanned = 0
    offenders = []
    for name, path in modules():
        scanned += 1
        if name in ALLOWED:
            continue
        offenders += [
            f"{path.relative_to(ROOT)} {w}" for w in writes_outside_lifecycle(name, path.read_text())
        ]
    assert scanned > 50
    assert not offenders, "\n".join(offenders)


def test_the_scan_sees_each_kind_of_write() -> None:
    writes = """
from imgflow.core import quota
from imgflow.core.jobkeys import announce
from imgflow.core.jobkeys import forget_entry
pipe.zrem(quota.unfinished_key(s, tenant), job_id)
await self.store.complete(job_id, result, expires_at=x)
await state.store.revive(job_id)
await self._snapshots.put(job)
await db.jobs.update_one({"_id": job_id}, {"$set": {"status": "failed"}})
"""
    found = writes_outside_lifecycle("imgflow.worker.processor", writes)
    assert len(found) == 7, found
    reads = """
from imgflow.core import quota
from imgflow.core.retries import dead_letters
n = await quota.count(redis, settings, tenant)
job = await self.store.get(job_id)
"""
    assert writes_outside_lifecycle("imgflow.api.routes.jobs", reads) == []
