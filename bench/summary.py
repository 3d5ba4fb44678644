"""The summary of ``make bench``: ratios between figures measured in the same run.

python -m bench.summary [--engine bench/.results/engine.json] [--e2e bench/.results/e2e.json]
    [--peers bench/.results/peers.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.engine import IMGFLOW_2CORE, PEERS_1CORE, PEERS_2CORE, WORKER_CONFIG

RESULTS = Path(__file__).resolve().parent / ".results"
LABEL = 50
# the name printed after a ratio: which peer was the faster one
PEER_NAME = {
    "pillow_1": "Pillow",
    "sharp_1": "sharp",
    "pillow_2p": "Pillow",
    "sharp_2": "sharp",
    "vips_1t": "",
}
ENGINE_OF = {"pillow_1": "pillow", "sharp_1": "sharp"}
SETUP_NAME = {"imgflow_2t": "2 thr", "imgflow_2p": "2 proc", "imgflow_dc2": "worker"}


def _best(configs: dict[str, Any], keys: tuple[str, ...], field: str = "best") -> str:
    return max(keys, key=lambda k: float(configs[k][field]))


def rows(engine: dict[str, Any]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []

    def row(label: str, cell: Any) -> None:
        out.append((label, [cell(s["configs"], s["quality"]) for s in engine["subsets"].values()]))

    def ratio(mine: str, peers: tuple[str, ...]) -> Any:
        def cell(c: dict[str, Any], q: dict[str, Any]) -> str:
            peer = _best(c, peers)
            return f"{c[mine]['best'] / c[peer]['best']:.2f} {PEER_NAME[peer]}".rstrip()

        return cell

    def cpu_ratio(c: dict[str, Any], q: dict[str, Any]) -> str:
        peer = min(PEERS_1CORE, key=lambda k: float(c[k]["cpu_ms"]))
        return f"{c[peer]['cpu_ms'] / c['imgflow_1t']['cpu_ms']:.2f} {PEER_NAME[peer]}"

    def best_2core(c: dict[str, Any], q: dict[str, Any]) -> str:
        mine, peer = _best(c, IMGFLOW_2CORE), _best(c, PEERS_2CORE)
        return f"{c[mine]['best'] / c[peer]['best']:.2f} {SETUP_NAME[mine]}"

    def threads_vs_processes(c: dict[str, Any], q: dict[str, Any]) -> str:
        return f"{c['imgflow_2t']['best'] / c['imgflow_2p']['best']:.2f}"

    def scaling(c: dict[str, Any], q: dict[str, Any]) -> str:
        return f"{c[WORKER_CONFIG]['best'] / c['imgflow_1t']['best']:.2f}"

    def psnr(c: dict[str, Any], q: dict[str, Any]) -> str:
        peer = _best(c, PEERS_1CORE)
        return f"{q['imgflow']['psnr_jpeg'] - q[ENGINE_OF[peer]]['psnr_jpeg']:+.2f} {PEER_NAME[peer]}"

    def psnr_vs_before(c: dict[str, Any], q: dict[str, Any]) -> str:
        return f"{q['imgflow']['psnr_jpeg'] - q['imgflow_before']['psnr_jpeg']:+.2f}"

    def vs_floor(c: dict[str, Any], q: dict[str, Any]) -> str:
        return f"{c['imgflow_1t']['best'] / c['floor_shrunk']['best']:.2f}"

    row("imgflow / best peer, 1 core (images/s)", ratio("imgflow_1t", PEERS_1CORE))
    row("  the same from CPU time per image", cpu_ratio)
    row("imgflow / best peer, 2 cores, worker's setup", ratio(WORKER_CONFIG, PEERS_2CORE))
    row("  best imgflow 2-core setup / best peer", best_2core)
    if "before_1t" in engine["subsets"][next(iter(engine["subsets"]))]["configs"]:
        row("  before: libvips steps for every job, 1 core", ratio("before_1t", PEERS_1CORE))
        row("  before, 2 cores, worker's setup", ratio("before_dc2", PEERS_2CORE))
        row("  PSNR imgflow - imgflow before (JPEG, dB)", psnr_vs_before)
    row("imgflow / libvips thumbnail_buffer, 1 core", ratio("imgflow_1t", ("vips_1t",)))
    row("imgflow / libvips decode-only floor, 1 core", vs_floor)
    row("PSNR imgflow - fastest peer (JPEG, dB)", psnr)
    row("imgflow 2 threads / 2 processes", threads_vs_processes)
    row("imgflow worker's setup / 1 thread (scaling)", scaling)
    return out


def print_peers(peers: dict[str, Any]) -> None:
    """imgflow end to end against each peer (bench.peers.run): images/s, and in brackets the peer's
    CPU per image over imgflow's (all processes: > 1, imgflow cheaper)."""
    print(f"{'end to end / peer, images/s (CPU per image)':{LABEL}s}")
    for run in peers["runs"]:
        if run["server"] != "imgflow":
            continue
        out = run["output"]
        quality = f" q{out['quality']}" if out["quality"] is not None else ""
        label = f"  ({out['workload']}) {out['subset']} -> {out['box']} {out['fit']} {out['format']}{quality}"
        ratios = [f"{name} {r['rate']:.2f} ({r['cpu']:.2f})" for name, r in run["ratios"].items()]
        cells = "".join(f"{cell:>24s}" for cell in ratios)
        print(f"{label:{LABEL}s}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", type=Path, default=RESULTS / "engine.json")
    parser.add_argument("--e2e", type=Path, default=RESULTS / "e2e.json")
    parser.add_argument("--peers", type=Path, default=RESULTS / "peers.json")
    args = parser.parse_args()
    engine = json.loads(args.engine.read_text())
    titles = [s["title"] for s in engine["subsets"].values()]
    print(
        "\nSummary: ratios of figures measured in this run (images/s: best rounds; > 1 means imgflow is "
        "faster or closer)"
    )
    print(f"{'':{LABEL}s}" + "".join(f"{t:>17s}" for t in titles))
    for label, cells in rows(engine):
        print(f"{label:{LABEL}s}" + "".join(f"{c:>17s}" for c in cells))
    if args.e2e.exists():
        e2e = json.loads(args.e2e.read_text())
        if "engine_rate" in e2e:
            ratio = e2e["throughput"] / e2e["engine_rate"]
            print(f"{'end-to-end / engine, same corpus, 2 cores':{LABEL}s}{ratio:17.2f}")
            print(
                f"  ({e2e['throughput']:.1f} images/s over HTTP, {e2e['engine_rate']:.1f} in the engine "
                "alone in the worker's setup;\n   API, Redis and the MongoDB-wire server shared the 2 cores)"
            )
    if args.peers.exists():
        print_peers(json.loads(args.peers.read_text()))
    print(
        "(peer = Pillow or sharp, whichever is faster on that row; 2 threads vs 2 processes and the "
        "worker's setup are\n imgflow 2-core setups described in the engine table)"
    )


if __name__ == "__main__":
    main()
