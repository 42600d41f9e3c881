"""CLI commands of this area: demo (and the service wiring behind serve)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the top-level app."""
