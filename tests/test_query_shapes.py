"""Every query a job's life sends to MongoDB is answered from an index, so its cost stays the same
however many jobs are stored (issue 10), on the suite's server (FerretDB, patched so that a filter
on ``_id`` alone uses its ``_id`` index: scripts/patches) as on ``mongod``.

The commands are those imgflow's own stores send (captured with a PyMongo command listener while
a job is accepted, admitted, started, retried, given back, completed, failed, revived, read, found
and shared by an identical job, and deleted, and while an API key is looked up); each filter is
then explained on the same server, with thousands of jobs stored, and its plan must read an index,
not the collection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from imgflow.core.jobs import Job, JobResult, UploadSource, utcnow
from imgflow.core.keys import KeyStore, Scope, new_key
from imgflow.core.outputs import OutputFormat
from imgflow.core.settings import Settings
from imgflow.core.store import JobStore

STORED = 3_000  # enough rows that a planner prefers an index it can use


class Filters(monitoring.CommandListener):
    """The filter of every command sent, with its command and collection."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        name = event.command_name
        for query in _filters(name, command):
            self.seen.append((name, str(command[name]), dict(query)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _filters(name: str, command: Any) -> Iterator[Any]:
    if name in ("find", "count"):
        yield command.get("filter", {})
    elif name == "findAndModify":
        yield command.get("query", {})
    elif name == "update":
        yield from (u["q"] for u in command.get("updates", []))
    elif name == "delete":
        yield from (d["q"] for d in command.get("deletes", []))


def scans(plan: Any) -> bool:
    """Whether an explained plan reads the whole collection: PostgreSQL's Seq Scan, SQLite's
    SCAN (vs SEARCH ... USING INDEX), mongod's COLLSCAN."""
    text = json.dumps(plan, default=str)
    return "Seq Scan" in text or "COLLSCAN" in text or re.search(r"detail=SCAN ", text) is not None


def job(user: str) -> Job:
    return Job(user_id=user, source=UploadSource(key="original-x"))


async def test_every_job_path_query_is_answered_from_an_index(fresh_settings: Settings) -> None:
    settings = fresh_settings
    listener = Filters()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_url, event_listeners=[listener]
    )
    db = client[settings.mongodb_database]
    try:
        store, keys = JobStore(db), KeyStore(db)
        await store.ensure_indexes()
        await keys.ensure_indexes()
        await db["jobs"].insert_many([job(f"user-{i % 50}").to_document() for i in range(STORED)])
        await db["reusable"].insert_many([{"_id": f"key-{i}", "job_id": f"job-{i}"} for i in range(STORED)])
        listener.seen.clear()

        # a job's life, as the API and the worker drive it
        accepted = job("user-7")
        await store.insert(accepted)
        admitted = await store.get(accepted.job_id)
        assert admitted is not None
        started = await store.start(admitted, "worker-1")
        assert started is not None
        await store.wait_for_retry(started, "timed out", utcnow() + timedelta(seconds=1))
        again = await store.start(started, "worker-1")
        assert again is not None
        await store.release(again)
        result = JobResult(
            key="k", width=1, height=1, bytes=1, format=OutputFormat.jpeg, processed_at=utcnow()
        )
        assert await store.complete(accepted.job_id, result, expires_at=utcnow())
        assert await store.fail(accepted.job_id, "late", expires_at=utcnow())
        assert await store.revive(accepted.job_id) is not None
        assert await store.view(accepted.job_id) is not None
        # an identical job finds it (reuse), and keeps it while it uses its outputs
        await store.offer("reuse-key", accepted.job_id)
        assert await store.offered("reuse-key") is not None
        assert await store.share(accepted.job_id, until=utcnow()) is not None
        await store.delete(accepted.job_id)
        # every request's key lookup
        key, _ = new_key("tenant-a", "shapes", [Scope.jobs_write])
        await keys.insert(key)
        assert await keys.get(key.key_id) is not None

        shapes = {(name, coll, json.dumps(sorted(q), default=str)): q for name, coll, q in listener.seen}
        assert len(shapes) >= 2, listener.seen  # the capture works: at least job and key lookups
        for (name, coll, _), query in shapes.items():
            explained = await db.command("explain", {"find": coll, "filter": query}, verbosity="queryPlanner")
            plan = explained.get("queryPlanner")
            assert plan, explained
            assert not scans(plan), f"{name} on {coll} with {query} reads the whole collection: {plan}"
    finally:
        await client.close()


def test_the_scan_detector_knows_each_servers_words() -> None:
    assert scans({"Plan": ["id=2 parent=0 notused=0 detail=SCAN jobs_e407107d"]})
    assert not scans(
        {"Plan": ["id=3 parent=0 notused=0 detail=SEARCH jobs_e4 USING INDEX jobs_e4__id_ (<expr>=?)"]}
    )
    assert scans([{"Plan": {"Node Type": "Seq Scan", "Relation Name": "jobs_1"}}])
    assert not scans([{"Plan": {"Node Type": "Index Scan", "Index Name": "jobs_1__id__idx"}}])
    assert scans({"winningPlan": {"stage": "COLLSCAN"}})
    assert not scans({"winningPlan": {"stage": "EXPRESS_IXSCAN"}})
