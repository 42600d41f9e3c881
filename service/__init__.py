"""labelqa service: settings, CLI, job store, executor, HTTP API and wiring."""

__version__ = "0.1.0"
