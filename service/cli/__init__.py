"""The command-line wing: ``labelqa`` and its command groups, one module per group (``app`` assembles them)."""

from service.cli.app import app, main

__all__ = ["app", "main"]
