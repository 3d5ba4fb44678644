"""imgflow's configuration: one class, read from ``IMGFLOW_*`` environment variables.

Every deployable builds one ``Settings()`` at start and passes it down; nothing else reads the
environment. The README's configuration table documents these fields.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgflow.core.keys import TENANT_PATTERN
from imgflow.core.options import InvalidOption, read_variants
from imgflow.core.outputs import OutputLimits

PRESET_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# what a service offers out of the box; IMGFLOW_PRESETS (chart: config.presets) replaces them all
DEFAULT_PRESETS: dict[str, list[dict[str, Any]]] = {
    "avatar": [
        {"name": "avatar", "width": 64, "height": 64, "format": "auto"},
        {"name": "avatar@2x", "width": 128, "height": 128, "format": "auto"},
    ],
    "card": [
        {"name": "card", "width": 400, "height": 300, "format": "auto"},
        {"name": "card@2x", "width": 800, "height": 600, "format": "auto"},
    ],
    "responsive": [
        {"name": "small", "width": 480, "height": 480, "fit": "inside"},
        {"name": "medium", "width": 1024, "height": 1024, "fit": "inside"},
        {"name": "large", "width": 1920, "height": 1920, "fit": "inside"},
    ],
}


class StorageBackend(StrEnum):
    gridfs = "gridfs"
    local = "local"
    s3 = "s3"


class AuthMode(StrEnum):
    keys = "keys"  # every /api and /uploads request needs an API key
    off = "off"  # the original's open API, for a trusted network only


class LogFormat(StrEnum):
    text = "text"  # a line a person reads
    json = "json"  # one JSON object a line, for a log collector


# the longest a signed URL lives: a SigV4 presigned S3 URL (the signed URL with S3) cannot live longer
MAX_URL_TTL_S = 604_800

# a comma-separated list of seconds, e.g. "1,5,30"
DELAYS = r"^\s*\d+(\.\d+)?(\s*,\s*\d+(\.\d+)?)*\s*$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGFLOW_", extra="ignore")

    # Connections
    mongodb_url: str = Field("mongodb://127.0.0.1:27017", description="MongoDB (or wire-compatible) URL")
    mongodb_database: str = Field("imgflow", description="Database holding jobs and GridFS files")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL of the job stream")
    mongodb_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Time limit of each MongoDB operation, sent to the server as maxTimeMS so an "
        "abandoned query stops there too; past it the request answers 503",
    )

    # Queue contract
    stream: str = Field("imgflow:jobs", description="Redis stream the jobs are published to")
    consumer_group: str = Field("imgflow-workers", description="Consumer group the workers share")
    stream_maxlen: int = Field(
        1_000_000, ge=1000, description="Approximate cap on stream length; trimmed jobs are republished"
    )
    claim_idle_ms: int = Field(
        30_000, ge=1000, description="A message unacknowledged this long is reclaimed by another worker"
    )
    max_attempts: int = Field(
        3, ge=1, description="Times a worker may die processing one image (alone) before the job fails"
    )
    requeue_after_s: float = Field(
        60.0,
        gt=0,
        description="A job pending or processing untouched this long is republished if its message "
        "is no longer in the stream",
    )
    reconcile_interval_s: float = Field(15.0, gt=0, description="How often the API looks for such jobs")

    # Storage
    storage_backend: StorageBackend = Field(StorageBackend.gridfs, description="gridfs, local or s3")
    storage_dir: Path = Field(Path("data"), description="Directory of the local storage backend")
    s3_endpoint: str = Field(
        "",
        pattern=r"^(https?://\S+)?$",
        description="URL of an S3-compatible server (SeaweedFS, MinIO, Ceph...), addressed path-style; "
        "empty: AWS S3 in s3_region",
    )
    s3_bucket: str = Field(
        "imgflow",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="Bucket of the s3 backend, created at start if missing. The orphan sweep deletes "
        "objects under s3_prefix that no job names: share it with nothing else",
    )
    s3_prefix: str = Field(
        "", pattern=r"^([A-Za-z0-9._-]+/)*$", description="Key prefix of imgflow's objects in the bucket"
    )
    s3_region: str = Field("us-east-1", description="Region of the bucket (signed into every request)")
    s3_access_key_id: str | None = Field(
        None, description="S3 access key id; unset: AWS_ACCESS_KEY_ID or botocore's other sources"
    )
    s3_secret_access_key: str | None = Field(
        None, description="S3 secret access key; unset: AWS_SECRET_ACCESS_KEY or botocore's other sources"
    )
    s3_presign: bool = Field(
        False,
        description="Thumbnails answer 307 to a presigned S3 GET URL instead of passing through the API "
        "(the client must reach the S3 server)",
    )
    s3_presign_expiry_s: int = Field(300, ge=1, le=604800, description="Lifetime of a presigned URL")
    s3_public_endpoint: str = Field(
        "",
        pattern=r"^(https?://\S+)?$",
        description="Endpoint written into presigned URLs when clients reach S3 at another address "
        "than the pods do; empty: s3_endpoint",
    )
    s3_timeout_s: float = Field(
        10.0, gt=0, description="Connect and read timeout of each S3 request (3 tries in all)"
    )
    download_memory_bytes: int = Field(
        8 * 1024 * 1024,
        ge=65536,
        description="A thumbnail up to this size is read whole from storage and sent from memory; a "
        "larger one is read in pieces of 1 MiB, so no storage connection waits on a slow client",
    )
    download_deadline_s: float = Field(
        120.0, gt=0, description="Time a client has to receive a thumbnail; then the connection is cut"
    )
    max_concurrent_downloads: int = Field(
        32,
        ge=1,
        description="Thumbnails one API process sends at once (each may hold up to download_memory_bytes "
        "until its client has read it); more get 503 + Retry-After",
    )
    max_downloads_per_key: int = Field(
        8,
        ge=1,
        description="Thumbnails one API process sends at once to one key (admin keys aside); more get "
        "429 + Retry-After",
    )
    # Signed delivery URLs (imgflow.api.signed_urls): a browser fetches an output without a key
    url_signing_key: str | None = Field(
        None,
        pattern=r"^(\S{32,})?$",
        description="Secret (at least 32 characters) that signs outputs' signedUrl; unset: jobs show "
        "no signedUrl. The chart generates one into its Secret",
    )
    url_signing_previous_key: str | None = Field(
        None,
        pattern=r"^(\S{32,})?$",
        description="The signing key being replaced: URLs it signed are still accepted (none are "
        "signed with it), so keys rotate without breaking issued URLs",
    )
    url_ttl_s: int = Field(
        86400,
        ge=1,
        le=MAX_URL_TTL_S,
        description="Seconds a signed URL is valid, unless its tenant's entry in url_tenant_ttl_s or "
        "the request (GET .../urls?ttl=) says otherwise; never beyond the job's expiresAt",
    )
    url_tenant_ttl_s: dict[str, Annotated[int, Field(ge=1, le=MAX_URL_TTL_S)]] = Field(
        default_factory=dict,
        description='Seconds signed URLs are valid per tenant, as a JSON object {"tenant": seconds}; '
        "a tenant not named gets url_ttl_s",
    )
    url_base: str = Field(
        "",
        pattern=r"^(https?://[^/\s]+(/\S*[^/\s])?)?$",
        description="Scheme and host signed URLs start with, e.g. https://img.example.com for a CDN "
        "in front of the API (the signature covers the path only); empty: those the request came to "
        "(in webhooks: a path on this service)",
    )

    # Input limits: checked before anything is decoded
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest accepted upload, in bytes")
    max_pixels: int = Field(50_000_000, ge=1, description="Largest accepted width x height of a source")
    max_side: int = Field(
        16384, ge=1, description="Largest accepted width or height of a source (bounds extreme aspect ratios)"
    )
    max_frames: int = Field(
        100, ge=1, description="Most frames of an animated GIF or WebP a job may keep animated"
    )
    max_animation_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Largest width x height x frames of an animation a job may keep animated (all "
        "frames are decoded at once)",
    )

    # Processing
    default_width: int = Field(100, ge=1, le=8192, description="Thumbnail width when a job gives none")
    default_height: int = Field(100, ge=1, le=8192, description="Thumbnail height when a job gives none")
    max_output_dimension: int = Field(4096, ge=1, description="Largest width or height a job may ask for")
    max_enlargement: float = Field(
        4.0,
        ge=1.0,
        description="With enlarge=true, the most pixels an output may have, as a multiple of its source's "
        "(without it an output is never larger than its source)",
    )
    presets: dict[str, list[dict[str, Any]]] = Field(
        default_factory=lambda: dict(DEFAULT_PRESETS),
        description="Named sets of variants a job asks for with preset=<name>: a JSON object "
        '{"name": [{"name": "small", "width": 200, ...}, ...]}; checked at start',
    )
    jpeg_quality: int = Field(85, ge=1, le=100, description="Quality of JPEG and WebP output")
    worker_concurrency: int = Field(2, ge=1, description="Jobs one worker process handles at once")
    tenant_weights: dict[str, float] = Field(
        default_factory=dict,
        description='Share of worker time per tenant while tenants wait, as a JSON object {"tenant": '
        "weight}; a tenant not named weighs 1",
    )
    tenant_max_inflight: int = Field(
        0,
        ge=0,
        description="Most jobs of one tenant the workers process at once, all workers together (0: no cap)",
    )
    metrics_top_tenants: int = Field(
        20,
        ge=1,
        description="Tenants that get a label of their own in the per-tenant metrics (those that brought "
        'the most work); the others are reported together as tenant="_other" (tenant names have no '
        "underscore)",
    )
    max_job_cost: int = Field(
        600_000, ge=1, description="Largest estimated cost of one job (ms of worker CPU); above it: 422"
    )
    worker_memory_mb: int = Field(
        640,
        ge=64,
        description="Memory a worker's jobs may hold together, each estimated from its header before "
        "decoding: jobs wait for room, and one needing more than all of it fails. Keep the worker's "
        "memory limit at least this plus 256 MiB for the process itself",
    )
    retry_delays_s: str = Field(
        "1,5,30,120,600",
        pattern=DELAYS,
        description="Seconds to wait before each retry of a job that failed for a passing reason "
        "(a URL source timing out or answering 5xx, storage unreachable), comma-separated; one "
        "retry per entry (each +-20% jitter), then the job fails and goes to the dead letters",
    )
    webhook_secret: str | None = Field(
        None,
        pattern=r"^(whsec_[A-Za-z0-9+/]+={0,2})?$",
        description="Set (whsec_<base64>): jobs may have a callbackUrl, whose deliveries are signed "
        "with their tenant's own secret (POST /api/webhooks/secret), not with this one; unset: jobs "
        "with a callbackUrl are refused",
    )
    webhook_retry_delays_s: str = Field(
        "5,30,300,1800,7200,21600,43200",
        pattern=DELAYS,
        description="Seconds before each retry of a webhook delivery that got no 2xx (about 20 h "
        "in all), comma-separated",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Time a webhook receiver has to answer")
    webhook_tenant_concurrency: int = Field(
        10,
        ge=1,
        description="Webhook requests of one tenant under way at once per API replica; a tenant "
        "with more deliveries in hand has its next ones wait a second, so slow receivers of one "
        "tenant never hold another's",
    )
    webhook_endpoint_concurrency: int = Field(
        4,
        ge=1,
        description="Webhook requests to one endpoint (or one callbackUrl) under way at once per API replica",
    )
    webhook_disable_after: int = Field(
        40,
        ge=1,
        description="Failed attempts in a row after which a tenant's webhook endpoint is disabled "
        "(nothing more is sent; GET /api/webhooks shows it; deleting and registering it again resumes)",
    )
    webhook_secret_grace_s: float = Field(
        86400.0,
        ge=0,
        description="Seconds a tenant's callbackUrl secret replaced by POST /api/webhooks/secret "
        "still signs deliveries (beside the new one)",
    )
    retention_s: float = Field(
        604800.0,
        gt=0,
        description="Seconds a finished job, its original and its thumbnail are kept; then they are "
        "deleted and the job answers 404",
    )
    keep_originals: bool = Field(
        True, description="Keep an uploaded original until the job expires (false: delete it once finished)"
    )
    reuse_disabled_tenants: str = Field(
        "",
        description="Tenants (comma-separated; * for all) whose jobs never reuse an identical finished "
        "job's outputs: each upload is decoded again",
    )
    orphan_grace_s: float = Field(
        3600.0,
        gt=0,
        description="A stored file whose job does not exist (a crash between storing and recording) "
        "is deleted once this old",
    )
    # API keys, tenants, rate limits
    auth: AuthMode = Field(
        AuthMode.keys,
        description="keys: every /api and /uploads request needs 'Authorization: Bearer <key>'; "
        "off: the original's open API, for a trusted network only (logged as a warning at start)",
    )
    admin_key: str | None = Field(
        None,
        pattern=r"^(\S{32,})?$",
        description="Bootstrap key with the admin scope (tenant default_tenant), to create the "
        "other keys; the chart generates one into a Secret",
    )
    default_tenant: str = Field(
        "default",
        pattern=TENANT_PATTERN,
        description="Tenant of the bootstrap key and, with auth off, of every job",
    )
    key_cache_s: float = Field(
        1.0,
        ge=0,
        le=2,
        description="Seconds an API replica trusts a key it looked up: a revoked key stops "
        "working within this",
    )
    auth_failures_per_s: float = Field(
        1.0,
        gt=0,
        description="Failed authentications (missing, malformed or unknown keys) one client address "
        "may make per second, per API process, beyond auth_failure_burst; past them it gets 429",
    )
    auth_failure_burst: int = Field(
        20, ge=1, description="Failed authentications one client address may make at once"
    )
    create_per_s: float = Field(
        10.0, gt=0, description="Job creates per second per key (default for new keys)"
    )
    create_burst: int = Field(20, ge=1, description="Job creates a key may make at once above its rate")
    read_per_s: float = Field(50.0, gt=0, description="Reads per second per key (default for new keys)")
    read_burst: int = Field(100, ge=1, description="Reads a key may make at once above its rate")
    tenant_max_unfinished: int = Field(
        1000, ge=1, description="Jobs a tenant may have pending or processing at once; more creates get 429"
    )
    idempotency_ttl_s: float = Field(
        86400.0, gt=0, description="How long an Idempotency-Key's first answer is kept and replayed"
    )
    graceful_timeout_s: float = Field(25.0, gt=0, description="Time a stopping worker has to finish jobs")

    # URL sources (ImageJobs fetched by the worker)
    fetch_timeout_s: float = Field(10.0, gt=0, description="Total time allowed to fetch one source URL")
    fetch_max_redirects: int = Field(3, ge=0, description="Redirects followed, each one re-checked")
    allow_private_urls: bool = Field(
        False, description="Allow fetching loopback/private/link-local addresses (tests and dev only)"
    )
    dns_timeout_s: float = Field(
        5.0, gt=0, description="Time one host name lookup (URL sources, webhook URLs) may take"
    )
    dns_max_concurrent: int = Field(
        8, ge=1, description="Host name lookups one process makes at once; more wait (within dns_timeout_s)"
    )
    dns_servers: str = Field(
        "",
        pattern=r"^(\S+(\s*,\s*\S+)*)?$",
        description="Name servers of those lookups, comma-separated (ip or ip:port); empty: the "
        "system's (/etc/resolv.conf)",
    )

    # HTTP
    api_host: str = Field("127.0.0.1", description="Address the API listens on")
    api_port: int = Field(8000, description="Port the API listens on")
    request_header_timeout_s: float = Field(
        10.0, gt=0, description="Time a client has to send a request's line and headers"
    )
    max_json_bytes: int = Field(
        65536,
        ge=1024,
        description="Largest request body other than a multipart upload (JSON), in bytes; larger "
        "ones get 413 before authentication",
    )
    upload_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest pause in a request's body (an upload or JSON) before the request is "
        "dropped (408)",
    )
    upload_min_bytes_per_s: int = Field(
        65536,
        ge=1,
        description="Slowest accepted average rate of a request's body: it may take "
        "upload_idle_timeout_s + its size / this, then 408",
    )
    max_concurrent_uploads: int = Field(
        16, ge=1, description="Uploads one API process receives at once; more get 503 + Retry-After"
    )
    max_streams: int = Field(
        1000, ge=1, description="Live-progress streams one API process serves at once; more get 429"
    )
    max_streams_per_key: int = Field(
        20,
        ge=1,
        description="Live-progress streams one API key may hold open on one API process; more get 429",
    )
    redis_pool_size: int = Field(
        64,
        ge=1,
        description="Connections of an API process's Redis pool for requests (live-progress streams "
        "share one more, /readyz and the webhook sender have their own)",
    )
    mongodb_pool_size: int = Field(
        50,
        ge=1,
        description="Connections of a process's MongoDB pool (pymongo maxPoolSize); waiting for one "
        "counts in the operation's mongodb_timeout_s",
    )
    redis_pool_wait_s: float = Field(
        2.0,
        gt=0,
        description="Longest a request waits for a free connection of its API process's Redis pool; "
        "then it answers 503 + Retry-After",
    )
    max_uploads_per_key: int = Field(
        4,
        ge=1,
        description="Uploads one API process receives at once from one key (admin keys aside); more "
        "get 429 + Retry-After",
    )
    list_max_offset: int = Field(
        1000,
        ge=0,
        description="Most jobs a numbered listing page may skip ((page - 1) x limit); deeper pages "
        "answer 400 and point to cursor paging",
    )
    worker_metrics_port: int = Field(9100, description="Port of the worker's /metrics and /healthz (0: off)")
    log_format: LogFormat = Field(
        LogFormat.text,
        description="text: lines for a terminal; json: one JSON object a line (time, level, logger, "
        "message, and jobId, tenant or keyId when a line is about one), for a log collector",
    )

    @property
    def output_limits(self) -> OutputLimits:
        return OutputLimits(
            self.max_output_dimension,
            (self.default_width, self.default_height),
            self.max_frames,
            self.max_animation_pixels,
            self.max_enlargement,
        )

    @model_validator(mode="after")
    def _presets_are_valid(self) -> Settings:
        """A preset a job could not use fails the start, not the jobs that name it."""
        for name, variants in self.presets.items():
            if not re.match(PRESET_NAME, name):
                raise ValueError(f"preset name {name!r}: 1 to 32 of a-z, 0-9, '_', '-'")
            try:
                specs = read_variants(variants, self.output_limits, where=f"presets.{name}")
            except InvalidOption as exc:
                raise ValueError(str(exc)) from exc
            if any(spec.watermark for spec in specs):
                raise ValueError(f"preset {name!r}: a watermark belongs to a tenant, not to a preset")
        return self

    @property
    def reuse_disabled(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.reuse_disabled_tenants.split(",") if t.strip())

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return _seconds(self.retry_delays_s)

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        return _seconds(self.webhook_retry_delays_s)


def _seconds(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
