"""``imgflow``: the root command, its global options, ``submit`` and ``presets``; the command
groups live in their own modules (jobs, keys, webhooks, watermarks)."""

from __future__ import annotations

import json
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer

from imgflow.cli import jobs, keys, output, watermarks, webhooks
from imgflow.cli.client import Api
from imgflow.cli.common import OutputOption, call, config_of, show
from imgflow.cli.config import ConfigError, Output, resolve
from imgflow.cli.submit import InputError, Plan, Reporter, Run, collect, succeeded

app = typer.Typer(
    help="imgflow's command-line client: send images, follow their jobs, fetch the outputs.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
app.add_typer(jobs.app, name="jobs")
app.add_typer(keys.app, name="keys")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(watermarks.app, name="watermarks")


def _version(asked: bool) -> None:
    if asked:
        try:
            output.out.print(f"imgflow-cli {version('imgflow-cli')}")
        except PackageNotFoundError:
            output.out.print("imgflow-cli (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option(envvar="IMGFLOW_API_URL", help="The API's base URL [default: http://127.0.0.1:8000]"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="IMGFLOW_API_KEY", help="An API key (imgf_...)", show_envvar=True)
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(envvar="IMGFLOW_USER", help="The userId of jobs sent and listed [default: your login]"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="IMGFLOW_CONFIG",
            help="TOML file with api_url, api_key, user [default: ~/.config/imgflow/config.toml]",
        ),
    ] = None,
    output_: Annotated[Output, typer.Option("--output", "-o", help="text (tables) or json (for scripts)")] = (
        Output.text
    ),
    _: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit")
    ] = False,
) -> None:
    """Flags win over the environment, which wins over the configuration file."""
    try:
        ctx.obj = resolve(api_url=api_url, api_key=api_key, user=user, output=output_, path=config)
    except ConfigError as exc:
        output.error(str(exc))
        raise typer.Exit(2) from None


SUBMIT_COLUMNS = [("File", "file"), ("Job", "jobId"), ("Status", "status"), ("Outputs / error", "shown")]


@app.command()
def submit(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Image files, and folders whose images are all sent")],
    width: Annotated[int | None, typer.Option(help="Output width (default 100)")] = None,
    height: Annotated[int | None, typer.Option(help="Output height (default 100)")] = None,
    fit: Annotated[str | None, typer.Option(help="cover, contain, fill, inside or outside")] = None,
    format_: Annotated[
        str | None, typer.Option("--format", help="jpeg, png, webp, avif, gif or auto")
    ] = None,
    gravity: Annotated[
        str | None, typer.Option(help="What cover keeps: centre, north, ..., attention")
    ] = None,
    quality: Annotated[int | None, typer.Option(help="Encoder quality, 1-100")] = None,
    enlarge: Annotated[
        bool, typer.Option("--enlarge", help="Allow outputs larger than the source (bounded by the service)")
    ] = False,
    watermark: Annotated[str | None, typer.Option(help="Id of one of the tenant's watermarks")] = None,
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse/--no-reuse",
            help="Let an image the tenant sent before with the same options complete at once from "
            "that job's outputs (--no-reuse: decode it again)",
        ),
    ] = True,
    preset: Annotated[str | None, typer.Option(help="A named set of variants (imgflow presets)")] = None,
    variants: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="JSON file: a list of named outputs, each with its options"
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="Any other form field, NAME=VALUE (blur=2, grayscale=true, ...)"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow each job until it is finished")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            file_okay=False, help="Download every output here (implies --wait; keeps a state file to resume)"
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Uploads (and downloads) at once")] = 4,
    output_: OutputOption = None,
) -> None:
    """Send images; with --wait follow their jobs, with --out download the outputs.

    Exits 1 if any input was refused or its job did not complete. A rerun with the same --out
    sends nothing twice: it follows what was accepted and downloads what is missing.
    """
    config = config_of(ctx, output_)
    fields = {"userId": config.user}
    asked: dict[str, Any] = {
        "width": width,
        "height": height,
        "fit": fit,
        "format": format_,
        "gravity": gravity,
        "quality": quality,
        "enlarge": "true" if enlarge else None,
        "watermark": watermark,
        "preset": preset,
        "reuse": None if reuse else "false",
    }
    fields.update({name: str(value) for name, value in asked.items() if value is not None})
    try:
        if variants is not None:
            fields["variants"] = json.dumps(json.loads(variants.read_text()))
        for pair in option or []:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise InputError(f"--option {pair!r}: write NAME=VALUE")
            fields[name] = value
        items = collect(paths, out)
    except (InputError, ValueError, OSError) as exc:
        output.error(str(exc))
        raise typer.Exit(2) from None
    if not items:
        output.error("no image files found in " + ", ".join(map(str, paths)))
        raise typer.Exit(2)
    plan = Plan(fields=fields, wait=wait or out is not None, out=out, concurrency=concurrency)

    async def work(api: Api) -> None:
        with Reporter(len(items), plan.wait) as reporter:
            await Run(api, plan, items).run(reporter)

    call(config, work)
    views = [item.view() for item in items]

    def render(rows: list[dict[str, Any]]) -> None:
        shown = [{**row, "shown": row["error"] or ", ".join(row["outputs"])} for row in rows]
        output.table(shown, SUBMIT_COLUMNS)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        output.out.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))

    show(config, {"jobs": views}, lambda body: render(body["jobs"]))
    if not succeeded(items, plan.wait):
        raise typer.Exit(1)


@app.command()
def presets(ctx: typer.Context, output_: OutputOption = None) -> None:
    """The service's presets: named sets of variants for submit --preset."""
    config = config_of(ctx, output_)
    found = call(config, lambda api: api.json("GET", "/api/presets"))
    rows = [{"preset": name, **variant} for name, listed in found.items() for variant in listed]
    columns = [
        ("Preset", "preset"),
        ("Variant", "name"),
        ("Width", "width"),
        ("Height", "height"),
        ("Fit", "fit"),
        ("Format", "format"),
    ]
    show(config, found, lambda _: output.table(rows, columns))


def run() -> None:
    """The console script. Interrupted, it stops quietly: what ``submit`` finished is in its
    state file, and a rerun goes on from there."""
    try:
        app()
    except KeyboardInterrupt:
        output.error("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run()
