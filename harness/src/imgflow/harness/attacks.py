"""One API key attacks an API replica while another tenant goes about its business (issue 19).

Each attack is one client's abuse from the findings. It goes on for HOLD_S, coming back whenever
the API turns it away, and then stops by itself, whatever the API answered (the attacker's answers
are counted and printed, not judged). Meanwhile the victim, a key of another tenant, creates a
small job, polls it until completed and fetches its thumbnail, again and again, reads one of its
jobs and asks /readyz; each of those answers is timed and judged. Shared by
tests/test_isolation.py (the victim is answered) and bench/isolation.py (how much slower it is
answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pyvips

from imgflow.core.jobs import Job, JobStatus, UploadSource, utcnow
from imgflow.core.settings import Settings
from imgflow.core.store import JobStore, connect
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, submit, wait_finished
from imgflow.harness.hostile import grid_chain

HOLD_S = 10.0  # how long every attack goes on
CLIENT_TIMEOUT_S = 30.0  # a victim's request unanswered this long is a failure
POLL_S = 0.1
CROWD = 5_000  # jobs of the attacker's user that deep listing pages walk over
HUGE_BODY = 200 << 20
# above 2^64: what a Redis stream entry id cannot be
HUGE_EVENT_ID = f"{2**64}-0"


@dataclass
class Target:
    """The replica under attack and what the attacks use on it."""

    base_url: str
    settings: Settings  # the API's
    attacker_key: str
    attacker_tenant: str
    large_thumbnail: str = ""  # path of a ~50 MB thumbnail of the attacker's
    crowded_user: str = "crowd"
    # what the attacker's requests got: a status, "cut off" or "no answer" (not judged; printed)
    answers: Counter[str] = field(default_factory=Counter)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])


def large_png() -> bytes:
    """A 1700x1700 noise PNG (~9 MB, under the default upload limit) that a 4096x4096 PNG
    thumbnail of it makes ~50 MB: noise does not compress."""
    bands = [pyvips.Image.gaussnoise(1700, 1700, sigma=80, mean=128).cast("uchar") for _ in range(3)]
    picture = bands[0].bandjoin(bands[1:]).copy(interpretation="srgb")
    return bytes(picture.pngsave_buffer(compression=1))


async def prepare(target: Target) -> None:
    """What the attacks need and is slow to make, made once: the large thumbnail, the crowded user."""
    async with api_client(target.base_url, key=target.attacker_key, timeout=120) as client:
        reply = await submit(
            client, large_png(), filename="noise.png", content_type="image/png",
            width="4096", height="4096", fit="fill", format="png",
        )  # fmt: skip
        assert reply.status_code == 202, reply.text
        job = await wait_finished(client, reply.json()["jobId"], within=180)
        assert job["status"] == "completed", job
        target.large_thumbnail = job["result"]["thumbnailUrl"]
    mongo = connect(target.settings)
    try:
        jobs = mongo[target.settings.mongodb_database]["jobs"]
        expires = utcnow() + timedelta(days=1)
        crowd = [
            Job(
                user_id=target.crowded_user,
                tenant=target.attacker_tenant,
                status=JobStatus.failed,
                error="made by the isolation harness",
                source=UploadSource(key="none"),
                expires_at=expires,
            ).to_document()
            for _ in range(CROWD)
        ]
        await jobs.insert_many(crowd)
    finally:
        await mongo.close()


async def unfinished_job(target: Target) -> str:
    """A pending job of the attacker's, for event streams that stay open (a finished job's end)."""
    mongo = connect(target.settings)
    try:
        job = Job(user_id="streams", tenant=target.attacker_tenant, source=UploadSource(key="none"))
        await JobStore(mongo[target.settings.mongodb_database]).insert(job)
        return job.job_id
    finally:
        await mongo.close()


def _head(method: str, path: str, key: str | None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: imgflow"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _repeat(target: Target, send: Callable[[float], Awaitable[None]], senders: int) -> None:
    """``senders`` loops, each calling ``send(deadline)`` again until HOLD_S from now: a persistent
    attacker who comes back when it is answered, refused or cut off."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLD_S

    async def sender() -> None:
        while loop.time() < deadline:
            try:
                async with asyncio.timeout_at(deadline + 1):  # a hold ends itself at the deadline
                    await send(deadline)
            except TimeoutError:
                target.answers["no answer"] += 1  # abandoned
            await asyncio.sleep(0.1)  # not a tight loop when the API turns it away at once

    await asyncio.gather(*(sender() for _ in range(senders)))


async def _connect(target: Target, read_buffer: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if read_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, read_buffer)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", target.port))
        return await asyncio.open_connection(sock=sock, limit=max(read_buffer, 1024))
    except BaseException:
        sock.close()
        raise


async def _hold(target: Target, request: bytes, *, trickle: bool = False, read_buffer: int = 0) -> None:
    """Hold connections: each sends ``request``, then a byte a second (``trickle``) or nothing,
    reading nothing after the status line (with ``read_buffer``, a receive buffer that small).
    One the API refuses (a status of 400 or more) or cuts off is opened again, until HOLD_S."""

    async def hold(deadline: float) -> None:
        try:
            reader, writer = await _connect(target, read_buffer)
        except OSError:
            target.answers["refused"] += 1
            return
        loop = asyncio.get_running_loop()
        status = ""
        try:
            writer.write(request)
            await writer.drain()
            while loop.time() < deadline:
                await asyncio.sleep(min(1.0, deadline - loop.time()))
                if trickle:
                    writer.write(b"x")
                    await writer.drain()
                if not status:
                    status = await _status(reader, wait=0.01)
                    if status == "no answer":
                        status = ""
                    elif not status.isdigit() or int(status) >= 400:
                        break  # turned away: come back
        except OSError:
            status = "cut off"
        finally:
            target.answers[status or "no answer"] += 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await _repeat(target, hold, 1)


async def _send_body(target: Target, path: str, size: int) -> None:
    """A JSON body of ``size`` bytes without a key, sent as fast as the API takes it."""
    head = _head("POST", path, None, Content_Type="application/json", Content_Length=str(size))
    chunk = b"a" * (1 << 20)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    except OSError:
        target.answers["refused"] += 1
        return
    try:
        writer.write(head + b'{"url": "')
        left = size - len(b'{"url": "') - len(b'"}')
        while left > 0:
            writer.write(chunk[:left])
            left -= len(chunk)
            await writer.drain()
        writer.write(b'"}')
        await writer.drain()
        target.answers[await _status(reader, wait=CLIENT_TIMEOUT_S)] += 1
    except OSError:
        target.answers[await _status(reader, wait=0.05)] += 1  # an answer before it cut us off?
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _status(reader: asyncio.StreamReader, wait: float) -> str:
    """The status of the answer waiting on a connection: "200", "cut off", or "no answer"."""
    try:
        async with asyncio.timeout(wait):
            line = await reader.readline()
    except TimeoutError:
        return "no answer"
    except (OSError, ValueError):  # reset, or a line longer than the reader's buffer
        return "cut off"
    parts = line.split()
    return parts[1].decode() if line.startswith(b"HTTP/") and len(parts) > 1 else "cut off"


def _upload_head(path: str, key: str) -> bytes:
    """A multipart upload's head and its first bytes, of a body declared 900 kB long."""
    boundary = "slowupload"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    head = _head(
        "POST", path, key,
        Content_Type=f"multipart/form-data; boundary={boundary}", Content_Length=str(900_000),
    )  # fmt: skip
    return head + preamble + images.png_alpha(8, 8)[:16]


async def _answered(target: Target, request: Awaitable[httpx.Response]) -> httpx.Response | None:
    """The attacker's answer, counted; None if there was none."""
    try:
        reply = await request
    except httpx.HTTPError as exc:
        target.answers[type(exc).__name__] += 1
        return None
    target.answers[str(reply.status_code)] += 1
    return reply


def _client(target: Target, key: str | None, in_flight: int = 100) -> httpx.AsyncClient:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    return httpx.AsyncClient(base_url=target.base_url, headers=headers, timeout=None, limits=limits)


async def hostile_avif(target: Target) -> None:
    data = grid_chain()
    async with _client(target, target.attacker_key) as client:

        async def send(deadline: float) -> None:
            files = {"file": ("chain.avif", data, "image/avif")}
            await _answered(target, client.post(JOBS, files=files, data={"userId": "attacker"}))

        await _repeat(target, send, 2)


async def unbounded_json(target: Target) -> None:
    async def webhooks(deadline: float) -> None:
        await _send_body(target, "/api/webhooks", HUGE_BODY)

    async def admin_keys(deadline: float) -> None:
        await _send_body(target, "/api/admin/keys", HUGE_BODY)

    await asyncio.gather(_repeat(target, webhooks, 1), _repeat(target, admin_keys, 1))


async def event_streams(target: Target) -> None:
    path = f"{JOBS}/{await unfinished_job(target)}/events"
    request = _head("GET", path, target.attacker_key, Accept="text/event-stream")
    await asyncio.gather(*(_hold(target, request) for _ in range(110)))


async def unread_thumbnails(target: Target) -> None:
    request = _head("GET", target.large_thumbnail, target.attacker_key)
    await asyncio.gather(*(_hold(target, request, read_buffer=4096) for _ in range(12)))


async def deep_pages(target: Target) -> None:
    path = f"/api/image-processing/users/{target.crowded_user}/jobs?page=1000&limit=100"
    async with _client(target, target.attacker_key) as client:

        async def send(deadline: float) -> None:
            await _answered(target, client.get(path))

        await _repeat(target, send, 8)


async def newline_variant_names(target: Target) -> None:
    """Ten jobs with a variant name ending in a newline, then what becomes of them, for HOLD_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLD_S
    variants = json.dumps([{"name": "card\n", "width": 64, "height": 64}])
    async with _client(target, target.attacker_key) as client:
        replies = await asyncio.gather(
            *(
                _answered(
                    target, submit(client, images.jpeg(320, 240), user_id="attacker", variants=variants)
                )
                for _ in range(10)
            )
        )
        accepted = [r.json()["jobId"] for r in replies if r is not None and r.status_code == 202]
        # what the worker does with them is part of the attack
        await asyncio.gather(*(_finished(target, client, job) for job in accepted))
    await asyncio.sleep(max(0.0, deadline - loop.time()))


async def _finished(target: Target, client: httpx.AsyncClient, job_id: str) -> None:
    try:
        job = await wait_finished(client, job_id, within=HOLD_S)
    except (AssertionError, ValueError, httpx.HTTPError):  # ValueError: an answer that is not JSON
        target.answers["job unreadable or unfinished"] += 1
        return
    target.answers[f"job {job['status']}"] += 1


async def slow_uploads(target: Target) -> None:
    request = _upload_head(JOBS, target.attacker_key)
    await asyncio.gather(*(_hold(target, request, trickle=True) for _ in range(16)))


async def slow_watermark_uploads(target: Target) -> None:
    request = _upload_head("/api/watermarks", target.attacker_key)
    await asyncio.gather(*(_hold(target, request, trickle=True) for _ in range(40)))


async def huge_last_event_id(target: Target) -> None:
    path = f"{JOBS}/{await unfinished_job(target)}/events"
    request = _head("GET", path, target.attacker_key, Last_Event_ID=HUGE_EVENT_ID)
    await asyncio.gather(*(_hold(target, request) for _ in range(50)))


def _bad_key(n: int) -> str:
    if n % 3 == 0:
        return "imgf_" + secrets.token_hex(3)  # malformed
    if n % 3 == 1:
        return "x" * 4000  # malformed and long
    return f"imgf_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"  # well-formed, unknown


async def unknown_keys(target: Target) -> None:
    sent = 0
    async with _client(target, None, in_flight=50) as client:

        async def send(deadline: float) -> None:
            nonlocal sent
            sent += 1
            headers = {"Authorization": f"Bearer {_bad_key(sent)}"}
            await _answered(target, client.get(f"{JOBS}/{secrets.token_hex(4)}", headers=headers))

        await _repeat(target, send, 50)


Attack = Callable[[Target], Coroutine[Any, Any, None]]
ATTACKS: dict[str, Attack] = {
    "hostile-avif": hostile_avif,
    "unbounded-json": unbounded_json,
    "event-streams": event_streams,
    "unread-thumbnails": unread_thumbnails,
    "deep-pages": deep_pages,
    "newline-variant-names": newline_variant_names,
    "slow-uploads": slow_uploads,
    "slow-watermark-uploads": slow_watermark_uploads,
    "huge-last-event-id": huge_last_event_id,
    "unknown-keys": unknown_keys,
}


@dataclass
class Victim:
    """What the victim tenant saw: every answer's latency by kind, and what went wrong."""

    latency_s: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    round_trips: int = 0
    during_attack: int = 0  # round trips that ended while the attack still went on

    async def call(
        self, kind: str, request: Awaitable[httpx.Response], *expected: int
    ) -> httpx.Response | None:
        """The answer, timed; None (and a failure) for a timeout, a 5xx or another status than expected."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            reply = await request
        except httpx.HTTPError as exc:
            self.failures.append(f"{kind}: {type(exc).__name__} after {loop.time() - start:.1f} s")
            return None
        self.latency_s.setdefault(kind, []).append(loop.time() - start)
        if reply.status_code not in expected:
            self.failures.append(f"{kind}: {reply.status_code} {reply.text[:200]}")
            return None
        return reply

    def summary(self) -> str:
        parts = [f"{self.round_trips} round trips ({self.during_attack} during the attack)"]
        for kind, values in self.latency_s.items():
            p50, p95 = percentiles(values)
            parts.append(f"{kind} p50 {p50 * 1000:.0f} ms p95 {p95 * 1000:.0f} ms (n={len(values)})")
        return "; ".join(parts)


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p95."""
    if len(values) < 2:
        return values[0], values[0]
    return statistics.median(values), statistics.quantiles(values, n=20, method="inclusive")[18]


async def _round_trip(victim: Victim, client: httpx.AsyncClient) -> None:
    """Create a small job, poll it until completed, fetch its thumbnail."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    created = await victim.call("create", submit(client, images.jpeg(320, 240), user_id="victim"), 202)
    if created is None:
        return
    job_id = created.json()["jobId"]
    while True:
        polled = await victim.call("poll", client.get(f"{JOBS}/{job_id}"), 200)
        if polled is None:
            return
        job = polled.json()
        if job["status"] == "completed":
            break
        if job["status"] == "failed" or loop.time() - start > CLIENT_TIMEOUT_S:
            victim.failures.append(
                f"round trip: job {job_id} {job['status']} after {loop.time() - start:.1f} s"
            )
            return
        await asyncio.sleep(POLL_S)
    if await victim.call("thumbnail", client.get(job["result"]["thumbnailUrl"]), 200) is not None:
        victim.latency_s.setdefault("round trip", []).append(loop.time() - start)
        victim.round_trips += 1


async def measure(base_url: str, key: str, job_id: str, activity: Awaitable[None]) -> Victim:
    """The victim's traffic for as long as ``activity`` runs, and at least one whole round trip."""
    victim = Victim()
    task = asyncio.ensure_future(activity)

    async def round_trips(client: httpx.AsyncClient) -> None:
        while not task.done() or victim.round_trips == 0:
            failed, done = len(victim.failures), victim.round_trips
            await _round_trip(victim, client)
            if victim.round_trips > done and not task.done():
                victim.during_attack += 1
            if len(victim.failures) > failed:
                if task.done():
                    return
                await asyncio.sleep(1)  # an API that is down refuses at once: no busy loop

    async def reads(client: httpx.AsyncClient) -> None:
        while not task.done():
            await victim.call("get", client.get(f"{JOBS}/{job_id}"), 200)
            await asyncio.sleep(0.2)

    async def readiness(client: httpx.AsyncClient) -> None:
        while not task.done():
            await victim.call("readyz", client.get("/readyz"), 200)
            await asyncio.sleep(0.5)

    async with api_client(base_url, key=key, timeout=CLIENT_TIMEOUT_S) as client:
        try:
            await asyncio.gather(round_trips(client), reads(client), readiness(client))
        finally:
            if not task.done():  # the victim's side failed unexpectedly: stop the attack too
                task.cancel()
    await task  # an attack that raised is the harness's error, not the API's
    return victim
