"""Jobs in MongoDB, through PyMongo's native async API.

Every status change is an update by ``_id`` alone, the shape every MongoDB-wire server answers by
key (FerretDB on SQLite scans for anything more); the worker's lease on the job in Redis is what
keeps a repeated or late queue message from moving a finished job backwards (imgflow.core.jobkeys).
Only features FerretDB 1.x also has are used: plain indexes, find/sort/limit, findAndModify; no
transactions, TTL indexes or change streams.

Every write to a job waits until it is durable (``DURABLE``): the API answers 202, and a worker
acknowledges a message, only after a write that no single crash takes back.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.dbmetrics import CommandCounter
from imgflow.core.jobs import UNFINISHED, Job, JobResult, JobStatus, utcnow
from imgflow.core.settings import Settings
from imgflow.core.snapshots import Snapshots

Document = dict[str, Any]

# Acknowledged once a majority of the replica set has it in its journal (on a standalone mongod:
# in its journal). FerretDB accepts and ignores it: its PostgreSQL commits synchronously
# (imgflow.harness.ferretdb_pg), which is what a deployment on FerretDB must configure too.
DURABLE = WriteConcern(w="majority", j=True)


def connect(settings: Settings) -> AsyncMongoClient[Document]:
    # Short server selection keeps /readyz and submits honest when MongoDB is down.
    return AsyncMongoClient(
        settings.mongodb_url,
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        # a size on purpose: what a process may ask of the database at once (the API's requests,
        # a worker's jobs); waiting for a free one counts in the operation's time limit below
        maxPoolSize=settings.mongodb_pool_size,
        event_listeners=[CommandCounter()],
        # Each operation's limit goes to the server as maxTimeMS: a query whose client gave up
        # stops there too, instead of costing the database for minutes.
        timeoutMS=round(settings.mongodb_timeout_s * 1000),
    )


class InvalidCursor(ValueError):
    """A page cursor that this service did not hand out."""


@dataclass(frozen=True)
class PageCursor:
    """Where the next page starts: after this (created_at, job_id), newest first."""

    created_at: datetime
    job_id: str

    def encode(self) -> str:
        raw = json.dumps({"t": self.created_at.isoformat(), "id": self.job_id}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> PageCursor:
        # A cursor this service hands out is under 150 characters; a longer one is not ours, and
        # parsing it could cost (deeply nested JSON recurses).
        if len(token) > 512:
            raise InvalidCursor(token[:32])
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
            return cls(created_at=datetime.fromisoformat(data["t"]), job_id=str(data["id"]))
        except (binascii.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InvalidCursor(token) from exc


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: PageCursor | None


class JobStore:
    """Jobs in MongoDB. Each write is one command; what goes with it in Redis (the job's snapshot,
    its announcement, ...) is imgflow.core.lifecycle's, the only caller of the writes. With
    ``snapshots``, ``view`` answers clients' reads from the job's snapshot."""

    def __init__(self, db: AsyncDatabase[Document], snapshots: Snapshots | None = None) -> None:
        self._jobs: AsyncCollection[Document] = db.get_collection("jobs", write_concern=DURABLE)
        # reuse key -> the completed job whose outputs an identical job may reuse: a lookup by
        # _id, the one filter FerretDB answers from an index (imgflow.core.lifecycle.reuse)
        self._offers: AsyncCollection[Document] = db.get_collection("reusable", write_concern=DURABLE)
        self._snapshots = snapshots

    async def ensure_indexes(self) -> None:
        # a tenant's listings, then the same without the tenant for admin keys
        await self._jobs.create_index(
            [("tenant", ASCENDING), ("user_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
            name="tenant_user_newest",
        )
        await self._jobs.create_index(
            [
                ("tenant", ASCENDING),
                ("user_id", ASCENDING),
                ("status", ASCENDING),
                ("created_at", DESCENDING),
            ],
            name="tenant_user_status_newest",
        )
        await self._jobs.create_index(
            [("user_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)], name="user_newest"
        )
        await self._jobs.create_index(
            [("user_id", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING)],
            name="user_status_newest",
        )
        await self._jobs.create_index([("status", ASCENDING), ("updated_at", ASCENDING)], name="unfinished")
        await self._jobs.create_index([("image_job", ASCENDING)], name="image_job")
        await self._jobs.create_index([("expires_at", ASCENDING)], name="expiry")

    async def insert(self, job: Job) -> None:
        await self._jobs.insert_one(job.to_document())

    async def delete(self, job_id: str) -> None:
        await self._jobs.delete_one({"_id": job_id})

    async def get(self, job_id: str) -> Job | None:
        """The job as MongoDB has it: for decisions about it."""
        doc = await self._jobs.find_one({"_id": job_id})
        return Job.from_document(doc) if doc else None

    async def view(self, job_id: str) -> Job | None:
        """The job for a client to see: its snapshot when there is one, else MongoDB's."""
        if self._snapshots is None:
            return await self.get(job_id)
        job = await self._snapshots.get(job_id)
        if job is None:
            job = await self.get(job_id)
            if job is not None:
                await self._snapshots.fill(job)
        return job

    async def _change(self, job_id: str, fields: Document) -> Job | None:
        """Set ``fields`` (and ``updated_at``) on the job by ``_id``; the job after, or None if it is
        gone."""
        doc = await self._jobs.find_one_and_update(
            {"_id": job_id},
            {"$set": {**fields, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        return Job.from_document(doc) if doc else None

    async def list_for_user(
        self,
        user_id: str,
        *,
        tenant: str | None,
        status: JobStatus | None,
        limit: int,
        after: PageCursor | None,
        skip: int = 0,
    ) -> Page:
        """A user's jobs, newest first; of one tenant, or of all (``tenant=None``, admin). One
        query, after ``after`` or past the first ``skip`` (the caller bounds it)."""
        query: Document = {"user_id": user_id} if tenant is None else {"tenant": tenant, "user_id": user_id}
        if status is not None:
            query["status"] = status.value
        if after is not None:
            query["$or"] = [
                {"created_at": {"$lt": after.created_at}},
                {"created_at": after.created_at, "_id": {"$lt": after.job_id}},
            ]
        cursor = (
            self._jobs.find(query)
            .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
            .skip(skip)
            .limit(limit + 1)
        )
        jobs = [Job.from_document(doc) async for doc in cursor]
        more = len(jobs) > limit
        jobs = jobs[:limit]
        next_cursor = PageCursor(jobs[-1].created_at, jobs[-1].job_id) if more else None
        return Page(jobs=jobs, next_cursor=next_cursor)

    async def start(self, job: Job, worker: str) -> Job | None:
        """Mark the job ``processing`` by ``worker``, with the crash count and isolation decided
        for it; None if it is gone. The caller holds the job's lease (imgflow.core.jobkeys) and has
        read it unfinished: updates go by ``_id`` alone, which every server answers by key."""
        return await self._change(
            job.job_id,
            {
                "status": JobStatus.processing.value,
                "worker": worker,
                "crashes": job.crashes,
                "isolate": job.isolate,
                "attempts": job.attempts + 1,
                "next_attempt_at": None,
            },
        )

    async def complete(self, job_id: str, result: JobResult, *, expires_at: datetime) -> Job | None:
        return await self._change(
            job_id,
            {
                "status": JobStatus.completed.value,
                "result": result.model_dump(mode="python"),
                "expires_at": expires_at,
            },
        )

    async def fail(self, job_id: str, error: str, *, expires_at: datetime, crashes: int = 0) -> Job | None:
        return await self._change(
            job_id,
            {"status": JobStatus.failed.value, "error": error, "crashes": crashes, "expires_at": expires_at},
        )

    async def cancel(self, job_id: str, *, expires_at: datetime) -> Job | None:
        """``cancelled``, if it is still unfinished; None if it is finished or gone. The only write
        filtered on more than ``_id`` (FerretDB scans for it): the API cancels without the job's
        lease, so the status is checked in the same command; cancelling is rare."""
        doc = await self._jobs.find_one_and_update(
            {"_id": job_id, "status": {"$in": [s.value for s in UNFINISHED]}},
            {"$set": {"status": JobStatus.cancelled.value, "expires_at": expires_at, "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        return Job.from_document(doc) if doc else None

    async def expired(self, now: datetime, limit: int = 500) -> list[Job]:
        """Finished jobs whose retention has passed, oldest first; not those whose outputs a job
        that reused them still uses (``shared_until``)."""
        query = {
            "expires_at": {"$lt": now},
            "$or": [{"shared_until": None}, {"shared_until": {"$lt": now}}],
        }
        cursor = self._jobs.find(query).sort("expires_at", ASCENDING).limit(limit)
        return [Job.from_document(doc) async for doc in cursor]

    async def share(self, job_id: str, *, until: datetime) -> Job | None:
        """Keep the job and its files until at least ``until``: a job reusing its outputs expires
        then. The job after, or None if it is gone."""
        doc = await self._jobs.find_one_and_update(
            {"_id": job_id}, {"$max": {"shared_until": until}}, return_document=ReturnDocument.AFTER
        )
        return Job.from_document(doc) if doc else None

    async def offer(self, reuse_key: str, job_id: str) -> None:
        """A completed job's outputs, for later jobs with its reuse key."""
        await self._offers.replace_one({"_id": reuse_key}, {"job_id": job_id}, upsert=True)

    async def offered(self, reuse_key: str) -> Job | None:
        """The job last offered under ``reuse_key``, as MongoDB has it (two reads by ``_id``)."""
        offer = await self._offers.find_one({"_id": reuse_key})
        return await self.get(offer["job_id"]) if offer else None

    async def wait_for_retry(self, job: Job, error: str, next_attempt_at: datetime) -> Job | None:
        """The job failed for a passing reason: ``pending`` until ``next_attempt_at``, with why."""
        fields = {
            "status": JobStatus.pending.value,
            "error": error,
            "retries": job.retries + 1,
            "next_attempt_at": next_attempt_at,
        }
        return await self._change(job.job_id, fields)

    async def revive(self, job_id: str) -> Job | None:
        """A failed job an operator sends back (from the dead letters): ``pending``, retries reset.
        No worker writes a failed job, so the API may."""
        fields = {"status": JobStatus.pending.value, "error": None, "retries": 0, "next_attempt_at": None}
        return await self._change(job_id, fields)

    async def release(self, job: Job) -> Job | None:
        """A worker hands an unfinished job back: ``pending`` again, and the attempt not counted.
        ``job`` is as the worker last read it (processing, by itself)."""
        fields = {
            "status": JobStatus.pending.value,
            "attempts": max(0, job.attempts - 1),
            "given_back": job.given_back + 1,
        }
        return await self._change(job.job_id, fields)

    async def stale_ids(self, untouched_since: datetime, *, batch: int) -> AsyncIterator[list[str]]:
        """Ids of the unfinished jobs nobody has touched since ``untouched_since``, in batches: the
        candidates whose message may be lost. One query for the whole walk."""
        cursor = self._jobs.find(
            {"status": {"$in": [s.value for s in UNFINISHED]}, "updated_at": {"$lt": untouched_since}},
            projection={"_id": 1},
            batch_size=batch,
        )
        ids: list[str] = []
        async for doc in cursor:
            ids.append(doc["_id"])
            if len(ids) == batch:
                yield ids
                ids = []
        if ids:
            yield ids

    async def for_image_job(self, image_job: str) -> list[Job]:
        return [Job.from_document(doc) async for doc in self._jobs.find({"image_job": image_job})]
