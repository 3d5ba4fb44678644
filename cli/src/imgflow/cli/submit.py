"""``imgflow submit``: files and folders in, outputs out.

Each input is uploaded with an Idempotency-Key made from its bytes and the form fields, followed
until its job is finished (imgflow.cli.follow), and its outputs are downloaded into ``--out``,
keeping the input's place under the folder it came from. With ``--out`` the run is recorded in a
state file there (imgflow.cli.state), so a rerun of a half-done folder sends only what was never
accepted, follows what is still running and downloads what is missing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from imgflow.cli import output
from imgflow.cli.client import JOBS, Api, ApiError, Unreachable
from imgflow.cli.follow import follow
from imgflow.cli.state import FILE_NAME, Entry, State, file_sha256, idempotency_key

# a folder's files that are sent (the server reads the format from the bytes; this only keeps a
# folder's other files out); files named on the command line are sent whatever their names
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "avif": "avif", "gif": "gif"}
# Jobs followed at once: each holds an event stream, of which the API allows a key 20 per process.
FOLLOWED_AT_ONCE = 16
ACCEPTED = frozenset({"pending", "processing", "completed"})


class InputError(Exception):
    """The inputs named cannot be sent as asked (missing, or two with one output place)."""


@dataclass
class Item:
    path: Path
    name: str  # its place under --out and its name in the state file
    entry: Entry = field(default_factory=lambda: Entry(""))
    error: str | None = None

    @property
    def status(self) -> str:
        return self.entry.status or "not sent"

    def view(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "jobId": self.entry.job_id,
            "status": self.status,
            "outputs": self.entry.outputs,
            "error": self.error or self.entry.error,
        }


def collect(paths: list[Path], out: Path | None) -> list[Item]:
    """The files to send: each file named, and a folder's image files (by suffix) at any depth,
    leaving out hidden files and ``out`` itself."""
    items: dict[str, Item] = {}
    skip = out.resolve() if out is not None else None
    for given in paths:
        if given.is_dir():
            found = [(p, p.relative_to(given).as_posix()) for p in _images(given, skip)]
        elif given.is_file():
            found = [(given, given.name)]
        else:
            raise InputError(f"{given}: no such file or folder")
        for path, name in found:
            if name in items and items[name].path.resolve() != path.resolve():
                raise InputError(f"{items[name].path} and {path} would both be {name} in the output folder")
            items.setdefault(name, Item(path, name))
    return list(items.values())


def _images(folder: Path, skip: Path | None) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip)
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield here / name


def outputs_of(job: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(file name suffix, URL, format) of each output of a completed job: its variants, by name,
    or its one thumbnail."""
    result = job.get("result") or {}
    variants: dict[str, dict[str, Any]] = result.get("variants") or {}
    if variants:
        return [("-" + _safe(name), v["url"], v["format"]) for name, v in variants.items()]
    return [("", result["thumbnailUrl"], result["format"])]


def _safe(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_")


class Reporter:
    """Progress as it goes, on standard error: two bars on a terminal (sent, finished), and a line
    per event otherwise (logs and pipes get no redrawn lines)."""

    def __init__(self, total: int, waiting: bool) -> None:
        self.live = output.err.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=output.err,
            disable=not self.live,
        )
        self.sent: TaskID = self.progress.add_task("sent", total=total)
        self.done: TaskID | None = self.progress.add_task("finished", total=total) if waiting else None

    def __enter__(self) -> Reporter:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def line(self, message: str, *, always: bool = False) -> None:
        if always or not self.live:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def was_sent(self, item: Item, earlier: bool) -> None:
        self.progress.advance(self.sent)
        if earlier:
            self.line(f"known     {item.name}: job {item.entry.job_id} (sent before)")
        elif item.entry.job_id is None:
            self.line(f"{item.status:9} {item.name}: {item.error}", always=True)  # refused, not sent
        else:
            self.line(f"accepted  {item.name}: job {item.entry.job_id}")

    def finished(self, item: Item) -> None:
        if self.done is None:
            return
        self.progress.advance(self.done)
        if item.status == "completed":
            self.line(
                f"completed {item.name}: {', '.join(item.entry.outputs) or 'job ' + str(item.entry.job_id)}"
            )
        elif item.entry.job_id is not None:
            self.line(f"{item.status:9} {item.name}: {item.error or item.entry.error or ''}", always=True)


@dataclass
class Plan:
    fields: dict[str, str]  # userId and the job's options, as form fields
    wait: bool
    out: Path | None
    concurrency: int


class Run:
    def __init__(self, api: Api, plan: Plan, items: list[Item]) -> None:
        self.api = api
        self.plan = plan
        self.items = items
        self.state = State(plan.out / FILE_NAME if plan.out is not None else None)
        self.sending = asyncio.Semaphore(plan.concurrency)
        self.following = asyncio.Semaphore(FOLLOWED_AT_ONCE)

    async def run(self, reporter: Reporter) -> None:
        for item in self.items:
            key = idempotency_key(await asyncio.to_thread(file_sha256, item.path), self.plan.fields)
            item.entry = self.state.get(item.name, key)
        await asyncio.gather(*(self._one(item, reporter) for item in self.items))

    async def _one(self, item: Item, reporter: Reporter) -> None:
        try:
            earlier = item.entry.job_id is not None
            if not earlier:
                async with self.sending:
                    await self._send(item)
                self.state.save()
            reporter.was_sent(item, earlier)
            if item.entry.job_id is not None and self.plan.wait and not self._done(item):
                await self._finish(item, item.entry.job_id, reporter)
        except (ApiError, Unreachable) as exc:
            item.error = str(exc)
            item.entry.status = "failed" if isinstance(exc, ApiError) else "unknown"
        reporter.finished(item)

    async def _finish(self, item: Item, job_id: str, reporter: Reporter) -> None:
        async with self.following:
            job = await follow(self.api, job_id, note=reporter.line)
        item.entry.status, item.entry.error = job["status"], job.get("error")
        if job["status"] == "completed" and self.plan.out is not None:
            async with self.sending:
                item.entry.outputs = await self._download(item, job)
        self.state.save()

    def _done(self, item: Item) -> bool:
        """Finished in an earlier run, with every output it downloaded still in place."""
        if item.entry.status not in ("completed", "failed", "cancelled"):
            return False
        out = self.plan.out
        return (
            item.entry.status != "completed"
            or out is None
            or (bool(item.entry.outputs) and all((out / name).is_file() for name in item.entry.outputs))
        )

    async def _send(self, item: Item) -> None:
        data = await asyncio.to_thread(item.path.read_bytes)
        try:
            accepted = await self.api.json(
                "POST",
                JOBS,
                files={"file": (item.path.name, data, "application/octet-stream")},
                data=self.plan.fields,
                headers={"Idempotency-Key": item.entry.key},
            )
        except (ApiError, Unreachable) as exc:
            item.error = str(exc)
            item.entry.status = "refused" if isinstance(exc, ApiError) else "not sent"
            return
        item.entry.job_id, item.entry.status = accepted["jobId"], accepted["status"]

    async def _download(self, item: Item, job: dict[str, Any]) -> list[str]:
        assert self.plan.out is not None
        stem = Path(item.name).with_suffix("").as_posix()
        names = []
        for suffix, url, fmt in outputs_of(job):
            name = f"{stem}{suffix}.{EXTENSIONS.get(fmt, fmt)}"
            response = await self.api.request("GET", url, follow_redirects=True)
            target = self.plan.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            await asyncio.to_thread(partial.write_bytes, response.content)
            os.replace(partial, target)
            names.append(name)
        return names


def succeeded(items: list[Item], waited: bool) -> bool:
    return all((item.status == "completed") if waited else (item.status in ACCEPTED) for item in items)
