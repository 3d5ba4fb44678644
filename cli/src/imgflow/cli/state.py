"""What ``imgflow submit --out DIR`` has done so far, in ``DIR/.imgflow-submit.json``: per input,
the Idempotency-Key it was sent with, its job, and the outputs downloaded. A rerun skips the
inputs that are done and follows the jobs already accepted; an input whose bytes or options
changed has another key and is sent anew."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILE_NAME = ".imgflow-submit.json"
VERSION = 1


@dataclass
class Entry:
    key: str
    job_id: str | None = None
    status: str | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


def idempotency_key(file_sha256: str, fields: dict[str, str]) -> str:
    """The same bytes with the same form fields (user, options) give the same key, so a retry or
    a rerun within the server's idempotency window answers the first job instead of a new one."""
    canonical = json.dumps({"file": file_sha256, "fields": fields}, sort_keys=True)
    return "imgflow-cli-" + hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class State:
    """The state file of one output folder; ``save`` rewrites it whole (atomically)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        if path is not None and path.exists():
            raw = json.loads(path.read_text())
            if raw.get("version") == VERSION:
                self.entries = {name: Entry(**entry) for name, entry in raw["entries"].items()}

    def get(self, name: str, key: str) -> Entry:
        """``name``'s entry if it was made with this ``key``, else a fresh one."""
        entry = self.entries.get(name)
        if entry is None or entry.key != key:
            entry = self.entries[name] = Entry(key)
        return entry

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"version": VERSION, "entries": {name: asdict(e) for name, e in sorted(self.entries.items())}}
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(partial, self.path)
