"""Where the repository and its downloaded tools are: the harness runs from the work tree (an
editable install of the dev group), never from an image."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
TOOLS = ROOT / ".tools" / "bin"
