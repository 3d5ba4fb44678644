"""``imgflow webhooks create|list|delete``: the tenant's webhook endpoints."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from imgflow.cli import output
from imgflow.cli.common import OutputOption, call, config_of, listing, removal, show

app = typer.Typer(
    help="Webhook endpoints: every job of the tenant that finishes is POSTed to each.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
PATH = "/api/webhooks"
COLUMNS = [("Id", "id"), ("URL", "url"), ("Events", "events"), ("Created", "createdAt")]


@app.command()
def create(
    ctx: typer.Context,
    url: str,
    event: Annotated[
        list[str] | None,
        typer.Option(
            help="job.completed, job.failed, job.cancelled or endpoint.disabled; repeat for more "
            "(default: all)"
        ),
    ] = None,
    output_: OutputOption = None,
) -> None:
    """Register an endpoint; its signing secret is shown this once."""
    config = config_of(ctx, output_)
    body: dict[str, Any] = {"url": url}
    if event:
        body["events"] = event
    created = call(config, lambda api: api.json("POST", PATH, json=body))

    def render(endpoint: dict[str, Any]) -> None:
        output.table([endpoint], COLUMNS)
        output.out.print(
            f"signing secret (shown this once): {endpoint['secret']}", markup=False, soft_wrap=True
        )

    show(config, created, render)


@app.command("list")
def list_endpoints(ctx: typer.Context, output_: OutputOption = None) -> None:
    """The tenant's endpoints (never their secrets)."""
    listing(ctx, output_, PATH, "endpoints", COLUMNS)


@app.command()
def delete(ctx: typer.Context, endpoint_id: str, output_: OutputOption = None) -> None:
    """Stop sending events to an endpoint."""
    removal(ctx, output_, PATH, endpoint_id, "webhook endpoint")
