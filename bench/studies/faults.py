"""The fault run (``imgflow.harness.faults``) at full size, its figures printed: nothing accepted
may be lost or stuck, no healthy image failed. bench/studies/README.md has its results.

    uv run --frozen python -m bench.studies.faults [--jobs 1500] [--workers 3] [--kill-every 5] [--drain 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from imgflow.harness.faults import run


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--drain", type=float, default=300.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgflow-faults-") as tmp:
        result = asyncio.run(run(args.jobs, args.workers, args.kill_every, args.drain, Path(tmp)))
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
