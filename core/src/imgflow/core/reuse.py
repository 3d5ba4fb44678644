"""Identical work made once: within a tenant, a job whose source bytes and outputs' options match
a finished, unexpired job's completes at once from that job's outputs, without a worker.

A completed upload job offers its outputs under its reuse key (``key``: the tenant, the source's
SHA-256 and the normalised options, hashed), one document by ``_id`` (imgflow.core.store, FerretDB
answers only ``_id`` from an index): finding a match is two reads by key however many jobs are
stored. The new job shares the files by reference (imgflow.core.lifecycle.reuse): their job is
kept, and them, until the last job using them expires (imgflow.core.retention).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from imgflow.core.outputs import ThumbnailSpec
from imgflow.core.settings import Settings

FIELD = "reuse"  # the form field a request opts out with (reuse=false)


class InvalidReuse(ValueError):
    """The request's ``reuse`` field is neither true nor false."""


def asked(fields: dict[str, str]) -> bool:
    """Whether the request lets its job reuse an identical job's outputs (``reuse``, default
    true)."""
    value = fields.get(FIELD, "true").strip().lower()
    if value not in ("true", "false"):
        raise InvalidReuse(f"{FIELD} must be true or false, not {value[:32]!r}.")
    return value == "true"


def key(tenant: str, source_sha256: str, specs: Sequence[ThumbnailSpec], named: bool) -> str:
    """What identical jobs share: the tenant, the source's bytes and every output's options as
    validated (defaults filled, ``auto`` formats decided), and whether they are named variants."""
    options = json.dumps([spec.model_dump(mode="json") for spec in specs], sort_keys=True)
    return hashlib.sha256("\n".join((tenant, source_sha256, str(named), options)).encode()).hexdigest()


def allowed(settings: Settings, tenant: str) -> bool:
    """Whether the tenant's jobs may reuse outputs at all (IMGFLOW_REUSE_DISABLED_TENANTS; ``*``:
    no tenant's)."""
    return not {tenant, "*"} & settings.reuse_disabled
