"""Alembic environment of the service database: the models' metadata, a shared or new connection.

Run through :mod:`service.migrations.runner` (``labelqa db upgrade``), which hands in a connection
(``config.attributes["connection"]``); SQLite gets batch mode so later ALTERs work there too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from dicom_io.db import make_engine
from service.migrations.runner import target_metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata(),
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata(),
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    shared = config.attributes.get("connection")
    if shared is not None:
        _run(shared)
    else:
        engine = make_engine(str(config.get_main_option("sqlalchemy.url")))
        with engine.begin() as conn:
            _run(conn)
        engine.dispose()
