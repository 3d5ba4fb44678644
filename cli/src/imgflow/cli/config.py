"""Where the client finds its API and key: flags first, then the environment (``IMGFLOW_API_URL``,
``IMGFLOW_API_KEY``, ``IMGFLOW_USER``), then a TOML file, then the defaults.

The file is ``$IMGFLOW_CONFIG``, or ``imgflow/config.toml`` under ``$XDG_CONFIG_HOME`` (``~/.config``)::

    api_url = "https://imgflow.example.com"
    api_key = "imgf_..."
    user = "alice"
"""

from __future__ import annotations

import getpass
import os
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DEFAULT_API_URL = "http://127.0.0.1:8000"
FILE_KEYS = ("api_url", "api_key", "user")


class Output(StrEnum):
    text = "text"
    json = "json"


class ConfigError(Exception):
    """The configuration file cannot be read."""


@dataclass(frozen=True)
class Config:
    api_url: str
    api_key: str | None
    user: str
    output: Output


def default_path() -> Path:
    explicit = os.environ.get("IMGFLOW_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "imgflow" / "config.toml"


def read_file(path: Path) -> dict[str, str]:
    """The file's settings; none when it does not exist."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from exc
    unknown = sorted(set(raw) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(FILE_KEYS)}")
    return {name: str(value) for name, value in raw.items()}


def resolve(
    *, api_url: str | None, api_key: str | None, user: str | None, output: Output, path: Path | None
) -> Config:
    """Flags and environment (``typer`` reads both into the arguments) over the file's values."""
    stored = read_file(path or default_path())
    return Config(
        api_url=(api_url or stored.get("api_url") or DEFAULT_API_URL).rstrip("/"),
        api_key=api_key or stored.get("api_key") or None,
        user=user or stored.get("user") or _login(),
        output=output,
    )


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container's user without a name
        return "imgflow-cli"
