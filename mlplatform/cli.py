"""The `mlp` command line. Exit codes: 0 done, 1 the operation failed, 2 bad usage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from mlplatform import model_registry
from mlplatform.settings import get_settings

app = typer.Typer(help="Operate the ML platform.", no_args_is_help=True)
models = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models, name="models")
serving = typer.Typer(
    help="Online serving on Ray Serve: start, stop, status.", no_args_is_help=True
)
app.add_typer(serving, name="serve")


@contextmanager
def failing_on(*errors: type[Exception]) -> Iterator[None]:
    """Turn an expected error into its message on stderr and exit code 1."""
    try:
        yield
    except errors as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error


@models.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every registered version with its stage, family, metrics and training snapshot."""
    rows = [
        {
            "version": v.version, "stage": v.stage, "family": v.family, "params": v.params,
            "accuracy": v.metrics.get("accuracy"), "macro_f1": v.metrics.get("macro_f1"),
            "snapshot": v.training_snapshot_id, "sha256": v.sha256[:12],
        }
        for v in model_registry.list_versions(get_settings())
    ]  # fmt: skip
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        scores = " ".join(
            f"{name}={r[key]:.4f}" if isinstance(r[key], float) else f"{name}=-"
            for name, key in (("acc", "accuracy"), ("f1", "macro_f1"))
        )
        typer.echo(
            f"v{r['version']:<4} {r['stage']:<10} {r['family']:<20} {scores} "
            f"snapshot={r['snapshot']}"
        )


@models.command("promote")
def promote(version: int = typer.Argument(..., help="The version to make champion.")) -> None:
    """Make a version the champion by hand (recorded with the reason 'promoted by hand')."""
    with failing_on(LookupError):
        model_registry.promote(get_settings(), version)
    typer.echo(f"champion is now version {version}")


@models.command("rollback")
def rollback(
    version: int | None = typer.Argument(None, help="Version to restore; default: the previous"),
) -> None:
    """Make an earlier version the champion again; running consumers switch to it."""
    with failing_on(LookupError):
        restored = model_registry.rollback(get_settings(), version)
    typer.echo(f"champion is now version {restored}")


@serving.command("start")
def serve_start(
    version: int | None = typer.Option(None, help="Pin a version; default: follow the champion."),
) -> None:
    """Deploy the model API on Ray Serve (or redeploy it) and print its address."""
    from mlplatform.serving import start_serving

    with failing_on(LookupError):
        address = start_serving(get_settings(), version)
    typer.echo(f"{address}  (POST /predict, POST /predict/bulk, GET /health, docs: {address}/docs)")


@serving.command("stop")
def serve_stop() -> None:
    """Remove the model application from Ray Serve."""
    from mlplatform.serving import stop_serving

    stop_serving(get_settings())
    typer.echo("stopped")


@serving.command("status")
def serve_status() -> None:
    """The model API's status (RUNNING, DEPLOYING, NOT_DEPLOYED, ...), address and version."""
    from mlplatform.serving import describe_serving

    state = describe_serving(get_settings())
    version = state.model_version
    typer.echo(f"{state.status} {state.address} model_version={version} ({state.detail})")
    raise typer.Exit(0 if state.status == "RUNNING" else 1)


if __name__ == "__main__":
    app()
