"""How the `mlp` commands report an expected failure: its message on stderr, exit code 1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


@contextmanager
def failing_on(*errors: type[Exception]) -> Iterator[None]:
    """Turn an expected error into its message on stderr and exit code 1."""
    try:
        yield
    except errors as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
