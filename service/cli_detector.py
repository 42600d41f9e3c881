"""CLI commands of this area: train, audit (data set), evaluate."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
