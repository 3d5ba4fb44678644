"""``imgflow keys create|list|revoke``: API keys (needs an admin key)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from imgflow.cli import output
from imgflow.cli.common import OutputOption, call, config_of, listing, removal, show

app = typer.Typer(
    help="API keys: create (shown once), list, revoke. Needs an admin key.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
PATH = "/api/admin/keys"
COLUMNS = [
    ("Id", "id"),
    ("Tenant", "tenant"),
    ("Name", "name"),
    ("Scopes", "scopes"),
    ("Max job cost", "limits.maxJobCost"),
    ("Created", "createdAt"),
]


@app.command()
def create(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="Whose jobs the key creates and sees")],
    name: Annotated[str, typer.Option(help="What the key is for, for people")],
    scope: Annotated[
        list[str] | None, typer.Option(help="jobs:write, jobs:read or admin; repeat for several")
    ] = None,
    create_per_s: Annotated[float | None, typer.Option(help="Job creates per second")] = None,
    create_burst: Annotated[int | None, typer.Option(help="Job creates at once above the rate")] = None,
    read_per_s: Annotated[float | None, typer.Option(help="Reads per second")] = None,
    read_burst: Annotated[int | None, typer.Option(help="Reads at once above the rate")] = None,
    max_job_cost: Annotated[
        int | None, typer.Option(help="Largest estimated cost of one job, ms of worker CPU (≤ the service's)")
    ] = None,
    output_: OutputOption = None,
) -> None:
    """Create a key (default scopes jobs:write and jobs:read); the key is shown this once."""
    config = config_of(ctx, output_)
    limits = {
        "createPerS": create_per_s,
        "createBurst": create_burst,
        "readPerS": read_per_s,
        "readBurst": read_burst,
        "maxJobCost": max_job_cost,
    }
    body = {
        "tenant": tenant,
        "name": name,
        "scopes": scope or ["jobs:write", "jobs:read"],
        "limits": {k: v for k, v in limits.items() if v is not None},
    }
    created = call(config, lambda api: api.json("POST", PATH, json=body))

    def render(key: dict[str, Any]) -> None:
        output.table([key], COLUMNS)
        output.out.print(f"key (shown this once): {key['key']}", markup=False, soft_wrap=True)

    show(config, created, render)


@app.command("list")
def list_keys(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's")] = None,
    output_: OutputOption = None,
) -> None:
    """The keys (never the keys themselves)."""
    listing(ctx, output_, PATH, "keys", COLUMNS, params={"tenant": tenant} if tenant else None)


@app.command()
def revoke(ctx: typer.Context, key_id: str, output_: OutputOption = None) -> None:
    """Revoke a key by its id: it stops working on every API replica within seconds."""
    removal(ctx, output_, PATH, key_id, "key", verb="revoked")
