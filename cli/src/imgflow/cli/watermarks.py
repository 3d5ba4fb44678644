"""``imgflow watermarks upload|list|delete``: the tenant's watermarks (PNGs jobs name by id)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from imgflow.cli import output
from imgflow.cli.client import Api
from imgflow.cli.common import OutputOption, call, config_of, listing, removal, show

app = typer.Typer(
    help="Watermarks: PNGs a job composites onto its output (--watermark ID).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
PATH = "/api/watermarks"
COLUMNS = [("Id", "id"), ("Name", "name"), ("Width", "width"), ("Height", "height"), ("Bytes", "bytes")]


@app.command()
def upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A PNG (its alpha is kept)")],
    name: Annotated[str | None, typer.Option(help="A label for people")] = None,
    output_: OutputOption = None,
) -> None:
    """Upload a watermark; jobs then name its id."""
    config = config_of(ctx, output_)

    async def work(api: Api) -> Any:
        data = await asyncio.to_thread(file.read_bytes)
        fields = {"name": name} if name else {}
        return await api.json("POST", PATH, files={"file": (file.name, data, "image/png")}, data=fields)

    created = call(config, work)
    show(config, created, lambda mark: output.table([mark], COLUMNS))


@app.command("list")
def list_watermarks(ctx: typer.Context, output_: OutputOption = None) -> None:
    """The tenant's watermarks."""
    listing(ctx, output_, PATH, "watermarks", COLUMNS)


@app.command()
def delete(ctx: typer.Context, watermark_id: str, output_: OutputOption = None) -> None:
    """Delete a watermark (jobs accepted with it and not yet made then fail)."""
    removal(ctx, output_, PATH, watermark_id, "watermark")
