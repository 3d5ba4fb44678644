"""The peers as servers on loopback, in their production settings, and the one request each makes
for an output of the comparison (``Output``).

- imaginary: ``-cpus 2`` (this machine's cores) and ``-concurrency``, its throttle. The README's
  production advice is ``-concurrency 20``, but the throttle is a rate (requests per second), and
  what it refuses beyond that rate it answers with an error: it is set above anything 2 cores make,
  so it refuses nothing and costs what it costs. The original goes in the request's body (POST),
  as an upload goes to imgflow; ``/crop`` makes a cover thumbnail, ``/fit`` one inside a box.
  imaginary 1.2.4 cannot write AVIF (its output types: JPEG, PNG, WebP, TIFF, GIF, SVG, PDF).
- thumbor: ``--processes 2``, one per core as its documentation advises, the PIL engine it ships
  with, unsafe (unsigned) URLs allowed since it listens on loopback only. It reads the original
  from the corpus directory (the file loader: thumbor fetches originals, it does not take
  uploads) and keeps no copy of originals or results (no storage, no result storage), so every
  request does the whole work. AVIF through Pillow's own AVIF support.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import corpus
from imgflow.harness.servers import Server, free_port, wait_for_port

CORES = 2
IMAGINARY_THROTTLE = 10_000  # requests/s: above anything two cores make (see the docstring)


@dataclass(frozen=True)
class Output:
    """One output asked of every server: a thumbnail of ``subset``'s images."""

    workload: str  # "a" (today's thumbnails) or "b" (imgproxy's published benchmark)
    subset: str
    format: str  # jpeg, png, webp, avif
    quality: int | None  # None: lossless (PNG)
    box: int
    fit: str  # "cover" (fill the box, centre crop) or "inside" (fit inside it, no crop)

    @property
    def title(self) -> str:
        q = f" q{self.quality}" if self.quality is not None else ""
        return f"{corpus.subset(self.subset).title} -> {self.box} {self.fit} {self.format.upper()}{q}"


MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
# a request: the original (a corpus image and its bytes) -> the thumbnail's bytes
Request = Callable[[corpus.Image, bytes], Awaitable[bytes]]


@dataclass
class Peer:
    name: str
    server: Server
    port: int
    # the request for an output, or None when this peer cannot make it
    request_for: Callable[[httpx.AsyncClient, Output], Request | None]


def _checked(response: httpx.Response, what: str) -> bytes:
    if response.status_code != 200 or not response.content:
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:200]}")
    return response.content


def _imaginary_request(client: httpx.AsyncClient, output: Output) -> Request | None:
    if output.format not in ("jpeg", "png", "webp"):
        return None
    params: dict[str, str | int] = {"width": output.box, "height": output.box, "type": output.format}
    params |= {"stripmeta": "true"} | ({"quality": output.quality} if output.quality is not None else {})
    path = "/crop" if output.fit == "cover" else "/fit"

    async def request(image: corpus.Image, data: bytes) -> bytes:
        mime = MIME[image.path.suffix.lstrip(".")]
        response = await client.post(path, params=params, content=data, headers={"Content-Type": mime})
        return _checked(response, f"imaginary {path} {image.path.name}")

    return request


def _thumbor_request(client: httpx.AsyncClient, output: Output) -> Request | None:
    fit = "fit-in/" if output.fit == "inside" else ""
    quality = f":quality({output.quality})" if output.quality is not None else ""
    prefix = f"/unsafe/{fit}{output.box}x{output.box}/filters:format({output.format}){quality}/"

    async def request(image: corpus.Image, data: bytes) -> bytes:
        response = await client.get(prefix + image.path.name)
        return _checked(response, f"thumbor {prefix}{image.path.name}")

    return request


def start_imaginary(binary: Path, logs: Path, cores: int = CORES) -> Peer:
    """imaginary on ``cores`` (its ``-cpus``: Go's threads; libvips' own threads are not counted)."""
    port = free_port()
    argv = [str(binary), "-a", "127.0.0.1", "-p", str(port), "-cpus", str(cores)]
    argv += ["-concurrency", str(IMAGINARY_THROTTLE), "-log-level", "error"]
    return _started(
        Peer("imaginary", Server("imaginary", argv, logs / "peers-imaginary.log"), port, _imaginary_request)
    )


THUMBOR_CONF = """\
LOADER = "thumbor.loaders.file_loader"
FILE_LOADER_ROOT_PATH = {root!r}
STORAGE = "thumbor.storages.no_storage"
RESULT_STORAGE = None
ALLOW_UNSAFE_URL = True
MAX_AGE = 0
"""


def start_thumbor(command: Path, workdir: Path, logs: Path) -> Peer:
    port = free_port()
    conf = workdir / "thumbor.conf"
    conf.write_text(THUMBOR_CONF.format(root=str(corpus.ROOT)))
    argv = [str(command), "-i", "127.0.0.1", "-p", str(port), "-c", str(conf)]
    argv += ["--processes", str(CORES), "-l", "error"]
    return _started(
        Peer("thumbor", Server("thumbor", argv, logs / "peers-thumbor.log"), port, _thumbor_request)
    )


def _started(peer: Peer) -> Peer:
    peer.server.start()
    try:
        wait_for_port(peer.port, process=peer.server.process)
    except (RuntimeError, TimeoutError) as exc:
        peer.server.kill()
        raise RuntimeError(f"{peer.name} did not start:\n{peer.server.tail()}") from exc
    return peer
