"""Hostile files (imgflow.harness.hostile) cost the probe a bounded amount of CPU and memory, measured in a
child process against the probe of a normal image in the same run, and through the real API and
worker they are answered (accepted or refused) without taking a process down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pyvips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgflow.core import heif
from imgflow.core.pages import TooManyPages, check_pages
from imgflow.core.probe import MAX_PAGES, ImageTooLarge, probe_buffer
from imgflow.core.settings import Settings
from imgflow.core.watermarks import MAX_BYTES as WATERMARK_MAX_BYTES
from imgflow.harness import hostile, images
from imgflow.harness.client import api_client, submit, wait_finished
from imgflow.harness.servers import Server
from tests.conftest import Processes
from tests.sources import image_source
from tests.test_failures import submit_url_job

ROOT = Path(__file__).parent.parent
# Probe one file (argv[1]) in a fresh process, from its path as the API does and from its bytes as
# the worker does (or, with argv[3] "walk", only walk its HEIF boxes), and print what that cost.
# The process first probes a normal image (loading libvips' modules), then caps its address space
# at what it holds plus argv[2] MB, so a probe that tries to hold more fails instead of taking the
# machine with it.
PROBE = r"""
import json, resource, sys
from pathlib import Path
from imgflow.core import heif
from imgflow.core.probe import ImageTooLarge, UnsupportedImage, probe_buffer, probe_file
from imgflow.harness import images

probe_buffer(images.jpeg(64, 64), max_pixels=50_000_000, max_side=16_384)
path = Path(sys.argv[1])
data = path.read_bytes()
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
headroom = int(sys.argv[2]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
probes = [lambda: probe_file(path, max_pixels=50_000_000, max_side=16_384),
          lambda: probe_buffer(data, max_pixels=50_000_000, max_side=16_384)]
if sys.argv[3] == "walk":
    probes = [lambda: heif.primary_codecs(data)]

def status(field):  # kB
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])

answers = []
open("/proc/self/clear_refs", "w").write("5")  # the peak resident memory starts again from now
resident = status("VmRSS")
before = resource.getrusage(resource.RUSAGE_SELF)
for probe in probes:
    try:
        answers.append(repr(probe()))
    except (UnsupportedImage, ImageTooLarge, heif.HeifStructureError) as exc:
        answers.append(f"{type(exc).__name__}: {exc}")
after = resource.getrusage(resource.RUSAGE_SELF)
cpu_ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000 / len(probes)
rss_mb = (status("VmHWM") - resident) / 1024
print(json.dumps({"cpu_ms": cpu_ms, "rss_mb": rss_mb, "answers": answers}))
"""
WATERMARKS = "/api/watermarks"
ANSWERS = (
    "ImageInfo(",
    "UnsupportedImage: ",
    "UndecodableImage: ",
    "ImageTooLarge: ",
    "{'",
    "HeifStructureError: ",
)
# a refusal by libheif, libtiff, ... quoted in the answer would do too: nothing here is Python's own
PYTHON_WORDS = ("Traceback", "Error:", "object has no attribute")


@dataclass(frozen=True)
class Cost:
    cpu_ms: float  # per probe (the mean of the two)
    rss_mb: float  # the peak resident memory while probing, over what the process held before
    answers: list[str]


def probe_cost(
    data: bytes, tmp: Path, *, headroom_mb: int = 512, timeout: float = 20.0, walk: bool = False
) -> Cost:
    """What probing ``data`` (or with ``walk``, reading its HEIF boxes) cost a fresh child process."""
    path = tmp / f"probe-{uuid.uuid4().hex}"
    path.write_bytes(data)
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(path), str(headroom_mb), "walk" if walk else "probe"],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    finally:
        path.unlink()
    assert done.returncode == 0, f"the probe died ({done.returncode}): {done.stderr[-2000:]}"
    figures = json.loads(done.stdout.splitlines()[-1])
    return Cost(figures["cpu_ms"], figures["rss_mb"], figures["answers"])


@pytest.fixture(scope="module")
def normal(tmp_path_factory: pytest.TempPathFactory) -> Cost:
    """The probe of a normal 12 MP JPEG photo, in the same kind of process."""
    return probe_cost(images.jpeg(4000, 3000), tmp_path_factory.mktemp("normal"))


def check_bounded(cost: Cost, normal: Cost, what: str) -> None:
    for answer in cost.answers:
        assert answer.startswith(ANSWERS), (what, answer)
        detail = answer.partition(": ")[2]
        assert not any(word in detail for word in PYTHON_WORDS), (what, answer)
    assert cost.cpu_ms <= max(50.0, 20 * normal.cpu_ms), (what, cost, normal)
    assert cost.rss_mb <= normal.rss_mb + 32, (what, cost, normal)


def test_issue_19_a_2_7_kb_avif_grid_chain_is_answered_within_512_mb(tmp_path: Path) -> None:
    """Four grids, each made of 256 references to the next: a walk that keeps repeated items visits
    256**4 of them. Before the fix the probe filled memory at ~220 MB/s until it was killed."""
    data = hostile.grid_chain(levels=4, references=256)
    assert len(data) < 2800
    cost = probe_cost(data, tmp_path, headroom_mb=512, timeout=20)
    assert all(answer.startswith(("ImageInfo(format='avif'", "UndecodableImage")) for answer in cost.answers)


@pytest.mark.parametrize("name", list(hostile.BUILDERS))
def test_a_hostile_file_costs_the_probe_little(name: str, tmp_path: Path, normal: Cost) -> None:
    check_bounded(probe_cost(hostile.BUILDERS[name](), tmp_path), normal, name)


@pytest.mark.parametrize("name", list(hostile.HEIF))
def test_imgflows_own_heif_walk_is_bounded_where_libheif_would_refuse_first(
    name: str, tmp_path: Path, normal: Cost
) -> None:
    """libheif's own limits refuse most of these before imgflow's walk runs; the walk must not
    depend on that (another libheif may be looser)."""
    check_bounded(probe_cost(hostile.HEIF[name](), tmp_path, walk=True), normal, name)


def heif_files() -> st.SearchStrategy[bytes]:
    """Grid chains and graphs of grids (loops, repeats), with bytes overwritten."""
    grid_graphs = st.integers(1, 12).flatmap(
        lambda n: st.lists(st.lists(st.integers(1, n + 1), min_size=1, max_size=256), min_size=n, max_size=n)
    )
    files = st.builds(hostile.grid_chain, st.integers(1, 6), st.integers(1, 256)) | grid_graphs.map(
        hostile.grid_graph
    )
    return st.builds(overwritten, files, overwrites())


def hostile_files() -> st.SearchStrategy[bytes]:
    """HEIF files as above, page chains (loops), many frames, chunks and segments, any of them with
    bytes overwritten."""
    tiff_loops = st.integers(1, 3 * MAX_PAGES).flatmap(
        lambda n: st.tuples(st.just(n), st.none() | st.integers(0, n - 1))
    )
    files = st.one_of(
        tiff_loops.map(
            lambda t: hostile.tiff_chain(
                t[0], loop_to=None if t[1] is None else 8 + t[1] * hostile.TIFF_PAGE_SIZE
            )
        ),
        st.integers(1, 3 * MAX_PAGES).map(hostile.webp_frames),
        st.integers(1, 100_000).map(lambda n: hostile.gif(hostile.gif_frame() * n)),
        st.integers(1, 100_000).map(lambda n: hostile.png(hostile.png_chunk(b"prVt", b"") * n)),
        st.integers(1, 100_000).map(lambda n: hostile.jpeg(hostile.jpeg_segment(0xE1, b"Exif\0\0") * n)),
    )
    return heif_files() | st.builds(overwritten, files, overwrites())


def overwrites() -> st.SearchStrategy[list[tuple[int, bytes]]]:
    """A few short runs of bytes to write over a file, mostly in its first 4 KB (the headers)."""
    return st.lists(st.tuples(st.integers(0, 4000), st.binary(min_size=1, max_size=8)), max_size=6)


def overwritten(data: bytes, overwrites: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(data)
    for at, new in overwrites:
        out[at % len(out) : at % len(out) + len(new)] = new
    return bytes(out[: len(data)])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hostile_files())
def test_any_hostile_file_is_answered_at_a_bounded_cost(data: bytes, tmp_path: Path, normal: Cost) -> None:
    check_bounded(probe_cost(data, tmp_path), normal, f"{len(data)} bytes starting {data[:16]!r}")


@settings(max_examples=300, deadline=None)
@given(data=heif_files())
def test_the_heif_walk_answers_any_grid_graph_with_codecs_or_a_structure_error(data: bytes) -> None:
    with contextlib.suppress(heif.HeifStructureError):
        codecs = heif.primary_codecs(data)
        assert codecs and not codecs & heif.DERIVED


def multi_page(pages: int) -> pyvips.Image:
    frames = [pyvips.Image.black(8, 8).new_from_image([40 * i % 256]).cast("uchar") for i in range(pages)]
    strip = pyvips.Image.arrayjoin(frames, across=1).copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", 8)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [40] * pages)
    return strip


@pytest.mark.parametrize(
    "save",
    [
        lambda image: image.tiffsave_buffer(),
        lambda image: image.tiffsave_buffer(bigtiff=True),
        lambda image: image.webpsave_buffer(lossless=True),
    ],
    ids=["tiff", "bigtiff", "webp"],
)
def test_pages_are_counted_as_libvips_counts_them(save: Callable[[pyvips.Image], bytes]) -> None:
    data = bytes(save(multi_page(5)))
    assert probe_buffer(data, max_pixels=10**6, max_side=1000).pages == 5
    check_pages(data, 5)
    with pytest.raises(TooManyPages):
        check_pages(data, 4)


@pytest.mark.parametrize("make", [hostile.tiff_chain, hostile.webp_frames], ids=["tiff", "webp"])
def test_a_file_of_more_than_max_pages_is_refused_before_libvips_counts_them(
    make: Callable[[int], bytes],
) -> None:
    assert probe_buffer(make(MAX_PAGES), max_pixels=10**6, max_side=1000).pages == MAX_PAGES
    with pytest.raises(ImageTooLarge, match=f"more than {MAX_PAGES:,}"):
        probe_buffer(make(MAX_PAGES + 1), max_pixels=10**6, max_side=1000)


def peak_rss_mb(server: Server) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    status = Path(f"/proc/{server.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def check_refusal(reply: httpx.Response, what: str) -> None:
    assert reply.headers["content-type"] == "application/problem+json", (what, reply.text)
    detail = str(reply.json()["detail"])
    assert detail and not any(word in detail for word in PYTHON_WORDS), (what, detail)


async def test_hostile_uploads_are_answered_and_the_api_stays_alive_and_small(
    processes: Processes, fresh_settings: Settings
) -> None:
    api, base = processes.start_api(fresh_settings)
    worker = processes.start_worker(fresh_settings)
    async with api_client(base, timeout=60) as client:
        # a normal upload and watermark first, so that what libvips loads once is in the baseline
        assert (await submit(client, images.jpeg())).status_code == 202
        mark = await client.post(WATERMARKS, files={"file": ("w.png", images.png_alpha(64, 64), "image/png")})
        assert mark.status_code == 201, mark.text
        before = peak_rss_mb(api)
        accepted = []
        for file in hostile.all_files():
            reply = await submit(
                client, file.data, filename=file.name, content_type="application/octet-stream"
            )
            assert reply.status_code in (202, 415, 422), (file.name, reply.text)
            if reply.status_code == 202:
                accepted.append((file.name, reply.json()["jobId"]))
            else:
                check_refusal(reply, file.name)
            if len(file.data) <= WATERMARK_MAX_BYTES:
                reply = await client.post(WATERMARKS, files={"file": (file.name, file.data, "image/png")})
                assert reply.status_code in (201, 415, 422), (file.name, reply.text)
                if reply.status_code != 201:
                    check_refusal(reply, file.name)
            assert api.alive, f"the API died on {file.name}:\n{api.tail()}"
        # the upload's own buffers (a multipart part is spooled to disk past 1 MB) and no more
        assert peak_rss_mb(api) - before < 64, (before, peak_rss_mb(api))
        for name, job_id in accepted:  # the worker makes them or fails them, and lives on
            job = await wait_finished(client, job_id)
            assert job["status"] == "completed" or job["error"], (name, job)
        assert worker.alive, worker.tail()


async def test_hostile_url_sources_fail_their_jobs_and_the_worker_stays_alive(
    processes: Processes, fresh_settings: Settings
) -> None:
    settings = fresh_settings.model_copy(update={"allow_private_urls": True})
    _, base = processes.start_api(settings)
    worker = processes.start_worker(settings)
    async with api_client(base, timeout=60) as client:
        with image_source(images.jpeg()) as source:  # a job made: what libvips loads once is in the baseline
            job = await wait_finished(client, await submit_url_job(settings, source.url))
        assert job["status"] == "completed", job
        before = peak_rss_mb(worker)
        files = list(hostile.all_files())
        with contextlib.ExitStack() as stack:
            sources = [stack.enter_context(image_source(file.data)) for file in files]
            ids = await asyncio.gather(*(submit_url_job(settings, source.url) for source in sources))
            jobs = [await wait_finished(client, job_id) for job_id in ids]
        for file, job in zip(files, jobs, strict=True):
            assert job["status"] == "completed" or job["error"], (file.name, job)
            if job["status"] == "failed":
                assert not any(word in job["error"] for word in PYTHON_WORDS[:1]), (file.name, job)
        assert worker.alive, worker.tail()
        assert peak_rss_mb(worker) - before < 64, (before, peak_rss_mb(worker))
