"""What every command shares: its configuration (set by the root command, ``--output`` by any)
and running one call against the API, with the API's problems printed as errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Annotated, Any, TypeVar

import typer

from imgflow.cli import output
from imgflow.cli.client import Api, ApiError, Unreachable, segment
from imgflow.cli.config import Config, Output

T = TypeVar("T")

OutputOption = Annotated[
    Output | None,
    typer.Option("--output", "-o", help="text (tables) or json (for scripts); default: the root's --output"),
]


def config_of(ctx: typer.Context, output_: Output | None) -> Config:
    config: Config = ctx.find_root().obj
    return config if output_ is None else replace(config, output=output_)


def call(config: Config, work: Callable[[Api], Awaitable[T]]) -> T:
    """``work`` done with a client of the configured API; an API problem or no answer ends the
    command with its message and exit code 1."""

    async def with_api() -> T:
        async with Api(config, on_wait=output.note) as api:
            return await work(api)

    try:
        return asyncio.run(with_api())
    except ApiError as exc:
        output.error(str(exc))
        if exc.status == 401 and not config.api_key:
            output.note("Set an API key: --api-key, IMGFLOW_API_KEY, or api_key in the configuration file.")
        raise typer.Exit(1) from None
    except Unreachable as exc:
        output.error(str(exc))
        raise typer.Exit(1) from None


def show(config: Config, value: Any, render: Callable[[Any], None]) -> None:
    """``value`` as JSON, or as ``render`` draws it for people."""
    if config.output is Output.json:
        output.emit_json(value)
    else:
        render(value)


def listing(
    ctx: typer.Context,
    output_: Output | None,
    path: str,
    field: str,
    columns: Sequence[tuple[str, str]],
    params: dict[str, str] | None = None,
) -> None:
    """``GET path``: the list under ``field`` as a table, or the whole answer as JSON."""
    config = config_of(ctx, output_)
    found = call(config, lambda api: api.json("GET", path, params=params or {}))
    show(config, found, lambda body: output.table(body[field], columns))


def removal(
    ctx: typer.Context, output_: Output | None, base: str, ident: str, what: str, verb: str = "deleted"
) -> None:
    """``DELETE base/ident``, said as ``{verb: ident}`` in JSON."""
    config = config_of(ctx, output_)
    call(config, lambda api: api.request("DELETE", f"{base}/{segment(ident)}"))
    show(config, {verb: ident}, lambda _: output.out.print(f"{verb} {what} {ident}", markup=False))
