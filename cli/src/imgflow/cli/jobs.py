"""``imgflow jobs list|get|watch|cancel|urls``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from imgflow.cli import output
from imgflow.cli.client import JOBS, Api, ApiError, segment
from imgflow.cli.common import OutputOption, call, config_of, show
from imgflow.cli.config import Output
from imgflow.cli.follow import follow

app = typer.Typer(
    help="Jobs: list a user's, show one, follow one live, cancel one, sign its outputs' URLs.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

LIST_COLUMNS = [("Job", "jobId"), ("Status", "status"), ("Created", "createdAt"), ("Output", "output")]


def _listing_row(job: dict[str, Any]) -> dict[str, Any]:
    """A listed job's line: what it made when completed, its error when failed."""
    made = job.get("result")
    if made:
        return {**job, "output": f"{made['width']}x{made['height']} {made['format']}, {made['bytes']} bytes"}
    return {**job, "output": job.get("error", "")}


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Option(help="Whose jobs (the userId); default: the configured user")
    ] = None,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Jobs per page")] = 20,
    cursor: Annotated[str | None, typer.Option(help="nextCursor of the previous page")] = None,
    output_: OutputOption = None,
) -> None:
    """A user's jobs, newest first."""
    config = config_of(ctx, output_)
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if cursor:
        params["cursor"] = cursor
    who = user or config.user
    listing = call(
        config, lambda api: api.json("GET", f"/api/image-processing/users/{segment(who)}/jobs", params=params)
    )

    def render(body: dict[str, Any]) -> None:
        output.table([_listing_row(j) for j in body["jobs"]], LIST_COLUMNS, title=f"Jobs of {who}")
        if body.get("nextCursor"):
            output.err.print(f"more: --cursor {body['nextCursor']}", markup=False, soft_wrap=True)

    show(config, listing, render)


@app.command()
def get(ctx: typer.Context, job_id: str, output_: OutputOption = None) -> None:
    """One job, as the API shows it."""
    config = config_of(ctx, output_)
    job = call(config, lambda api: api.json("GET", f"{JOBS}/{segment(job_id)}"))
    show(config, job, lambda body: output.record(body, title=f"Job {job_id}"))


@app.command()
def watch(ctx: typer.Context, job_id: str, output_: OutputOption = None) -> None:
    """Follow a job until it is finished; one line (or JSON object) per change.

    Live over Server-Sent Events, else by polling. Exits 1 unless the job completed.
    """
    config = config_of(ctx, output_)

    def changed(job: dict[str, Any]) -> None:
        if config.output is Output.json:
            output.out.print(json.dumps(job), markup=False, soft_wrap=True)
        else:
            detail = job.get("error") or (job.get("result") or {}).get("thumbnailUrl", "")
            output.out.print(f"{job.get('updatedAt', '')}  {job['status']:10} {detail}", markup=False)

    async def work(api: Api) -> dict[str, Any]:
        return await follow(api, job_id, changed, note=output.note)

    if call(config, work)["status"] != "completed":
        raise typer.Exit(1)


@app.command()
def cancel(ctx: typer.Context, job_id: str, output_: OutputOption = None) -> None:
    """Cancel a job (DELETE .../jobs/{id}): a pending one at once, one being made at its worker's
    next step (said 'cancellation requested'; follow it with jobs watch)."""
    config = config_of(ctx, output_)

    async def work(api: Api) -> dict[str, Any]:
        try:
            response = await api.request("DELETE", f"{JOBS}/{segment(job_id)}")
        except ApiError as exc:
            if exc.status == 405:
                raise ApiError(
                    405, "Not supported", f"this server ({api.base_url}) does not support cancellation"
                ) from None
            raise
        body: dict[str, Any] = (
            response.json() if response.content else {"jobId": job_id, "status": "cancelled"}
        )
        return body

    job = call(config, work)

    def said(body: dict[str, Any]) -> str:
        status = body.get("status", "cancelled")
        return "cancelled" if status == "cancelled" else f"{status}, cancellation requested"

    show(config, job, lambda body: output.out.print(f"job {job_id}: {said(body)}"))


@app.command()
def urls(
    ctx: typer.Context,
    job_id: str,
    ttl: Annotated[
        int | None,
        typer.Option(min=1, max=604800, help="Seconds the URLs are valid; default: the tenant's (1 day)"),
    ] = None,
    output_: OutputOption = None,
) -> None:
    """Signed URLs of a completed job's outputs (GET .../jobs/{id}/urls): they need no key, so a
    page can show them with <img src>, until they expire."""
    config = config_of(ctx, output_)
    params = {"ttl": ttl} if ttl is not None else None
    signed = call(config, lambda api: api.json("GET", f"{JOBS}/{segment(job_id)}/urls", params=params))

    def render(body: dict[str, Any]) -> None:
        named = body.get("variants") or {"thumbnail": body["signedUrl"]}  # the thumbnail is the first variant
        for name, url in named.items():
            output.out.print(f"{name} {url}", markup=False, soft_wrap=True)
        output.err.print(f"valid until {body['expiresAt']}", markup=False)

    show(config, signed, render)
